"""`apigate reload --pid PID`: ask a running gateway to re-read its configuration.

It sends SIGHUP, as `kill -HUP` would: to the supervisor under `server.workers` (which
passes it to every worker) or to the single process. The gateway logs the outcome
(`config_reloaded` with the new config's hash, or every error and `config_reload_failed`)
and counts it in `config_reloads_total{result}`; an invalid file leaves the old
configuration serving. `POST /admin/reload` on the metrics port (loopback only) does the
same and answers with the outcome.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "reload",
        help="reload a running gateway's configuration (SIGHUP)",
        description="Send SIGHUP to a running gateway: it re-reads its configuration file.",
    )
    p.add_argument("--pid", type=int, required=True, help="process id of `apigate serve`")
    p.set_defaults(ops=run)


def run(args: argparse.Namespace) -> int:
    pid: int = args.pid
    if pid <= 0:
        print(f"apigate reload: --pid must be a process id, not {pid}", file=sys.stderr)
        return 2
    try:
        # SIGHUP ends most other programs: make sure it is a gateway (where /proc exists).
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            print(f"apigate reload: no process {pid}", file=sys.stderr)
            return 1
    except OSError:
        pass
    else:
        if b"apigate" not in cmdline:
            print(f"apigate reload: process {pid} is not apigate; not signalled", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"apigate reload: no process {pid}", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"apigate reload: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    print(f"apigate reload: SIGHUP sent to {pid}; the gateway logs config_reloaded or config_reload_failed")
    return 0
