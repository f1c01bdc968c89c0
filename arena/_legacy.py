"""The module paths of release 0.1 (``arena.plugin``, ``arena.store``, ...), kept importing
for one release after the layers moved them, with a DeprecationWarning that names the
new home. A third-party plugin written against 0.1 keeps working meanwhile.

Each old path is a module whose attributes are looked up, on use, in the modules that now
define them: the same objects, not copies.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# Old module -> the modules its names moved to, searched in order.
MOVED = {
    "arena.errors": ("arena.util.errors",),
    "arena.progress": ("arena.util.progress",),
    "arena.params": ("arena.core.params",),
    "arena.stats": ("arena.core.stats",),
    "arena.models": ("arena.core.models",),
    "arena.training": ("arena.core.training",),
    "arena.protocols": ("arena.core.protocols",),
    "arena.data": ("arena.core.data",),
    "arena.environment": ("arena.core.environment",),
    "arena.estimators": ("arena.core.estimators",),
    "arena.keys": ("arena.core.keys", "arena.util.jsonio", "arena.util.images"),
    "arena.plugin": ("arena.core.plugin", "arena.core.keys"),
    "arena.registry": ("arena.core.registry",),
    "arena.context": ("arena.core.context",),
    "arena.store": (
        "arena.storage.results",
        "arena.storage.artifacts",
        "arena.util.paths",
        "arena.util.files",
    ),
    "arena.clean": ("arena.storage.clean",),
    "arena.calibration": (
        "arena.eval.calibration",
        "arena.core.verify",
        "arena.storage.calibrations",
        "arena.storage.clean",
        "arena.report.calibration",
    ),
    "arena.ledger": ("arena.ownership.ledger",),
    "arena.public": ("arena.ownership.public",),
    "arena.claims": ("arena.ownership.claims",),
    "arena.match": ("arena.eval.match",),
    "arena.sweep": ("arena.eval.sweep",),
    "arena.leaderboard": ("arena.eval.leaderboard", "arena.report.leaderboard"),
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in MOVED:  # arena.ownership is a package now: its __init__ forwards
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _shim(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {', '.join(MOVED[module.__name__])}; "
            "import from there (or from arena); the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )


def _shim(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"Moved: see {', '.join(MOVED[name])}.")

    def lookup(attribute: str) -> Any:
        for home in MOVED[name]:
            found = importlib.import_module(home)
            if hasattr(found, attribute):
                return getattr(found, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    module.__getattr__ = lookup  # type: ignore[method-assign]
    return module


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
