"""The compiled hot path: mypyc builds of the data-plane modules, or their Python source.

The request path (listener, upstream client, router, filter chain, proxy) is ordinary typed
Python. `make install` compiles these modules with mypyc (scripts/build_native.py) into
C extensions next to their sources, which roughly halves the gateway's CPU per request
(bench/README.md). The source stays the single definition: the extensions are derived
from it and are only used while they are at least as new as every source file.

Python's import system prefers an extension over a `.py` of the same name, so a stale
build would silently run old code. `select()` therefore decides once, when `apigate` is
first imported, for the whole set: all compiled and fresh, or all from source (compiled
modules call each other's classes as C structs, so they cannot be mixed with
interpreted ones). `APIGATE_PURE=1` forces the source build.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

HOT_MODULES = (
    "apigate.http.headers",
    "apigate.http.body",
    "apigate.http.server",
    "apigate.http.client",
    "apigate.gateway.router",
    "apigate.gateway.paths",
    "apigate.gateway.filters",
    "apigate.gateway.correlation",
    "apigate.gateway.proxy",
    "apigate.gateway.app",
    "apigate.logs.filter",  # its on_complete runs for every request
    "apigate.logs.access",  # the access event, built for every logged request
    # Traffic features (docs/TRAFFIC.md): on the request path of every route that has them.
    "apigate.gateway.clientip",
    "apigate.iprules.filter",
    "apigate.cors.filter",
    "apigate.transforms.filter",
    # The full stack's filters (issue 18): cached JWT, the rate limiter and its Redis client,
    # metrics, and the log pipeline's intake and pump.
    "apigate.auth.filter",
    "apigate.auth.cache",
    "apigate.ratelimit.filter",
    "apigate.ratelimit.keys",
    "apigate.ratelimit.redis",
    "apigate.ratelimit.leases",
    "apigate.redis.client",
    "apigate.redis.resp",
    "apigate.telemetry.filter",
    "apigate.logs.pipeline",
    "apigate.logs.record",
    "apigate.logs.sampling",
)
GROUP = "apigate_native"  # mypyc's shared runtime library: `apigate_native__mypyc*.so` in src/

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_path(module: str) -> Path:
    return _PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(module: str) -> Path | None:
    base = source_path(module).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def stale_modules() -> list[str]:
    """Modules without an extension, or whose source changed after it was built."""
    out = []
    for module in HOT_MODULES:
        ext = extension_path(module)
        if ext is None or ext.stat().st_mtime < source_path(module).stat().st_mtime:
            out.append(module)
    return out


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the hot modules from their `.py` even where an extension sits beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def select() -> bool:
    """True when the compiled build is used; called once from `apigate/__init__.py`."""
    built = [m for m in HOT_MODULES if extension_path(m) is not None]
    if not built:
        return False  # never compiled (no C compiler, or not installed by make): plain Python
    stale = stale_modules()
    if os.environ.get("APIGATE_PURE", "") not in ("", "0") or stale:
        if stale and os.environ.get("APIGATE_PURE", "") in ("", "0"):
            sys.stderr.write(
                f"apigate: the compiled build is older than {stale[0]} (and {len(stale) - 1} more);"
                " running from source. `make install` rebuilds it.\n"
            )
        sys.meta_path.insert(0, _SourceFirst())
        return False
    return True
