"""`apigate serve | check | demo | token | session` (also `python -m apigate`).

Exit codes: 0 success, 2 configuration errors (every error printed, with file, line and
key path), 1 anything else. No traceback reaches the terminal for a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import uvloop

from apigate import NATIVE, __version__
from apigate.auth.cli import add_commands as add_auth_commands
from apigate.config import ConfigError, load_config, summarize
from apigate.config.schema import Config
from apigate.loadtest.cli import add_command as add_loadtest_command
from apigate.logs import events
from apigate.ops.cli import add_commands as add_ops_commands
from apigate.ops.reload import add_command as add_reload_command

EXIT_CONFIG = 2
DEFAULT_DEMO_CONFIG = "examples/quickstart.yaml"


def _add_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("APIGATE_CONFIG", default),
        help="configuration file (default: $APIGATE_CONFIG)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apigate", description="apigate: an API gateway (routing, auth, rate limits, metrics, logs)."
    )
    build = "compiled data plane" if NATIVE else "pure Python"
    parser.add_argument("--version", action="version", version=f"apigate {__version__} ({build})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM/SIGINT.")
    _add_config(p)
    p = sub.add_parser(
        "check",
        help="validate a configuration",
        description="Validate a configuration: print a one-line summary, or every error (exit 2).",
    )
    _add_config(p)
    p = sub.add_parser(
        "demo",
        help="run the gateway in front of a built-in demo upstream",
        description="Start the demo upstream and the gateway with the quickstart configuration.",
    )
    _add_config(p, DEFAULT_DEMO_CONFIG)
    p.add_argument("--upstream-port", type=int, default=8081, help="demo upstream port (default 8081)")
    add_auth_commands(sub, _add_config)  # token, session create|revoke
    add_loadtest_command(sub)  # loadtest: sets args.loadtest(args), needs no configuration
    add_ops_commands(sub)  # backup, restore, diagnose, capacity: ops(args), no config file
    add_reload_command(sub)  # reload --pid: ops(args)
    return parser


def _load(path: str | None) -> Config | None:
    if not path:
        print("apigate: no configuration given (use --config FILE or set APIGATE_CONFIG)", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        print(f"apigate: {len(e.errors)} configuration error(s) in {path}", file=sys.stderr)
        return None


def cmd_check(path: str | None) -> int:
    cfg = _load(path)
    if cfg is None:
        return EXIT_CONFIG
    print(summarize(cfg))
    if cfg.observability.tracing.enabled:
        from apigate.telemetry.tracing import describe  # where spans go, and in which protocol

        print(describe(cfg.observability.tracing))
    from apigate.config.checks import config_warnings

    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_serve(path: str | None) -> int:
    cfg = _load(path)
    if cfg is None:
        return EXIT_CONFIG
    events.configure(cfg.logging.level, cfg.logging.service, cfg.logging.format)
    events.emit("INFO", "config", "config_loaded", "Configuration loaded", path=path, summary=summarize(cfg))
    from apigate.server import serve

    workers = cfg.server.workers
    if workers == 1:
        return _run(serve(cfg, config_path=path))
    from apigate.telemetry.metrics import multiprocess_dir
    from apigate.workers import run_workers

    with multiprocess_dir():  # one scrape sums the workers (telemetry/metrics.py)
        return run_workers(workers, lambda: _run(serve(cfg, reuse_port=True, config_path=path)))


def _run(coro: object) -> int:
    try:
        result: int = uvloop.run(coro)  # type: ignore[arg-type]
    except OSError as e:
        print(f"apigate: cannot start: {e.strerror or e}", file=sys.stderr)
        return 1
    return int(result)


def cmd_demo(path: str | None, upstream_port: int) -> int:
    cfg = _load(path)
    if cfg is None:
        return EXIT_CONFIG
    events.configure(cfg.logging.level, cfg.logging.service, cfg.logging.format)
    events.emit("INFO", "config", "config_loaded", "Configuration loaded", path=path, summary=summarize(cfg))
    return _run(_demo(cfg, upstream_port))


async def _demo(cfg: Config, upstream_port: int) -> int:
    import signal

    from apigate.demo.upstream import start_demo_upstream
    from apigate.server import Server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    upstream = await start_demo_upstream("127.0.0.1", upstream_port)
    server = Server(cfg)
    await server.start()
    s = cfg.server
    host = "127.0.0.1" if s.bind_address in ("0.0.0.0", "::") else s.bind_address
    base = f"{'https' if s.tls else 'http'}://{host}:{s.port}"
    obs = cfg.observability
    metrics_host = obs.metrics_bind_address or host
    metrics_host = "127.0.0.1" if metrics_host in ("0.0.0.0", "::") else metrics_host
    metrics = f"http://{metrics_host}:{obs.metrics_port}/metrics" if obs.metrics_enabled else "off"
    print(
        f"\napigate {__version__} demo\n"
        f"  gateway   {base}\n"
        f"  metrics   {metrics}\n"
        f"  health    {base}/health/ready\n"
        f"  upstream  http://127.0.0.1:{upstream_port}  (built-in demo service)\n"
        f"  routes    {', '.join(f'{r.id} {r.path}' for r in cfg.routes)}\n\n"
        f"  try:  curl -i {base}/api/users\n"
        f"        curl -i -X POST -d 'hello' {base}/api/echo/anything\n"
        f"{_demo_token_line(cfg, base)}\n"
        "Ctrl-C stops both.\n",
        flush=True,
    )
    await stop.wait()
    await server.shutdown()
    upstream.close()
    await upstream.wait_closed()
    return 0


def _demo_token_line(cfg: Config, base: str) -> str:
    """A curl line for an auth_required route, with a freshly minted demo token."""
    route = next((r for r in cfg.routes if r.auth_required and "{" in r.path and "*" not in r.path), None)
    if cfg.auth is None or route is None or not cfg.auth.jwt_secret:
        return ""
    from apigate.auth.jwt import mint

    path = route.path.split("{")[0] + "1"
    token = mint(cfg.auth, "alice", 3600)
    return (
        f"        curl -i {base}{path}                   # 401: needs a token\n"
        f"        curl -i -H 'Authorization: Bearer {token}' {base}{path}\n"
        f"        (a fresh token: .venv/bin/apigate token --config examples/quickstart.yaml --sub alice)\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "serve":
        return cmd_serve(args.config)
    if args.command == "demo":
        return cmd_demo(args.config, args.upstream_port)
    if args.command == "loadtest":
        return int(args.loadtest(args))
    if (ops := getattr(args, "ops", None)) is not None:
        return int(ops(args))
    run = getattr(args, "run", None)
    if run is not None:  # commands registered by packages: run(cfg, args)
        cfg = _load(args.config)
        return EXIT_CONFIG if cfg is None else int(run(cfg, args))
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
