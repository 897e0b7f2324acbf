"""Checks that span keys or touch the filesystem, run after (and beside) the schema.

A schema validates each key on its own; these catch what only shows when keys are read
together (a route naming no upstream, two routes claiming the same path and method, the
metrics listener on the proxy's port, an HS256 verifier without a secret) or against the
machine (TLS files that are missing, unreadable or do not belong together).

They read the *raw* data, not a validated ``Config``: one mistake elsewhere in the file
must not hide these, since the promise is every error in one run. So each check takes
only values of the right shape and skips the rest (the schema reports those), coercing
like pydantic's lax mode where a value may come from ``${VAR}`` as a string.

Relative file paths are checked relative to ``base_dir`` (the config file's directory);
the values themselves are kept as written.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from apigate.config.errors import KeyPath, Problem
from apigate.config.files import MAX_PEM_BYTES, read_bounded, reason
from apigate.config.plugins import PluginImportError, config_model, import_plugin
from apigate.config.schema import (
    HTTP_METHODS,
    AuthConfig,
    Config,
    ObservabilityConfig,
    ServerConfig,
    check_bind_address,
)
from apigate.config.yamlpos import Document

T = TypeVar("T")
_PARAM = re.compile(r"\{[^/{}]*\}")
_WILDCARDS = ("0.0.0.0", "::", "")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def cross_check(data: object, doc: Document, base_dir: str) -> list[Problem]:
    """Every cross-key and filesystem problem in ``data``."""
    if not isinstance(data, dict):
        return []
    c = _Checker(data, doc, base_dir)
    c.ids("upstreams", "upstream")
    c.ids("routes", "route")
    c.route_upstreams()
    c.ambiguous_routes()
    c.metrics_port()
    c.bind_addresses()
    c.tls()
    c.upstream_cas()
    c.auth()
    c.plugins()
    return c.problems


def config_warnings(cfg: Config) -> list[str]:
    """Valid but probably unintended settings: `apigate check` prints them and exits 0."""
    out: list[str] = []
    rl = cfg.rate_limiting
    limited = (rl is not None and rl.default_limit is not None) or any(r.rate_limit for r in cfg.routes)
    shared = rl is not None and (rl.redis_url or rl.redis_cluster_nodes or rl.redis_sentinel)
    if limited and cfg.server.workers > 1 and not shared:
        out.append(
            f"server.workers is {cfg.server.workers} and rate limits are kept in memory: each worker "
            "counts alone, so a client gets up to workers x limit (set rate_limiting.redis_url to share them)"
        )
    return out


def _default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].default


def _annotation(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].annotation


def _coerce(value: object, tp: Any, default: T) -> T | None:
    """``value`` as ``tp`` in pydantic's lax mode, ``default`` if absent, None if invalid."""
    if value is None:
        return default
    try:
        result: T = TypeAdapter(tp).validate_python(value)
        return result
    except ValidationError:
        return None


class _Checker:
    def __init__(self, data: dict[str, Any], doc: Document, base_dir: str) -> None:
        self.data = data
        self.doc = doc
        self.base_dir = base_dir
        self.problems: list[Problem] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.doc.line_of(path), path, message))

    def section(self, *keys: str) -> dict[str, Any]:
        node: object = self.data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def items(self, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
        items = self.data.get(name)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    yield i, item

    # ------------------------------------------------------------------ ids and routes
    def ids(self, section: str, what: str) -> None:
        first: dict[str, int] = {}
        for i, item in self.items(section):
            ident = item.get("id")
            if not isinstance(ident, str):
                continue
            if ident in first:
                line = self.doc.line_of((section, first[ident], "id"))
                self.add((section, i, "id"), f"duplicate {what} id '{ident}' (first on line {line})")
            else:
                first[ident] = i

    def route_upstreams(self) -> None:
        if not isinstance(self.data.get("upstreams", []), list):
            return
        known = {u["id"] for _, u in self.items("upstreams") if isinstance(u.get("id"), str)}
        for i, route in self.items("routes"):
            target = route.get("upstream_id")
            if isinstance(target, str) and target not in known:
                self.add(("routes", i, "upstream_id"), f"unknown upstream '{target}'")

    def ambiguous_routes(self) -> None:
        seen: dict[str, list[tuple[int, str, set[str]]]] = {}
        for i, route in self.items("routes"):
            path, methods = route.get("path"), route.get("methods", list(HTTP_METHODS))
            if not isinstance(path, str) or not isinstance(methods, list):
                continue
            wanted = {m.upper() for m in methods if isinstance(m, str)}
            shape = _PARAM.sub("{}", path)
            for j, other_id, other_methods in seen.get(shape, []):
                both = [m for m in HTTP_METHODS if m in wanted & other_methods]
                if both:
                    shown = "all methods" if len(both) == len(HTTP_METHODS) else ", ".join(both)
                    line = self.doc.line_of(("routes", j))
                    self.add(
                        ("routes", i, "path"),
                        f"ambiguous: route '{other_id}' (line {line}) already serves {shown} on {path}",
                    )
            seen.setdefault(shape, []).append((i, str(route.get("id", f"routes[{i}]")), wanted))

    # ------------------------------------------------------------------ plugins
    def plugins(self) -> None:
        """Names unique and known to the routes; each class importable, its config valid."""
        names: dict[str, int] = {}
        for i, plugin in self.items("plugins"):
            name = plugin.get("name")
            if isinstance(name, str):
                if name in names:
                    line = self.doc.line_of(("plugins", names[name], "name"))
                    self.add(("plugins", i, "name"), f"duplicate plugin name '{name}' (first on line {line})")
                names.setdefault(name, i)
            module, path = plugin.get("module"), plugin.get("path")
            if not isinstance(module, str) or ":" not in module or not isinstance(path, str | None):
                continue  # the schema reports the shape
            try:
                cls = import_plugin(module, self.resolve(path) if path else None)
            except PluginImportError as e:
                self.add(("plugins", i, "module"), str(e))
                continue
            model = config_model(cls)
            settings = plugin.get("config", {})
            if model is None or not isinstance(settings, dict):
                continue
            try:
                model.model_validate(settings)
            except ValidationError as e:
                for err in e.errors(include_url=False):
                    loc = tuple(err["loc"])
                    message = err["msg"]
                    if err["type"] == "extra_forbidden":
                        known = ", ".join(model.model_fields) if len(loc) == 1 else ""
                        message = f"unknown key '{loc[-1]}'" + (f" (valid keys: {known})" if known else "")
                    self.add(("plugins", i, "config", *loc), message)
        for i, route in self.items("routes"):
            listed = route.get("plugins")
            for j, name in enumerate(listed if isinstance(listed, list) else []):
                if isinstance(name, str) and name not in names:
                    self.add(("routes", i, "plugins", j), f"unknown plugin '{name}'")

    # ------------------------------------------------------------------ ports
    def metrics_port(self) -> None:
        server, obs = self.section("server"), self.section("observability")
        enabled = _coerce(obs.get("metrics_enabled"), bool, _default(ObservabilityConfig, "metrics_enabled"))
        port = _coerce(server.get("port"), int, _default(ServerConfig, "port"))
        mport = _coerce(obs.get("metrics_port"), int, _default(ObservabilityConfig, "metrics_port"))
        bind = _coerce(server.get("bind_address"), str, _default(ServerConfig, "bind_address"))
        mbind = _coerce(obs.get("metrics_bind_address"), str, bind)
        if not enabled or port is None or port != mport or bind is None or mbind is None:
            return
        if bind == mbind or bind in _WILDCARDS or mbind in _WILDCARDS:
            path: KeyPath = ("observability", "metrics_port")
            if path not in self.doc.lines:
                path = ("server", "port")
            self.add(
                path,
                f"server.port and observability.metrics_port are both {port}; each listener needs its own",
            )

    def bind_addresses(self) -> None:
        """A host name the listener could not bind (it does not resolve) fails `serve`:
        `check` says so first. A port in use is only known when binding (`serve`)."""
        server, obs = self.section("server"), self.section("observability")
        for section, key in ((server, "bind_address"), (obs, "metrics_bind_address")):
            value = section.get(key)
            if not isinstance(value, str) or not value or _is_ip(value):
                continue
            try:
                check_bind_address(value)
            except ValueError:
                continue  # the schema reports it
            try:
                socket.getaddrinfo(value, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except (OSError, UnicodeError) as e:
                where = "server" if section is server else "observability"
                self.add((where, key), f"'{value}' does not resolve to an address to bind ({e})")

    # ------------------------------------------------------------------ files
    def resolve(self, value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(self.base_dir, value)

    def readable(self, path: KeyPath, value: object) -> str | None:
        """The resolved file name if it can be read, else None after reporting why."""
        if not isinstance(value, str):
            return None
        name = self.resolve(value)
        shown = value if name == value else f"{value} (resolved to {name})"
        try:
            read_bounded(name, MAX_PEM_BYTES)
        except OSError as e:
            self.add(path, f"cannot read {shown}: {reason(e)}")
            return None
        return name

    def tls(self) -> None:
        tls = self.section("server", "tls")
        cert = self.readable(("server", "tls", "cert_path"), tls.get("cert_path"))
        key = self.readable(("server", "tls", "key_path"), tls.get("key_path"))
        if cert is None or key is None:
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_verify_locations(cafile=cert)
        except ssl.SSLError:
            self.add(("server", "tls", "cert_path"), f"no PEM certificate in {tls['cert_path']}")
            return
        asked: list[bool] = []

        def password() -> bytes:
            asked.append(True)
            return b""

        try:
            ctx.load_cert_chain(cert, key, password=password)
        except (ssl.SSLError, ValueError) as e:
            reason = getattr(e, "reason", None) or str(e)
            if "KEY_VALUES_MISMATCH" in reason:
                self.add(
                    ("server", "tls", "key_path"), "private key does not match the certificate in cert_path"
                )
            elif "TOO_SMALL" in reason or "TOO_WEAK" in reason:
                self.add(("server", "tls", "cert_path"), f"certificate rejected by OpenSSL: {reason}")
            elif asked:
                self.add(
                    ("server", "tls", "key_path"), "private key is encrypted; apigate needs it unencrypted"
                )
            else:
                self.add(
                    ("server", "tls", "key_path"),
                    f"no usable PEM private key in {tls['key_path']} ({reason})",
                )

    def upstream_cas(self) -> None:
        for i, upstream in self.items("upstreams"):
            path: KeyPath = ("upstreams", i, "ca_path")
            name = self.readable(path, upstream.get("ca_path"))
            if name is not None:
                try:
                    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=name)
                except ssl.SSLError:
                    self.add(path, f"no PEM certificate in {upstream['ca_path']}")

    # ------------------------------------------------------------------ auth
    def auth(self) -> None:
        auth = self.data.get("auth")
        if not isinstance(auth, dict):
            for i, route in self.items("routes"):
                if _coerce(route.get("auth_required"), bool, False):
                    self.add(
                        ("routes", i, "auth_required"), "true, but there is no auth: section to verify tokens"
                    )
            return
        for i, route in self.items("routes"):
            scopes = route.get("required_scopes")
            if isinstance(scopes, list) and scopes and not _coerce(route.get("auth_required"), bool, False):
                self.add(("routes", i, "required_scopes"), "needs auth_required: true on the route")
        fmt = _coerce(auth.get("token_format"), _annotation(AuthConfig, "token_format"), "jwt")
        alg = _coerce(auth.get("jwt_algorithm"), _annotation(AuthConfig, "jwt_algorithm"), "HS256")
        if fmt != "jwt" or alg is None:
            return
        has_secret = isinstance(auth.get("jwt_secret"), str) and auth["jwt_secret"]
        if alg.startswith("HS"):
            if not has_secret:
                self.add(("auth", "jwt_secret"), f"required (and not empty) when jwt_algorithm is {alg}")
                return
            from apigate.config.jwt_keys import hmac_secret_problem

            problem = hmac_secret_problem(auth["jwt_secret"])
            if problem:
                self.add(("auth", "jwt_secret"), problem)
            return
        if has_secret:
            self.add(
                ("auth", "jwt_secret"), f"only used with HS* algorithms; {alg} verifies with a public key"
            )
        has_key = isinstance(auth.get("jwt_public_key_path"), str) and auth["jwt_public_key_path"]
        has_jwks = isinstance(auth.get("jwks_url"), str) and auth["jwks_url"]
        if not has_key and not has_jwks:
            where: KeyPath = ("auth", "jwt_algorithm") if "jwt_algorithm" in auth else ("auth",)
            self.add(where, f"{alg} needs jwt_public_key_path or jwks_url")
        if has_key and has_jwks:
            self.add(("auth", "jwks_url"), "give jwt_public_key_path or jwks_url, not both")
        if has_key:
            path: KeyPath = ("auth", "jwt_public_key_path")
            name = self.readable(path, auth["jwt_public_key_path"])
            if name is not None:
                from apigate.config.jwt_keys import load_public_key

                try:
                    load_public_key(read_bounded(name, MAX_PEM_BYTES), alg)
                except OSError as e:
                    self.add(path, f"cannot read {auth['jwt_public_key_path']}: {reason(e)}")
                except ValueError as e:
                    self.add(path, f"{e} ({auth['jwt_public_key_path']})")
