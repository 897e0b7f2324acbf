"""The built-in demo upstream that `apigate demo` (and `make run`) puts behind the gateway.

`from apigate.demo import DemoUpstream, start_demo_upstream` works; the submodule is imported
lazily so that `python -m apigate.demo.upstream` runs it without a double import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apigate.demo.upstream import USERS, DemoUpstream, main, start_demo_upstream

__all__ = ["USERS", "DemoUpstream", "main", "start_demo_upstream"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("apigate.demo.upstream"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
