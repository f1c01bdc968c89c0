"""Layer 3, the model vendor's protocol: commitments opened, the ledger, public
verification, claims, keygen/register/mark/verify and model files.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# Release 0.1's ``arena.ownership`` module was split into ``vendor`` and ``modelfile``;
# its names still resolve here, with a DeprecationWarning, for one release.
_MOVED_TO = ("arena.ownership.vendor", "arena.ownership.modelfile", "arena.util.files")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    for home in _MOVED_TO:
        module = importlib.import_module(home)
        if hasattr(module, name):
            warnings.warn(
                f"arena.ownership.{name} moved to {home}.{name}; the old path goes in the "
                "next release",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(module, name)
    raise AttributeError(f"module 'arena.ownership' has no attribute {name!r}")
