"""Live progress on stderr: a rich panel on a terminal, one plain line per second otherwise.

Each completed second shows the elapsed time, that second's target and achieved req/s
(requests due vs requests completed in it), its errors, and the p99 latency of the whole
run so far. stdout is left to the summary, so `apigate loadtest ... > summary.txt` works.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from apigate.loadtest.schedule import Profile


class Progress:
    def __init__(self, profile: Profile, workers: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.duration = profile.duration
        self.errors = 0
        self.done = 0
        self.live: Any = None
        self.last = "starting"
        self.row = ("-", "-", "-", "-")
        head = f"{profile.description}, {workers} worker{'s' if workers != 1 else ''}"
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.console = Console(file=self.stream)
            self.console.print(f"[bold]apigate loadtest[/bold]: {head}")
            self.live = Live(
                self._render(0.0, 0), console=self.console, refresh_per_second=4, transient=False
            )
            self.live.start()
        else:
            print(f"apigate loadtest: {head}", file=self.stream, flush=True)

    def second(self, sec: int, target: int, achieved: int, errors: int, p99_ms: float) -> None:
        self.done += achieved
        self.errors += errors
        self.last = (
            f"t={sec + 1:>4}s  target {target:>7} req/s  achieved {achieved:>7} req/s  "
            f"errors {errors:>6} ({self.errors} total)  p99 so far {p99_ms:9.3f} ms"
        )
        self.row = (f"{target}", f"{achieved}", f"{errors} ({self.errors} total)", f"{p99_ms:.3f} ms")
        if self.live is None:
            print(self.last, file=self.stream, flush=True)

    def running(self, elapsed: float, sent: int) -> None:
        if self.live is not None:
            self.live.update(self._render(elapsed, sent))

    def _render(self, elapsed: float, sent: int) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(box=None, padding=(0, 2))
        for name in ("elapsed", "", "target req/s", "achieved req/s", "errors", "p99 so far"):
            table.add_column(name, justify="right")
        shown = min(max(elapsed, 0.0), self.duration)
        table.add_row(
            f"{max(elapsed, 0.0):.1f}s / {self.duration:g}s",
            ProgressBar(total=self.duration, completed=shown, width=24),
            *self.row,
        )
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
