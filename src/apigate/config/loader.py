"""Read a YAML file into a validated :class:`~apigate.config.schema.Config`, or explain why not.

A configuration mistake is found by a person at a terminal or in CI, often under
pressure (the guide's incident runbooks change config mid-incident). So loading is a
pipeline that never stops at the first problem and never lets an exception escape
other than :class:`ConfigError`, whose lines all read ``file:line key.path: message``:

1. read bytes, decode UTF-8 (``yamlpos``: YAML with the line of every key);
2. expand ``${VAR}`` / ``${VAR:-default}`` in string values (``envsubst``);
3. validate against the schema (``validation`` rephrases pydantic's errors);
4. cross-check keys against each other and the filesystem (``checks``);
5. raise one ConfigError with everything found, secrets scrubbed, or return the Config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import ValidationError

from apigate.config.checks import cross_check
from apigate.config.envsubst import expand_env
from apigate.config.errors import ConfigError, Problem, render
from apigate.config.files import MAX_CONFIG_BYTES, read_bounded, reason
from apigate.config.schema import Config
from apigate.config.validation import schema_problems
from apigate.config.yamlpos import parse_yaml

_SECTIONS = ", ".join(Config.model_fields)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and check the file at ``path``; relative paths inside resolve from its directory.

    ``env`` (default ``os.environ``) supplies ``${VAR}`` values. Raises ConfigError only.
    """
    name = os.fspath(path)
    try:
        raw = read_bounded(name, MAX_CONFIG_BYTES)
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {reason(e)}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        bad = raw[e.start : e.start + 1].hex()
        raise ConfigError([f"{name}:{line}: not valid UTF-8 (byte 0x{bad} at column {column})"]) from None
    return load_config_text(text, name, env, os.path.dirname(os.path.abspath(name)))


def load_config_text(
    text: str,
    filename: str = "<string>",
    env: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Config:
    """Load and check YAML ``text``; ``filename`` is only used in messages.

    Relative paths inside resolve from ``base_dir`` (default: the current directory).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    secrets: set[str] = set()
    try:
        return _load(text, environ, base_dir or os.getcwd(), secrets)
    except _Invalid as e:
        raise ConfigError(render(filename, e.problems, secrets)) from None
    except RecursionError:
        raise ConfigError([f"{filename}: the configuration is nested too deeply"]) from None
    except Exception as e:  # a bug of ours must still not become a traceback at the user
        message = f"internal error while checking the configuration ({type(e).__name__}); please report it"
        raise ConfigError(render(filename, [Problem(None, (), message)], secrets)) from e


class _Invalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__()
        self.problems = problems


def _load(text: str, env: Mapping[str, str], base_dir: str, secrets: set[str]) -> Config:
    doc = parse_yaml(text)
    if doc.fatal:
        raise _Invalid(doc.problems)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a single value"
        message = f"the top level must be a mapping of sections ({_SECTIONS}), not {kind}"
        raise _Invalid([*doc.problems, Problem(doc.line_of(()), (), message)])

    expansion = expand_env(data, doc, env)
    secrets |= expansion.secrets
    data = expansion.data
    later: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        later += schema_problems(e, data, doc)
    later += cross_check(data, doc, base_dir)
    # a value whose ${VAR} failed was left as written: do not also complain about its shape
    later = [p for p in later if p.path not in expansion.failed]
    problems = doc.problems + expansion.problems + later
    if problems or config is None:
        raise _Invalid(problems)
    return _resolve_paths(config, base_dir)


def _resolve_paths(cfg: Config, base_dir: str) -> Config:
    """Make file paths absolute from the config file's directory, as `checks` read them.

    Done once here so that `apigate check` and `apigate serve` agree whatever the working
    directory of the process (a systemd unit, a container entrypoint) happens to be.
    """

    def absolute(path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

    update: dict[str, object] = {}
    tls = cfg.server.tls
    if tls is not None:
        tls = tls.model_copy(
            update={"cert_path": absolute(tls.cert_path), "key_path": absolute(tls.key_path)}
        )
        update["server"] = cfg.server.model_copy(update={"tls": tls})
    update["upstreams"] = [
        u.model_copy(update={"ca_path": absolute(u.ca_path)}) if u.ca_path else u for u in cfg.upstreams
    ]
    if cfg.auth is not None and cfg.auth.jwt_public_key_path:
        update["auth"] = cfg.auth.model_copy(
            update={"jwt_public_key_path": absolute(cfg.auth.jwt_public_key_path)}
        )
    sinks = [
        s.model_copy(update={"file": s.file.model_copy(update={"path": absolute(s.file.path)})})
        if s.file is not None
        else s
        for s in cfg.logging.sinks
    ]
    update["plugins"] = [
        p.model_copy(update={"path": absolute(p.path)}) if p.path else p for p in cfg.plugins
    ]
    update["logging"] = cfg.logging.model_copy(
        update={"sinks": sinks, "spool_dir": absolute(cfg.logging.spool_dir)}
    )
    return cfg.model_copy(update=update)


def summarize(cfg: Config) -> str:
    """One line for ``apigate check``, e.g.

    ``ok: 3 routes, 1 upstream, sinks: stdout, elasticsearch; listening on 0.0.0.0:8443 (tls),
    metrics on :9090``
    """

    def count(n: int, word: str) -> str:
        return f"{n} {word}" if n == 1 else f"{n} {word}s"

    def hostport(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    sinks = [s.type for s in cfg.logging.sinks if s.enabled]
    server = cfg.server
    listen = hostport(server.bind_address, server.port) + (" (tls)" if server.tls is not None else "")
    obs = cfg.observability
    if not obs.metrics_enabled:
        metrics = "metrics off"
    elif obs.metrics_bind_address in (None, server.bind_address):
        metrics = f"metrics on :{obs.metrics_port}"
    else:
        metrics = f"metrics on {hostport(obs.metrics_bind_address, obs.metrics_port)}"
    return (
        f"ok: {count(len(cfg.routes), 'route')}, {count(len(cfg.upstreams), 'upstream')}, "
        f"sinks: {', '.join(sinks) or 'none'}; listening on {listen}, {metrics}"
    )
