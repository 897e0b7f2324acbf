"""Configuration of the traffic features: what an operator sees for each mistake.

Header transforms, IP rules, CORS, WebSockets and plugins are all checked when the file
is loaded, with the file, line and key path of the mistake, like every other key.
"""

from __future__ import annotations

import textwrap

import pytest

from apigate.config import ConfigError, load_config_text

BASE = """
upstreams:
  - {id: up, base_url: "http://127.0.0.1:9"}
routes:
  - id: r
    path: /api/*
    upstream_id: up
"""


def errors_of(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(BASE) + extra, "gw.yaml", {})
    return info.value.errors


@pytest.mark.parametrize(
    "name", ["Host", "Connection", "Transfer-Encoding", "Upgrade", "Content-Length", "X-User-ID"]
)
def test_a_transform_cannot_touch_framing_hop_by_hop_or_identity_fields(name: str) -> None:
    errors = errors_of(f"    request_headers: {{set: {{{name}: x}}}}\n")
    assert len(errors) == 1
    assert errors[0].startswith("gw.yaml:8 routes[0].request_headers")
    assert f"'{name}'" in errors[0] and "cannot be transformed" in errors[0]


def test_a_transform_names_only_known_variables() -> None:
    (error,) = errors_of("    response_headers: {add: {X-Who: '$usr'}}\n")
    assert error.startswith("gw.yaml:8 routes[0].response_headers")
    assert "unknown variable $usr" in error and "$client_ip" in error


def test_a_transform_value_cannot_inject_a_header() -> None:
    (error,) = errors_of('    request_headers: {set: {X-A: "a\\r\\nX-B: b"}}\n')
    assert "line break" in error


def test_a_header_is_given_once_per_transform() -> None:
    (error,) = errors_of("    request_headers: {set: {X-A: a}, remove: [x-a]}\n")
    assert "'x-a' is given in both set and remove" in error


def test_ip_rules_take_addresses_and_cidrs_v4_and_v6() -> None:
    (error,) = errors_of("    ip_allow: [10.0.0.0/8, '2001:db8::/32', 10.0.0.300]\n")
    assert (
        error.startswith("gw.yaml:8 routes[0].ip_allow")
        and "'10.0.0.300' is not an IP address or CIDR" in error
    )


def test_ip_rules_decide_deny_first_then_allow() -> None:
    from apigate.gateway.clientip import parse_networks
    from apigate.iprules.filter import DENIED, NOT_ALLOWED, Rules

    rules = Rules(parse_networks(["2001:db8::/32", "10.0.0.0/8"]), parse_networks(["10.9.0.0/16"]))
    assert rules.decide("10.1.2.3") is None
    assert rules.decide("2001:db8::1") is None
    assert rules.decide("10.9.1.1") == DENIED
    assert rules.decide("2001:db9::1") == NOT_ALLOWED
    assert rules.decide("unix") == NOT_ALLOWED
    assert Rules((), parse_networks(["::/0"])).decide("127.0.0.1") is None  # v6 rules never match v4


def test_cors_origins_are_origins_star_or_a_regex() -> None:
    (error,) = errors_of("    cors: {allow_origins: ['https://b.test:8443', '*', 'https://a.test/path']}\n")
    assert error.startswith("gw.yaml:8 routes[0].cors.allow_origins")
    assert "'https://a.test/path' is not an origin" in error
    (error,) = errors_of("    cors: {allow_origins: ['~([']}\n")
    assert "'~([' is not a regular expression" in error


def test_ip_rules_remember_the_last_address_without_mixing_addresses_up() -> None:
    from apigate.gateway.clientip import parse_networks
    from apigate.iprules.filter import DENIED, Rules

    rules = Rules(parse_networks(["10.0.0.0/8"]), parse_networks(["10.9.0.0/16"]))
    answers = [rules.decide(a) for a in ("10.9.1.1", "10.9.1.1", "10.1.1.1", "10.1.1.1", "10.9.1.1")]
    assert answers == [DENIED, DENIED, None, None, DENIED]


def test_serialized_fields_read_back_as_the_pairs_they_were() -> None:
    from apigate.http.headers import decode_fields, encode_headers

    pairs = [(b"access-control-allow-origin", b"http://a.test"), (b"vary", b"Origin"), (b"x-empty", b"")]
    assert decode_fields(encode_headers(pairs)) == pairs
    assert decode_fields(b"") == []


def test_fields_go_as_pairs_only_where_something_may_read_or_edit_them() -> None:
    from apigate.cors.filter import serializable
    from apigate.transforms.filter import HeaderTransformFilter

    cfg = load_config_text(
        textwrap.dedent(
            """\
            upstreams: [{id: u, base_url: "http://127.0.0.1:9"}]
            plugins: [{name: p, module: "noop_plugin:Noop", path: bench}]
            cors: {allow_origins: ["*"]}
            routes:
              - {id: plain, path: /a, upstream_id: u, request_headers: {add: {X-A: a}}}
              - {id: vary, path: /b, upstream_id: u, response_headers: {set: {Vary: Accept}}}
              - {id: agent, path: /c, upstream_id: u, request_headers: {set: {User-Agent: gw}}}
              - {id: plugged, path: /d, upstream_id: u, plugins: [p], request_headers: {add: {X-A: a}}}
            """
        ),
        "gw.yaml",
    )
    assert [serializable(cfg, r) for r in cfg.routes] == [True, False, True, False]
    transforms = HeaderTransformFilter(cfg).routes
    serialized = [t[0].serialized if t is not None and t[0] is not None else None for t in transforms]
    assert serialized == [True, None, False, False]
