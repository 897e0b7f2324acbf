"""apigate.config loading: what an operator sees for a good file and for every kind of mistake."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from apigate.config import Config, ConfigError, load_config, load_config_text, summarize

if TYPE_CHECKING:
    from conftest import TlsFiles

UPSTREAM = """
upstreams:
  - id: user-service
    base_url: http://user-service:8080
"""


def load(text: str, env: dict[str, str] | None = None, base_dir: str | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "config.yaml", env or {}, base_dir)


def errors_of(text: str, env: dict[str, str] | None = None, base_dir: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, env, base_dir)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- valid files
def test_empty_file_is_all_defaults() -> None:
    cfg = load("")
    assert cfg == Config()
    assert cfg.server.port == 8080
    assert [s.type for s in cfg.logging.sinks] == ["stdout"]
    assert load("# only a comment\n") == Config()


def test_minimal_file_loads_typed_values() -> None:
    cfg = load(
        UPSTREAM
        + """
        routes:
          - id: users-list
            methods: [get]
            path: /api/users
            upstream_id: user-service
        """.replace("        ", "")
    )
    assert cfg.upstreams[0].id == "user-service"
    assert cfg.routes[0].methods == ["GET"]
    assert cfg.routes[0].rate_limit is None


def test_unquoted_tls_min_version_is_accepted(tls_files: TlsFiles) -> None:
    tls = f"  tls:\n    cert_path: {tls_files.cert}\n    key_path: {tls_files.key}\n"
    cfg = load("server:\n" + tls + "    min_version: 1.3\n")
    assert cfg.server.tls is not None and cfg.server.tls.min_version == "1.3"


def test_yaml_merge_keys_work() -> None:
    cfg = load(
        """
        upstreams:
          - &base {id: a, base_url: "http://a:80", timeout_secs: 5}
          - <<: *base
            id: b
        """
    )
    assert [(u.id, u.timeout_secs, u.base_url) for u in cfg.upstreams] == [
        ("a", 5, "http://a:80"),
        ("b", 5, "http://a:80"),
    ]


# ----------------------------------------------------------------------------- schema errors
def test_unknown_key_names_line_and_suggests() -> None:
    assert errors_of("server:\n  bind_address: 127.0.0.1\n  prot: 8080\n") == [
        "config.yaml:3 server.prot: unknown key 'prot' (did you mean 'port'?)"
    ]


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    [error] = errors_of("frobnicate: 1\n")
    assert error.startswith(
        "config.yaml:1 frobnicate: unknown key 'frobnicate' (valid keys: server, logging,"
    )


def test_wrong_type_shows_expected_and_got() -> None:
    assert errors_of("server:\n  port: abc\n") == [
        "config.yaml:2 server.port: expected an integer, got 'abc'"
    ]
    assert errors_of("logging:\n  structured: maybe\n") == [
        "config.yaml:2 logging.structured: expected true or false, got 'maybe'"
    ]


@pytest.mark.parametrize(("port", "line"), [("0", 2), ("70000", 2), ("-1", 2)])
def test_bad_port_gives_the_range(port: str, line: int) -> None:
    assert errors_of(f"server:\n  port: {port}\n") == [
        f"config.yaml:{line} server.port: must be between 1 and 65535, got {port}"
    ]


def test_missing_required_key_points_at_the_enclosing_item() -> None:
    errors = errors_of(UPSTREAM + "routes:\n  - id: r\n    path: /x\n")
    assert errors == ["config.yaml:6 routes[0].upstream_id: missing required key"]


def test_bad_literal_lists_choices() -> None:
    assert errors_of("logging:\n  format: xml\n") == [
        "config.yaml:2 logging.format: expected 'json' or 'text', got 'xml'"
    ]


def test_union_errors_are_merged_or_narrowed() -> None:
    base = UPSTREAM + "routes:\n  - id: r\n    path: /x\n    upstream_id: user-service\n"
    assert errors_of(base + "    rate_limit: lots\n") == [
        "config.yaml:9 routes[0].rate_limit: expected a mapping or false, got 'lots'"
    ]
    assert errors_of(base + "    rate_limit:\n      limit: 0\n      window_secs: 60\n") == [
        "config.yaml:10 routes[0].rate_limit.limit: must be at least 1, got 0"
    ]
    assert load(base + "    rate_limit: false\n").routes[0].rate_limit is False


def test_sink_without_its_block_is_reported_on_the_item() -> None:
    assert errors_of("logging:\n  sinks:\n    - type: stdout\n    - type: file\n") == [
        "config.yaml:4 logging.sinks[1]: a sink of type 'file' needs a 'file:' block"
    ]


def test_validator_messages_are_short() -> None:
    [error] = errors_of(UPSTREAM + "routes:\n  - {id: r, path: api, upstream_id: user-service}\n")
    assert error == "config.yaml:6 routes[0].path: must start with '/'"
    assert "pydantic" not in error and "http" not in error


# ----------------------------------------------------------------------------- cross-checks
def test_unknown_upstream_exact_format(tmp_path: Path) -> None:
    path = write(
        tmp_path, UPSTREAM + "routes:\n  - id: users-list\n    path: /api/users\n    upstream_id: user-svc\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [f"{path}:8 routes[0].upstream_id: unknown upstream 'user-svc'"]


def test_file_name_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "server:\n  port: 0\n", name="gw.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("conf/gw.yaml", env={})
    assert info.value.errors[0].startswith("conf/gw.yaml:2 server.port:")


def test_duplicate_ids() -> None:
    errors = errors_of(
        """
        upstreams:
          - {id: a, base_url: "http://a"}
          - {id: a, base_url: "http://b"}
        routes:
          - {id: r, path: /x, upstream_id: a}
          - {id: r, path: /y, upstream_id: a}
        """
    )
    assert errors == [
        "config.yaml:4 upstreams[1].id: duplicate upstream id 'a' (first on line 3)",
        "config.yaml:7 routes[1].id: duplicate route id 'r' (first on line 6)",
    ]


def test_ambiguous_routes_need_same_path_and_a_common_method() -> None:
    routes = """
        upstreams: [{id: u, base_url: "http://u"}]
        routes:
          - {id: one, methods: [GET, POST], path: "/api/users/{id}", upstream_id: u}
          - {id: two, methods: [get], path: "/api/users/{user}", upstream_id: u}
          - {id: three, methods: [DELETE], path: "/api/users/{id}", upstream_id: u}
          - {id: four, path: /api/*, upstream_id: u}
          - {id: five, path: /api/*, upstream_id: u}
        """
    assert errors_of(routes) == [
        "config.yaml:5 routes[1].path: ambiguous: route 'one' (line 4) already serves GET"
        " on /api/users/{user}",
        "config.yaml:8 routes[4].path: ambiguous: route 'four' (line 7) already serves all methods on /api/*",
    ]


def test_metrics_port_clash() -> None:
    assert errors_of("server:\n  port: 9000\nobservability:\n  metrics_port: 9000\n") == [
        "config.yaml:4 observability.metrics_port: server.port and observability.metrics_port are both 9000;"
        " each listener needs its own"
    ]
    load("server:\n  port: 9000\nobservability:\n  metrics_port: 9000\n  metrics_enabled: false\n")
    load(
        "server:\n  bind_address: 10.0.0.1\n  port: 9000\n"
        "observability:\n  metrics_port: 9000\n  metrics_bind_address: 127.0.0.1\n"
    )


def test_tls_files_are_checked(tls_files: TlsFiles, tmp_path: Path) -> None:
    ok = f"server:\n  tls:\n    cert_path: {tls_files.cert}\n    key_path: {tls_files.key}\n"
    assert load(ok).server.tls is not None

    missing = tmp_path / "nope.pem"
    assert errors_of(f"server:\n  tls:\n    cert_path: {missing}\n    key_path: {tmp_path}\n") == [
        f"config.yaml:3 server.tls.cert_path: cannot read {missing}: No such file or directory",
        f"config.yaml:4 server.tls.key_path: cannot read {tmp_path}: Is a directory",
    ]
    assert errors_of(
        f"server:\n  tls:\n    cert_path: {tls_files.cert}\n    key_path: {tls_files.other_key}\n"
    ) == ["config.yaml:4 server.tls.key_path: private key does not match the certificate in cert_path"]
    assert errors_of(f"server:\n  tls:\n    cert_path: {tls_files.key}\n    key_path: {tls_files.key}\n") == [
        f"config.yaml:3 server.tls.cert_path: no PEM certificate in {tls_files.key}"
    ]
    [error] = errors_of(f"server:\n  tls:\n    cert_path: {tls_files.cert}\n    key_path: {tls_files.cert}\n")
    assert error.startswith("config.yaml:4 server.tls.key_path: no usable PEM private key")


def test_relative_paths_resolve_from_the_config_directory(
    tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    (conf / "tls").mkdir(parents=True)
    for src in (tls_files.cert, tls_files.key):
        (conf / "tls" / src.name).write_bytes(src.read_bytes())
    path = write(conf, "server:\n  tls:\n    cert_path: tls/cert.pem\n    key_path: tls/key.pem\n")
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_config(path, env={})
    # resolved once at load time, so `serve` finds the file whatever its working directory
    assert cfg.server.tls is not None and cfg.server.tls.cert_path == str(conf / "tls" / "cert.pem")
    errors = errors_of("server:\n  tls:\n    cert_path: tls/cert.pem\n    key_path: tls/key.pem\n")
    assert f"cannot read tls/cert.pem (resolved to {tmp_path / 'tls' / 'cert.pem'})" in errors[0]


def test_upstream_ca_path(tls_files: TlsFiles, tmp_path: Path) -> None:
    load(f'upstreams:\n  - {{id: u, base_url: "https://u", ca_path: "{tls_files.cert}"}}\n')
    assert errors_of(
        'upstreams:\n  - {id: u, base_url: "https://u", ca_path: ca.pem}\n', base_dir=str(tmp_path)
    ) == [
        f"config.yaml:2 upstreams[0].ca_path: cannot read ca.pem (resolved to {tmp_path}/ca.pem): "
        "No such file or directory"
    ]


def test_jwt_key_material() -> None:
    assert errors_of("auth:\n  jwt_algorithm: HS256\n") == [
        "config.yaml:1 auth.jwt_secret: required (and not empty) when jwt_algorithm is HS256"
    ]
    assert errors_of("auth:\n  jwt_algorithm: RS256\n") == [
        "config.yaml:2 auth.jwt_algorithm: RS256 needs jwt_public_key_path or jwks_url"
    ]
    assert errors_of("auth:\n  jwt_algorithm: ES256\n  jwt_public_key_path: /nonexistent/pub.pem\n") == [
        "config.yaml:3 auth.jwt_public_key_path: cannot read /nonexistent/pub.pem: No such file or directory"
    ]
    load("auth:\n  jwt_algorithm: RS256\n  jwks_url: https://idp/.well-known/jwks.json\n")
    load("auth:\n  token_format: session\n")


def test_auth_required_needs_an_auth_section() -> None:
    assert errors_of(
        UPSTREAM + "routes:\n  - {id: r, path: /x, upstream_id: user-service, auth_required: true}\n"
    ) == ["config.yaml:6 routes[0].auth_required: true, but there is no auth: section to verify tokens"]


# ----------------------------------------------------------------------------- environment
def test_env_expansion_forms() -> None:
    env = {"PORT": "8443", "HOST": "redis.internal", "EMPTY": ""}
    cfg = load(
        """
        server:
          port: "${PORT}"
          bind_address: "${BIND:-127.0.0.1}"
        logging:
          service: "$${NOT_A_VAR} ${EMPTY:-fallback} ${EMPTY}x $HOME"
        rate_limiting:
          redis_url: "redis://${HOST:-localhost}:${REDIS_PORT:-6379}/0"
        """,
        env,
    )
    assert cfg.server.port == 8443
    assert cfg.server.bind_address == "127.0.0.1"
    assert cfg.logging.service == "${NOT_A_VAR} fallback x $HOME"
    assert cfg.rate_limiting is not None and cfg.rate_limiting.redis_url == "redis://redis.internal:6379/0"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIGATE_TEST_PORT", "8181")
    assert load_config_text("server:\n  port: ${APIGATE_TEST_PORT}\n").server.port == 8181


def test_missing_env_var_names_variable_and_key_path() -> None:
    text = """
        logging:
          sinks:
            - type: stdout
            - type: elasticsearch
              elasticsearch:
                urls: ["${ES_URL}"]
                password: "${ELASTICSEARCH_PASSWORD}"
        """
    assert errors_of(text) == [
        "config.yaml:7 logging.sinks[1].elasticsearch.urls[0]: environment variable ES_URL is not set",
        "config.yaml:8 logging.sinks[1].elasticsearch.password:"
        " environment variable ELASTICSEARCH_PASSWORD is not set",
    ]


def test_expanded_values_are_type_checked() -> None:
    assert errors_of("server:\n  port: ${PORT}\n", {"PORT": "eighty"}) == [
        "config.yaml:2 server.port: expected an integer, got 'eighty'"
    ]


def test_bad_variable_reference() -> None:
    assert errors_of("logging:\n  service: 'x ${NOT-VALID}'\n") == [
        "config.yaml:2 logging.service: bad variable reference '${NOT-VALID}':"
        " write ${NAME} or ${NAME:-default}"
    ]


# ----------------------------------------------------------------------------- all at once
def test_every_problem_in_one_run_sorted_by_line() -> None:
    errors = errors_of(
        """
        server:
          prot: 8080
          port: 0
        logging:
          level: LOUD
          sinks:
            - type: elasticsearch
              elasticsearch:
                urls: [http://es:9200]
                password: ${ES_PASSWORD}
        upstreams:
          - {id: users, base_url: "ftp://users"}
        routes:
          - {id: r, path: /x, upstream_id: user-svc}
        """
    )
    assert [e.split(" ", 1)[0] for e in errors] == [
        "config.yaml:3",
        "config.yaml:4",
        "config.yaml:6",
        "config.yaml:11",
        "config.yaml:13",
        "config.yaml:15",
    ]
    assert "unknown upstream 'user-svc'" in errors[-1]


# ----------------------------------------------------------------------------- broken files
def test_yaml_syntax_error_has_a_line_and_no_excerpt() -> None:
    assert errors_of('server:\n  port: 8080\nauth:\n  jwt_secret: "s3cr3t-value\n') == [
        "config.yaml:5: YAML syntax error: found unexpected end of stream (column 1),"
        " in a quoted scalar that starts on line 4"
    ]
    [error] = errors_of("server:\n  port: 8080\n\tbind_address: x\n")
    assert error.startswith("config.yaml:3: YAML syntax error: found character '\\t'")


def test_duplicate_yaml_key() -> None:
    assert errors_of("server:\n  port: 8080\n  bind_address: 0.0.0.0\n  port: 8081\n") == [
        "config.yaml:4 server.port: duplicate key 'port' (first on line 2)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- server\n", "config.yaml:1: the top level must be a mapping of sections"),
        ("just words\n", "config.yaml:1: the top level must be a mapping of sections"),
        (
            "a: 1\n---\nb: 2\n",
            "config.yaml:2: YAML syntax error: expected a single document in the stream (line 1),",
        ),
        ("server: {port: *nope}\n", "config.yaml:1: YAML syntax error: found undefined alias 'nope'"),
        ("server:\n  port: !env PORT\n", "config.yaml:2 server.port: could not determine a constructor"),
        ("server: &a\n  tls: *a\n", "config.yaml:1 server.tls: an alias refers to the node that contains it"),
        (
            "server:\n  bind_address: \x07\n",
            "config.yaml:2: YAML syntax error: character U+0007 is not allowed",
        ),
        ("? [a]\n: 1\n", "config.yaml:1: keys must be strings, got a list"),
        ("server:\n  port: 80\n  1: 2\n", "config.yaml:3 server: keys must be strings, got 1"),
        ("server:\n", "config.yaml:1 server: expected a mapping, got nothing (null)"),
        ("[" * 600, "config.yaml: YAML structure is nested too deeply"),
    ],
)
def test_broken_documents_give_one_clear_error(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert errors[0].startswith(expected), errors


def test_unreadable_or_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.errors == [f"{tmp_path}/missing.yaml: cannot read: No such file or directory"]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors == [f"{tmp_path}: cannot read: Is a directory"]
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"server:\n  bind_address: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.errors == [f"{bad}:2: not valid UTF-8 (byte 0xe9 at column 20)"]


def test_billion_laughs_is_stopped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    errors = errors_of("\n".join(lines) + "\n")
    assert any("more than 100000 values" in e for e in errors)


# ----------------------------------------------------------------------------- secrets
def test_secrets_are_never_echoed() -> None:
    env = {"JWT_SECRET": "jwt-signing-secret-value", "ES_PASSWORD": "pa55word-from-env"}
    errors = errors_of(
        """
        auth:
          jwt_secret: ${JWT_SECRET}
        logging:
          sinks:
            - type: elasticsearch
              elasticsearch:
                urls: [http://es:9200]
                password: ${ES_PASSWORD}
                api_key: 123456789
            - type: splunk
              splunk: {endpoint: "https://splunk:8088", token: [hec-token-in-a-list]}
        upstreams: [{id: u, base_url: "http://u"}]
        routes:
          - {id: r, path: /x, upstream_id: "${JWT_SECRET}"}
        """,
        env,
    )
    text = "\n".join(errors)
    for secret in ("jwt-signing-secret-value", "pa55word-from-env", "123456789", "hec-token-in-a-list"):
        assert secret not in text
    assert "config.yaml:10 logging.sinks[0].elasticsearch.api_key: expected a string, got a value" in text
    assert "routes[0].upstream_id: unknown upstream '***'" in text


def test_weak_secret_does_not_mangle_key_paths() -> None:
    assert errors_of("auth:\n  jwt_secret: secret\n  jwt_algorithm: HS999\n") == [
        "config.yaml:3 auth.jwt_algorithm: expected 'HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512',"
        " 'PS256', 'ES256', 'ES384' or 'EdDSA', got 'HS999'"
    ]


def test_non_secret_values_are_shown_even_near_secret_words() -> None:
    assert errors_of("auth:\n  token_format: jwtt\n  jwt_secret: x\n") == [
        "config.yaml:2 auth.token_format: expected 'jwt' or 'session', got 'jwtt'"
    ]


# ----------------------------------------------------------------------------- summary
def test_summarize(tls_files: TlsFiles) -> None:
    cfg = load(
        f"""
        server:
          port: 8443
          tls: {{cert_path: "{tls_files.cert}", key_path: "{tls_files.key}"}}
        logging:
          sinks:
            - type: stdout
            - {{type: file, enabled: false, file: {{path: /tmp/x.log}}}}
            - {{type: splunk, splunk: {{endpoint: "https://s:8088", token: t}}}}
        upstreams: [{{id: u, base_url: "http://u"}}]
        routes:
          - {{id: r1, path: /a, upstream_id: u}}
          - {{id: r2, path: /b, upstream_id: u}}
        """
    )
    assert summarize(cfg) == (
        "ok: 2 routes, 1 upstream, sinks: stdout, splunk; listening on 0.0.0.0:8443 (tls), metrics on :9090"
    )
    quiet = load(
        "server: {bind_address: '::1'}\nobservability: {metrics_enabled: false}\nlogging: {sinks: []}\n"
    )
    assert summarize(quiet) == "ok: 0 routes, 0 upstreams, sinks: none; listening on [::1]:8080, metrics off"
    split = load("observability: {metrics_bind_address: 127.0.0.1}\n")
    assert summarize(split).endswith("listening on 0.0.0.0:8080, metrics on 127.0.0.1:9090")


def test_only_config_error_escapes(tmp_path: Path) -> None:
    """Odd but possible inputs: each either loads or raises ConfigError, never anything else."""
    samples = [
        "server: [1, 2]",
        "routes: {a: 1}",
        "routes: [1, null, {id: x}]",
        "upstreams: [{id: [1], base_url: 2}]\nroutes: [{id: r, path: /a, upstream_id: [1]}]",
        "routes: [{id: r, path: /a, methods: [1, null], upstream_id: u}, {id: s, path: /a, methods: 3}]",
        "server: {tls: {cert_path: [1], key_path: null}}",
        "server: {port: 1e400}",
        "auth: {jwt_algorithm: [HS256], jwt_secret: {a: 1}}",
        "auth: {jwt_algorithm: RS256, jwt_public_key_path: 3}",
        "observability: {metrics_port: '${P:-x}', metrics_enabled: '${E:-yes}'}",
        "logging: {sinks: [{type: [file]}, {type: file, file: {path: 1}}, 7]}",
        "upstreams: [{id: u, base_url: 'http://u', ca_path: " + str(tmp_path) + "}]",
        "\ufeffserver: {port: 1}",
        "%YAML 1.1\n---\nserver: {}",
        "!!binary aGVsbG8=",
        "server: !!set {a, b}",
        "server: {port: 2024-01-01}",
    ]
    for text in samples:
        try:
            load_config_text(text, "x.yaml", {}, str(tmp_path))
        except ConfigError as e:
            assert e.errors and all(line.startswith("x.yaml") for line in e.errors), e.errors
            assert "internal error" not in str(e), text
    assert os.getcwd()  # nothing above changed directory
