"""`apigate loadtest` (and scripts/load-test.sh): the guide's §3.7 load tests, open loop.

Exit status: 0 when the criteria pass, 1 when they fail (including a run where nothing
could connect), 2 for bad arguments, 130 when interrupted by Ctrl-C (after the report of
what ran). Every problem is one line on stderr, never a traceback.

This module is imported by apigate's main CLI on every start, so it imports nothing heavy
at module level: the generator, rich and matplotlib load only when a test runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_URL = "http://127.0.0.1:8080/api/users"
DEFAULT_CONNECTIONS = 100
DEFAULT_P99_MS = 500.0  # guide §3.7: P99 latency < 500ms at target RPS
DEFAULT_MAX_ERROR_PCT = 0.1  # guide §3.7: error rate < 0.1%
DEFAULT_TIMEOUT = "10s"
PROG_ENV = "APIGATE_LOADTEST_PROG"  # scripts/load-test.sh shows its own name in usage lines


def add_command(sub: Any) -> None:
    """Register `loadtest` on cli.py's subparsers."""
    p = sub.add_parser(
        "loadtest",
        help="open-loop load test (the guide's §3.7 profiles and criteria)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_arguments(p)


DESCRIPTION = (
    "Send requests at a scheduled rate, whether or not earlier ones have finished (open loop), and judge "
    "the run by the guide's §3.7 criteria: p99 latency and error rate. Latency counts from the time each "
    "request was due, so a stalled server shows."
)
EPILOG = """profiles (guide §3.7):
  constant  --rps 5000 --duration 10m
  ramp      --rps-start 1000 --rps-max 50000 --ramp-up 5m      (lasts --ramp-up unless --duration)
  spike     --rps 5000 --spike-rps 25000 --spike-duration 2m    (centred in --duration, default 3x the spike)
durations: 30s, 10m, 1h, 1m30s, 250ms. Exit 0 PASS, 1 FAIL, 2 bad arguments, 130 interrupted.
Details: docs/LOAD_TESTING.md"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    def one_line_error(message: str) -> NoReturn:  # not argparse's usage block: one line, exit 2
        print(f"{_prog()}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    setattr(p, "error", one_line_error)  # noqa: B010 (mypy: assigning to a method)
    g = p.add_argument_group("profile (guide §3.7)")
    g.add_argument(
        "--rps", type=_rate, metavar="R", help="target requests per second (constant or spike base)"
    )
    g.add_argument("--duration", metavar="D", help="length of the run (default 60s; a ramp: --ramp-up)")
    g.add_argument("--rps-start", type=_rate, metavar="R", help="ramp: starting rate")
    g.add_argument("--rps-max", type=_rate, metavar="R", help="ramp: final rate")
    g.add_argument("--ramp-up", metavar="D", help="ramp: time to go from --rps-start to --rps-max")
    g.add_argument("--spike-rps", type=_rate, metavar="R", help="spike: the rate during the spike")
    g.add_argument("--spike-duration", metavar="D", help="spike: how long the spike lasts")
    g = p.add_argument_group("requests")
    g.add_argument(
        "--url",
        default=os.environ.get("APIGATE_LOADTEST_URL", DEFAULT_URL),
        help=f"target URL (default $APIGATE_LOADTEST_URL or {DEFAULT_URL})",
    )
    g.add_argument("--method", default="GET", help="HTTP method (default GET)")
    g.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="request header (repeatable)"
    )
    g.add_argument(
        "--header-file",
        metavar="FILE",
        help="headers sent in turn, one 'NAME: VALUE' per line: request k carries line k mod N",
    )
    body = g.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body")
    body.add_argument("--body-file", metavar="FILE", help="request body from a file")
    g.add_argument(
        "--connections",
        type=_positive_int,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"keep-alive connections in all (default {DEFAULT_CONNECTIONS}); "
        "a request due while all are busy waits for one",
    )
    g.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N", help="generator processes (default 1)"
    )
    g.add_argument(
        "--timeout", default=DEFAULT_TIMEOUT, metavar="D", help=f"per request (default {DEFAULT_TIMEOUT})"
    )
    g = p.add_argument_group("criteria and output")
    g.add_argument(
        "--p99-ms",
        type=_positive_float,
        default=DEFAULT_P99_MS,
        metavar="MS",
        help=f"pass when p99 < MS (default {DEFAULT_P99_MS:g})",
    )
    g.add_argument(
        "--max-error-rate",
        type=_percent,
        default=DEFAULT_MAX_ERROR_PCT,
        metavar="PCT",
        help=f"pass when errors < PCT %% of requests (default {DEFAULT_MAX_ERROR_PCT:g})",
    )
    g.add_argument("--report", metavar="FILE.json", help="write the JSON report")
    g.add_argument("--plot", metavar="FILE.png", help="draw target/achieved req/s and p99 over time")
    g.add_argument("--metrics", metavar="URL", help="the gateway's /metrics: its own view, before and after")
    p.set_defaults(loadtest=run)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


_positive_float = _rate


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _percent(text: str) -> float:
    value = _rate(text.strip().removesuffix("%").strip())
    if value > 100:
        raise argparse.ArgumentTypeError(f"a percentage is at most 100: {text!r}")
    return value


def _prog() -> str:
    return os.environ.get(PROG_ENV, "apigate loadtest")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"{_prog()}: error: {message}", file=sys.stderr)
    return code


def _check_writable(flag: str, path: str | None) -> str | None:
    if path is None:
        return None
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        return f"{flag} {path}: the directory {parent} does not exist"
    if Path(path).is_dir():
        return f"{flag} {path}: is a directory"
    if not os.access(parent, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        return f"{flag} {path}: not writable"
    return None


def run(args: argparse.Namespace) -> int:
    from apigate.loadtest.schedule import ScheduleError, build_profile, parse_duration
    from apigate.loadtest.target import TargetError, build_target

    try:
        durations = {
            k: None if getattr(args, k) is None else parse_duration(getattr(args, k))
            for k in ("duration", "ramp_up", "spike_duration", "timeout")
        }
        profile = build_profile(
            rps=args.rps,
            duration=durations["duration"],
            rps_start=args.rps_start,
            rps_max=args.rps_max,
            ramp_up=durations["ramp_up"],
            spike_rps=args.spike_rps,
            spike_duration=durations["spike_duration"],
        )
        body: bytes | None = None
        if args.body is not None:
            body = args.body.encode()
        elif args.body_file is not None:
            try:
                body = Path(args.body_file).read_bytes()
            except OSError as e:
                return _fail(f"--body-file {args.body_file}: {e.strerror or e}")
        rotating: list[str] | None = None
        if args.header_file is not None:
            try:
                text = Path(args.header_file).read_text(encoding="ascii")
            except OSError as e:
                return _fail(f"--header-file {args.header_file}: {e.strerror or e}")
            except UnicodeDecodeError:
                return _fail(f"--header-file {args.header_file}: must be ASCII")
            rotating = [line for line in text.splitlines() if line.strip()]
        target = build_target(args.url, args.method, args.header, body, rotating)
    except (ScheduleError, TargetError) as e:
        return _fail(str(e))
    for flag, path in (("--report", args.report), ("--plot", args.plot)):
        problem = _check_writable(flag, path)
        if problem:
            return _fail(problem)
    if args.connections < args.workers:
        return _fail(f"--connections {args.connections} must be at least --workers {args.workers}")
    timeout = durations["timeout"]
    assert timeout is not None
    return _execute(args, profile, target, timeout)


def _execute(args: argparse.Namespace, profile: Any, target: Any, timeout: float) -> int:
    import orjson

    from apigate.loadtest import report as reports
    from apigate.loadtest.runner import RunError
    from apigate.loadtest.runner import run as run_load
    from apigate.loadtest.scrape import ScrapeError, scrape, server_view

    before = None
    server: dict[str, Any] | None = None
    if args.metrics:
        try:
            before = scrape(args.metrics)
        except ScrapeError as e:
            return _fail(f"--metrics: {e}")
    try:
        result = run_load(profile, target, args.workers, args.connections, timeout)
    except RunError as e:
        return _fail(str(e), EXIT_FAIL)
    except KeyboardInterrupt:
        print(f"{_prog()}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.metrics and before is not None:
        try:
            server = server_view(args.metrics, before, scrape(args.metrics))
        except ScrapeError as e:
            server = {"url": args.metrics, "error": str(e)}
    doc = reports.build(result, args.p99_ms, args.max_error_rate, server)
    print(reports.summary(doc), flush=True)
    try:
        if args.report:
            Path(args.report).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        if args.plot:
            from apigate.loadtest.plot import plot

            plot(doc, args.plot)
    except OSError as e:
        return _fail(f"cannot write {e.filename}: {e.strerror or e}", EXIT_FAIL)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 0 if doc["criteria"]["passed"] else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    """scripts/load-test.sh's entry point: the same command under the script's name."""
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
