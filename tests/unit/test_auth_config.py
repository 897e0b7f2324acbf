"""The auth: section and the token/session commands: mistakes caught before serving."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jwt
import pytest
from auth_helpers import SECRET, ec_key, ed_key, rsa_key, write_pem
from cryptography.hazmat.primitives.asymmetric import rsa

from apigate.auth.cli import parse_claims
from apigate.cli import main
from apigate.config import ConfigError, load_config_text

ROUTES = """
upstreams: [{id: u, base_url: "http://u"}]
routes:
  - {id: r, path: /r, upstream_id: u, auth_required: true}
"""


def errors_of(text: str, base_dir: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "config.yaml", {}, base_dir)
    return [e.removeprefix("config.yaml:") for e in info.value.errors]


def loads(text: str) -> None:
    load_config_text(textwrap.dedent(text), "config.yaml", {}, None)


# ----------------------------------------------------------------------------- checks
def test_a_pem_key_as_hmac_secret_is_refused() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\\nMIIB...\\n"
    assert errors_of(f'auth:\n  jwt_secret: "{pem}"\n') == [
        "2 auth.jwt_secret: looks like a PEM key; a public key must never be an HMAC secret"
        " (use RS*/ES* instead)"
    ]


def test_a_secret_with_a_public_key_algorithm_is_refused(tmp_path: Path) -> None:
    path = write_pem(tmp_path, rsa_key())
    assert errors_of(
        f"auth:\n  jwt_algorithm: RS256\n  jwt_secret: {SECRET}\n  jwt_public_key_path: {path}\n"
    ) == ["3 auth.jwt_secret: only used with HS* algorithms; RS256 verifies with a public key"]


@pytest.mark.parametrize(
    ("alg", "key", "message"),
    [
        ("RS256", lambda: ec_key("P-256"), "RS256 needs an RSA public key, not an EC key on secp256r1"),
        (
            "ES256",
            lambda: ec_key("P-384"),
            "ES256 needs an EC public key on secp256r1, not an EC key on secp384r1",
        ),
        ("ES384", lambda: rsa_key(), "ES384 needs an EC public key on secp384r1, not an RSA key (2048 bits)"),
        (
            "EdDSA",
            lambda: rsa_key(),
            "EdDSA needs an Ed25519 or Ed448 public key, not an RSA key (2048 bits)",
        ),
        (
            "PS256",
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "the RSA key has 1024 bits; PS256 needs at least 2048",
        ),
    ],
)
def test_the_key_file_must_fit_the_algorithm(tmp_path: Path, alg: str, key: object, message: str) -> None:
    path = write_pem(tmp_path, key())  # type: ignore[operator]
    assert errors_of(f"auth:\n  jwt_algorithm: {alg}\n  jwt_public_key_path: {path}\n") == [
        f"3 auth.jwt_public_key_path: {message} ({path})"
    ]


def test_fitting_keys_load(tmp_path: Path) -> None:
    for alg, key in (("RS512", rsa_key()), ("ES384", ec_key("P-384")), ("EdDSA", ed_key())):
        path = write_pem(tmp_path, key, f"{alg}.pem")
        loads(f"auth:\n  jwt_algorithm: {alg}\n  jwt_public_key_path: {path}\n")


def test_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("hello\n")
    assert errors_of("auth:\n  jwt_algorithm: RS256\n  jwt_public_key_path: junk.pem\n", str(tmp_path)) == [
        "3 auth.jwt_public_key_path: no PEM public key or certificate in the file (junk.pem)"
    ]


def test_key_path_and_jwks_url_together(tmp_path: Path) -> None:
    path = write_pem(tmp_path, rsa_key())
    assert errors_of(
        f"auth:\n  jwt_algorithm: RS256\n  jwt_public_key_path: {path}\n  jwks_url: https://idp/jwks\n"
    ) == ["4 auth.jwks_url: give jwt_public_key_path or jwks_url, not both"]


def test_required_scopes_need_auth_required() -> None:
    text = f"auth:\n  jwt_secret: {SECRET}\n" + ROUTES.replace("auth_required: true", "required_scopes: [a]")
    assert errors_of(text) == ["6 routes[0].required_scopes: needs auth_required: true on the route"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "claim_headers: {Host: sub}",
            "'Host' is set by the gateway or frames the request; pick another name",
        ),
        ("claim_headers: {X-User-ID: sub}", "'X-User-ID' is set by the gateway"),
        ("claim_headers: {'bad name': sub}", "'bad name' is not a header name"),
        ("cookie_name: 'a b'", "must be a cookie name"),
        ("jwt_audience: []", "must name at least one audience"),
        ("jwks_url: ftp://idp/jwks", "must be an absolute http:// or https:// URL"),
        ("session_store: {redis_url: 'http://r'}", "must start with redis://"),
        ("session_store: {timeout_ms: 0}", "must be at least 1, got 0"),
        ("leeway_secs: 3600", "must be between 0 and 600, got 3600"),
    ],
)
def test_auth_keys_are_validated(text: str, error: str) -> None:
    errors = errors_of(f"auth:\n  jwt_secret: {SECRET}\n  {text}\n")
    assert len(errors) == 1 and error in errors[0], errors


def test_scopes_are_scope_tokens() -> None:
    errors = errors_of(
        f"auth:\n  jwt_secret: {SECRET}\n" + ROUTES.replace("true}", "true, required_scopes: ['a\"b']}")
    )
    assert len(errors) == 1 and "is not a scope" in errors[0]


# ----------------------------------------------------------------------------- apigate token / session
def write_config(tmp_path: Path, auth: str) -> str:
    path = tmp_path / "apigate.yaml"
    path.write_text(f"auth:\n{textwrap.indent(textwrap.dedent(auth), '  ')}")
    return str(path)


def test_token_command_mints_a_verifiable_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(
        tmp_path, f"jwt_algorithm: HS384\njwt_secret: {SECRET * 2}\njwt_issuer: idp\njwt_audience: api\n"
    )
    code = main(
        ["token", "--config", cfg, "--sub", "alice", "--ttl", "60", "--claims", "scope=read write", "n=5"]
    )
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    payload = jwt.decode(out.out.strip(), SECRET * 2, algorithms=["HS384"], audience="api", issuer="idp")
    assert payload["sub"] == "alice" and payload["scope"] == "read write" and payload["n"] == 5
    assert payload["exp"] - payload["iat"] == 60


def test_token_command_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pem(tmp_path, rsa_key())
    rs = write_config(tmp_path, f"jwt_algorithm: RS256\njwt_public_key_path: {path}\n")
    assert main(["token", "--config", rs, "--sub", "a"]) == 2
    assert "needs an HS* jwt_algorithm" in capsys.readouterr().err
    hs = write_config(tmp_path, f"jwt_secret: {SECRET}\n")
    assert main(["token", "--config", hs, "--sub", "a", "--claims", "novalue"]) == 2
    assert "--claims wants K=V" in capsys.readouterr().err
    assert main(["token", "--config", hs, "--sub", "a", "--ttl", "0"]) == 2
    short = write_config(tmp_path, "jwt_secret: short\n")
    assert main(["token", "--config", short, "--sub", "a"]) == 0
    assert "shorter than RFC 7518" in capsys.readouterr().err


def test_session_commands_need_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "token_format: session\n")
    assert main(["session", "create", "--config", cfg, "--sub", "alice", "--ttl", "60"]) == 2
    assert "no Redis for sessions" in capsys.readouterr().err
    assert main(["session", "revoke", "--config", cfg, "sometoken"]) == 2
    jwt_cfg = write_config(tmp_path, f"jwt_secret: {SECRET}\n")
    assert main(["session", "create", "--config", jwt_cfg, "--sub", "alice"]) == 2
    assert "token_format is jwt" in capsys.readouterr().err


def test_parse_claims() -> None:
    assert parse_claims(["a=1", "b=true", 'c=["x"]', "d=read write", "e=", "f=a=b"]) == {
        "a": 1,
        "b": True,
        "c": ["x"],
        "d": "read write",
        "e": "",
        "f": "a=b",
    }
