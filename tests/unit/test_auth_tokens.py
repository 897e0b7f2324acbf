"""JWT verification, table-driven with hand-built tokens: one row per way a token fails.

Every reason of auth_failures_total has a row, and so has every known attack: alg=none,
the HS/RS confusion (HS256 signed with the RSA public key as the HMAC secret), a kid
naming a file, a token over 8 KiB, broken base64. Expiry and not-before are tested just
inside and just outside the leeway (5 s either side of 30 s, so no test is timing-bound).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from auth_helpers import (
    SECRET,
    Harness,
    claims,
    config,
    ec_key,
    ed_key,
    hand_token,
    hs,
    hs256,
    public_pem,
    rs256,
    rsa_key,
    write_pem,
)

from apigate.auth import reasons
from apigate.auth.jwt import MAX_TOKEN_BYTES, JwtVerifier, mint

LEEWAY = 30


def now() -> int:
    """Read when the case runs, not at import: a full suite runs minutes after collection."""
    return int(time.time())


def rs_config(tmp_path: Path, alg: str = "RS256", key: Any = None) -> Harness:
    path = write_pem(tmp_path, key or rsa_key())
    return Harness(config({"jwt_algorithm": alg, "jwt_secret": None, "jwt_public_key_path": path}))


HS_CASES: list[tuple[str, Any, str | None]] = [
    ("valid", lambda: hs256(), None),
    ("expired just inside the leeway", lambda: hs256(claims(exp=now() - LEEWAY + 5)), None),
    ("expired just outside the leeway", lambda: hs256(claims(exp=now() - LEEWAY - 5)), reasons.EXPIRED),
    ("expired long ago", lambda: hs256(claims(exp=now() - 86400)), reasons.EXPIRED),
    ("nbf just inside the leeway", lambda: hs256(claims(nbf=now() + LEEWAY - 5)), None),
    ("nbf just outside the leeway", lambda: hs256(claims(nbf=now() + LEEWAY + 5)), reasons.NOT_YET_VALID),
    ("iat in the future", lambda: hs256(claims(iat=now() + LEEWAY + 60)), reasons.NOT_YET_VALID),
    ("no exp", lambda: hs256(claims(exp=None)), reasons.MALFORMED),
    ("exp not a number", lambda: hs256(claims(exp="tomorrow")), reasons.MALFORMED),
    ("wrong issuer", lambda: hs256(claims(iss="https://evil.test")), reasons.BAD_ISSUER),
    ("no issuer", lambda: hs256(claims(iss=None)), reasons.BAD_ISSUER),
    ("wrong audience", lambda: hs256(claims(aud="other")), reasons.BAD_AUDIENCE),
    ("wrong audiences in a list", lambda: hs256(claims(aud=["other", "web"])), reasons.BAD_AUDIENCE),
    ("right audience in a list", lambda: hs256(claims(aud=["other", "api"])), None),
    ("no audience", lambda: hs256(claims(aud=None)), reasons.BAD_AUDIENCE),
    ("sub not a string", lambda: hs256(claims(sub=42)), reasons.MALFORMED),
    ("sub with a line break", lambda: hs256(claims(sub="alice\r\nx-admin: 1")), reasons.MALFORMED),
    ("wrong secret", lambda: hs256(secret="another-secret-0123456789abcdef0123"), reasons.BAD_SIGNATURE),
    ("payload changed after signing", lambda: _tamper(hs256()), reasons.BAD_SIGNATURE),
    ("alg=none, no signature", lambda: hand_token({"alg": "none"}, claims(), None), reasons.BAD_SIGNATURE),
    ("alg=None spelled oddly", lambda: hand_token({"alg": "nOnE"}, claims(), None), reasons.BAD_SIGNATURE),
    ("no alg at all", lambda: hand_token({"typ": "JWT"}, claims(), hs(SECRET)), reasons.BAD_SIGNATURE),
    (
        "HS512 token, HS256 configured (same secret)",
        lambda: hand_token({"alg": "HS512"}, claims(), hs(SECRET, hashlib.sha512)),
        reasons.BAD_SIGNATURE,
    ),
    ("kid naming a file is ignored", lambda: hs256(kid="../../../../etc/passwd"), None),
    ("two segments", lambda: ".".join(hs256().split(".")[:2]), reasons.MALFORMED),
    ("four segments", lambda: hs256() + ".x", reasons.MALFORMED),
    ("broken base64 in the header", lambda: "e" + hs256(), reasons.MALFORMED),
    ("broken base64 in the signature", lambda: hs256()[:-1] + "!", reasons.MALFORMED),
    ("header not JSON", lambda: "bm90IGpzb24." + hs256().split(".", 1)[1], reasons.MALFORMED),
    ("payload not an object", lambda: _resign(b'"just a string"'), reasons.MALFORMED),
    ("oversized token", lambda: hs256(claims(pad="x" * MAX_TOKEN_BYTES)), reasons.MALFORMED),
]


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    payload = hand_token({}, claims(sub="admin"), None).split(".")[1]
    return f"{header}.{payload}.{signature}"


def _resign(payload: bytes) -> str:
    from auth_helpers import b64

    signing_input = b64(b'{"alg":"HS256"}') + "." + b64(payload)
    return signing_input + "." + b64(hs(SECRET)(signing_input.encode()))


@pytest.fixture(scope="module")
def hs_harness() -> Harness:
    return Harness(config({"cache": {"enabled": False}}))


@pytest.mark.parametrize(("case", "make", "reason"), HS_CASES, ids=[c[0] for c in HS_CASES])
def test_hs256(hs_harness: Harness, case: str, make: Any, reason: str | None) -> None:
    result = hs_harness.request(make())
    assert result.reason == reason
    if reason is None:
        assert result.response is None
        assert result.ctx.user == "alice"
    else:
        assert result.response is not None and result.response.status == 401
        challenge = result.header(b"www-authenticate")
        assert challenge == b'Bearer error="invalid_token", error_description="%s"' % (
            reasons.DESCRIPTIONS[reason].encode()
        )


def test_an_oversized_token_is_refused_before_parsing(
    hs_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed")

    monkeypatch.setattr(jwt.PyJWT, "decode", parse)
    monkeypatch.setattr(jwt, "get_unverified_header", parse)
    big = "a" * (MAX_TOKEN_BYTES + 1)
    assert hs_harness.request(big).reason == reasons.MALFORMED
    with pytest.raises(Exception, match="malformed"):
        JwtVerifier(hs_harness.cfg.auth).verify(big, SECRET.encode())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- public-key algorithms
def test_hs_rs_confusion_is_refused(tmp_path: Path) -> None:
    """RS256 configured; the attacker signs HS256 with the (public!) key PEM as the secret."""
    h = rs_config(tmp_path)
    forged = hand_token({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), hs(public_pem(rsa_key())))
    result = h.request(forged)
    assert result.reason == reasons.BAD_SIGNATURE and result.ctx.user is None
    assert h.request(hand_token({"alg": "RS256"}, claims(), rs256(rsa_key()))).reason is None


def test_rs256_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    h = rs_config(tmp_path)
    assert (
        h.request(hand_token({"alg": "RS256"}, claims(), rs256(rsa_key(1)))).reason == reasons.BAD_SIGNATURE
    )


def test_alg_none_is_refused_with_a_public_key_too(tmp_path: Path) -> None:
    h = rs_config(tmp_path)
    assert h.request(hand_token({"alg": "none"}, claims(), None)).reason == reasons.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS256", lambda: rsa_key()),
        ("RS384", lambda: rsa_key()),
        ("RS512", lambda: rsa_key()),
        ("PS256", lambda: rsa_key()),
        ("ES256", lambda: ec_key("P-256")),
        ("ES384", lambda: ec_key("P-384")),
        ("EdDSA", lambda: ed_key()),
    ],
)
def test_every_public_key_algorithm(tmp_path: Path, alg: str, key: Any) -> None:
    private = key()
    h = rs_config(tmp_path, alg, private)
    assert h.request(jwt.encode(claims(), private, algorithm=alg)).reason is None
    # The same claims under any other algorithm are refused, whatever the header says.
    other = "HS256" if alg != "HS256" else "HS384"
    assert h.request(jwt.encode(claims(), SECRET, algorithm=other)).reason == reasons.BAD_SIGNATURE


def test_es256_token_signed_on_another_curve_is_refused(tmp_path: Path) -> None:
    h = rs_config(tmp_path, "ES256", ec_key("P-256"))
    token = hand_token({"alg": "ES256"}, claims(), lambda m: b"\x00" * 64)
    assert h.request(token).reason == reasons.BAD_SIGNATURE
    assert h.request(jwt.encode(claims(), ec_key("P-384"), algorithm="ES384")).reason == reasons.BAD_SIGNATURE


# ----------------------------------------------------------------------------- configuration of claims
def test_exp_is_required_even_when_required_claims_leaves_it_out() -> None:
    h = Harness(config({"required_claims": ["sub"]}))
    assert h.request(hs256(claims(exp=None))).reason == reasons.MALFORMED
    assert h.request(hs256(claims(sub=None))).reason == reasons.MALFORMED
    assert h.request(hs256()).reason is None


def test_without_issuer_and_audience_configured() -> None:
    h = Harness(config({"jwt_issuer": None, "jwt_audience": None}))
    assert h.request(hs256(claims(iss="anyone", aud=None))).reason is None
    # RFC 7519 §4.1.3: a token for some audience is refused by a gateway that names none.
    assert h.request(hs256(claims(aud="api"))).reason == reasons.BAD_AUDIENCE


def test_leeway_zero() -> None:
    h = Harness(config({"leeway_secs": 0, "cache": {"enabled": False}}))
    assert h.request(hs256(claims(exp=now() - 5))).reason == reasons.EXPIRED
    assert h.request(hs256(claims(nbf=int(time.time()) + 5))).reason == reasons.NOT_YET_VALID


def test_mint_makes_tokens_the_gateway_accepts() -> None:
    h = Harness(config({"jwt_audience": ["web", "api"]}))
    auth = h.cfg.auth
    assert auth is not None
    token = mint(auth, "bob", 60, {"scope": "admin"})
    result = h.request(token, path="/api/admin")
    assert result.reason is None and result.ctx.user == "bob"
    assert h.request(mint(auth, "bob", 60, now=time.time() - 3600)).reason == reasons.EXPIRED
    with pytest.raises(ValueError, match="HS"):
        mint(auth.model_copy(update={"jwt_algorithm": "RS256"}), "bob", 60)
