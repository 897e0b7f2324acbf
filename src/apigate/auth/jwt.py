"""JWT verification with PyJWT, pinned to the one configured algorithm and key.

The token's own header is never trusted to choose how it is checked (RFC 8725 §2.1,
§3.1): PyJWT gets `algorithms=[auth.jwt_algorithm]`, so `alg: none` and a token signed
HS256 with the RSA public key as the HMAC secret (the HS/RS confusion) fail like any
other bad signature, and `kid` is only ever a dictionary key into the JWKS already
fetched (jwks.py), never a path or URL. `exp` is always required: PyJWT accepts a token
without one unless told otherwise. Every PyJWT error maps to one reason (reasons.py).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import jwt
from jwt.types import Options

from apigate.auth import reasons
from apigate.auth.reasons import AuthFailure
from apigate.config.jwt_keys import PublicKey, hmac_secret_is_short, is_hmac
from apigate.config.schema import AuthConfig

# Far above any real token (a few hundred bytes to a few KiB), far below what would make
# base64 and JSON decoding a cost an attacker could lean on.
MAX_TOKEN_BYTES = 8192

_TIME_CLAIMS = ("exp", "nbf", "iat")


def is_numeric_date(value: object) -> bool:
    """RFC 7519 §2 NumericDate: a JSON number of seconds (not a string, boolean or list),
    finite."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


_MISSING_CLAIM = {"iss": reasons.BAD_ISSUER, "aud": reasons.BAD_AUDIENCE}

Key = PublicKey | bytes


class JwtVerifier:
    """Verifies signature and registered claims of a compact JWT with a given key."""

    def __init__(self, auth: AuthConfig) -> None:
        required = ["exp", *(c for c in auth.required_claims if c != "exp")]
        options: Options = {"require": required, "verify_signature": True}
        self._jwt = jwt.PyJWT(options=options)
        self.algorithm = auth.jwt_algorithm
        self._algorithms = [auth.jwt_algorithm]
        self._issuer = auth.jwt_issuer
        self._audience = auth.jwt_audience
        self._leeway = auth.leeway_secs
        # PyJWT warns on every decode with a short HMAC secret; the filter reports it once.
        self._quiet = is_hmac(self.algorithm) and hmac_secret_is_short(auth.jwt_secret or "", self.algorithm)

    def verify(self, token: str, key: Key) -> dict[str, Any]:
        """The token's claims, or AuthFailure with the reason it was refused."""
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthFailure(reasons.MALFORMED)
        try:
            if self._quiet:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                    return self._decode(token, key)
            return self._decode(token, key)
        except jwt.InvalidSignatureError:  # before DecodeError, its base class
            raise AuthFailure(reasons.BAD_SIGNATURE) from None
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise AuthFailure(reasons.BAD_SIGNATURE) from None
        except jwt.ExpiredSignatureError:
            raise AuthFailure(reasons.EXPIRED) from None
        except jwt.ImmatureSignatureError:  # nbf or iat in the future, beyond the leeway
            raise AuthFailure(reasons.NOT_YET_VALID) from None
        except jwt.InvalidIssuerError:
            raise AuthFailure(reasons.BAD_ISSUER) from None
        except jwt.InvalidAudienceError:
            raise AuthFailure(reasons.BAD_AUDIENCE) from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthFailure(_MISSING_CLAIM.get(e.claim, reasons.MALFORMED)) from None
        except (jwt.PyJWTError, ValueError, TypeError, ArithmeticError):
            # ArithmeticError: PyJWT's int() of an `exp: 1e400` (JSON reads it as inf).
            raise AuthFailure(reasons.MALFORMED) from None

    def _decode(self, token: str, key: Key) -> dict[str, Any]:
        # The signature first (so an unsigned token costs no more than that), then the
        # time claims' types before PyJWT reads them: it takes int(x), so `"exp": "99999"`
        # or `"iat": true` passed as numbers.
        claims: dict[str, Any] = self._jwt.decode(
            token,
            key,
            algorithms=self._algorithms,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
        )
        for name in _TIME_CLAIMS:
            if name in claims and not is_numeric_date(claims[name]):
                raise AuthFailure(reasons.MALFORMED)
        return claims


def unverified_kid(token: str) -> str | None:
    """The `kid` of a token's header (only to pick a JWKS key); AuthFailure if unreadable."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthFailure(reasons.MALFORMED)
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthFailure(reasons.MALFORMED) from None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def mint(
    auth: AuthConfig, sub: str, ttl: float, extra: dict[str, Any] | None = None, now: float | None = None
) -> str:
    """An HS* token signed with the configured secret, issuer and audience (for testing)."""
    if not is_hmac(auth.jwt_algorithm) or not auth.jwt_secret:
        raise ValueError(f"minting needs an HS* jwt_algorithm and a jwt_secret, not {auth.jwt_algorithm}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if auth.jwt_issuer is not None:
        payload["iss"] = auth.jwt_issuer
    if auth.jwt_audience is not None:
        payload["aud"] = auth.jwt_audience
    payload.update(extra or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, auth.jwt_secret, algorithm=auth.jwt_algorithm)
