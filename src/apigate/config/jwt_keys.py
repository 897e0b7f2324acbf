"""Verification keys: loaded once, and checked against the one configured algorithm.

A key is only ever used with `auth.jwt_algorithm`, and it must be the kind of key that
algorithm needs: an RSA key of at least 2048 bits for RS*/PS* (NIST SP 800-131A, and
PyJWT's own floor), an EC key on the algorithm's curve for ES256/ES384 (RFC 7518 §3.4),
an Ed25519/Ed448 key for EdDSA (RFC 8037). Checking this when the configuration is
loaded turns a wrong file into a config error instead of a 401 for every request.

HMAC secrets should be at least as long as the hash output (RFC 7518 §3.2); a shorter one
still works but is reported at startup.
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

MIN_RSA_BITS = 2048
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def is_hmac(algorithm: str) -> bool:
    return algorithm.startswith("HS")


def check_key(key: object, algorithm: str) -> PublicKey:
    """`key` if it suits `algorithm`, else ValueError saying why."""
    if algorithm[:2] in ("RS", "PS"):
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{algorithm} needs an RSA public key, not {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"the RSA key has {key.key_size} bits; {algorithm} needs at least {MIN_RSA_BITS}"
            )
        return key
    if algorithm in _CURVES:
        curve = _CURVES[algorithm]
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise ValueError(f"{algorithm} needs an EC public key on {curve.name}, not {_kind(key)}")
        return key
    if algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise ValueError(f"EdDSA needs an Ed25519 or Ed448 public key, not {_kind(key)}")
        return key
    raise ValueError(f"{algorithm} does not use a public key")


def load_public_key(pem: bytes, algorithm: str) -> PublicKey:
    """A PEM public key (or the key of a PEM certificate), checked for `algorithm`."""
    key: object
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise ValueError("no PEM public key or certificate in the file") from None
    return check_key(key, algorithm)


def hmac_secret_problem(secret: str) -> str | None:
    """Why an HMAC secret is unsafe, or None. A PEM text as the secret is the classic
    HS/RS confusion (the public key used as an HMAC key) and is refused outright."""
    if "-----BEGIN" in secret:
        return "looks like a PEM key; a public key must never be an HMAC secret (use RS*/ES* instead)"
    return None


def hmac_secret_is_short(secret: str, algorithm: str) -> bool:
    return len(secret.encode()) < HMAC_MIN_BYTES.get(algorithm, 0)


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "an EdDSA key"
    return f"a {type(key).__name__}"
