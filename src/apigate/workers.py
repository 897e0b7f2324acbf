"""`server.workers: N`: N processes share the listening port with SO_REUSEPORT.

The parent only supervises: it forwards SIGTERM/SIGINT to the workers, restarts a
worker that dies unexpectedly (not one that fails within its first second, which is a
configuration or bind problem, not a crash), and exits when all workers have exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

RESTART_MIN_UPTIME_S = 1.0
RELOADED_ENV = "APIGATE_CONFIG_RELOADED"  # set once the supervisor passed on a SIGHUP


def run_workers(count: int, worker: Callable[[], int]) -> int:
    children: dict[int, float] = {}
    index_of: dict[int, int] = {}  # pid -> worker index, reused by a restarted worker
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            # Per-worker resources keyed by index survive a restart: the log file
            # `<path>.<index>` and the log spool (logs/pipeline.py).
            os.environ["APIGATE_WORKER_INDEX"] = str(index)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            code = 1
            try:
                code = worker()
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = time.monotonic()
        index_of[pid] = index

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def on_hangup(_signum: int, _frame: object) -> None:
        # A reload: every worker re-reads the configuration itself (server.py, reload), and
        # a worker started from now on (a restart) reads the file rather than the parent's copy.
        os.environ[RELOADED_ENV] = "1"
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    for i in range(count):
        spawn(i)
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        index = index_of.pop(pid, 0)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            if code not in (0, -signal.SIGTERM):
                exit_code = code if code > 0 else 1
            continue
        if time.monotonic() - started < RESTART_MIN_UPTIME_S:
            # Failing at start-up (port taken, bad TLS file): restarting would only spin.
            exit_code = code if code > 0 else 1
            on_signal(signal.SIGTERM, None)
            continue
        print(f"apigate: worker {pid} exited with {code}; restarting", file=sys.stderr)
        spawn(index)
    return exit_code
