"""Finding a plugin's class from its configuration (`plugins[].module`, `path`).

Shared by the configuration check (`apigate check` imports every plugin and validates its
`config:` with the class's own `Config` model, so a mistake there is reported with file,
line and key path like any other) and by the plugin loader (apigate/plugins).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from pydantic import BaseModel


class PluginImportError(Exception):
    """The module or class named by `plugins[].module` cannot be loaded (one line, no traceback)."""


def import_plugin(module: str, path: str | None = None) -> type[Any]:
    """The class `package.module:ClassName` names; `path` goes first on sys.path."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    mod_name, _, cls_name = module.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise PluginImportError(f"cannot import '{mod_name}': {e}") from None
    except Exception as e:  # the plugin's own module failed while importing
        raise PluginImportError(f"importing '{mod_name}' failed: {e!r}"[:300]) from None
    cls = getattr(mod, cls_name, None)
    if not isinstance(cls, type):
        raise PluginImportError(f"'{mod_name}' has no class '{cls_name}'")
    return cls


def config_model(cls: type[Any]) -> type[BaseModel] | None:
    """The plugin's `Config` model (a pydantic BaseModel subclass), if it declares one."""
    model = getattr(cls, "Config", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
