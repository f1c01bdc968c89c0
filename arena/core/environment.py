"""What a result was computed with, and the process settings that make a rerun bit-identical.

Two runs of the same match give the same weights to the bit when they share the locked
package versions (``requirements.lock``), the device kind, the intra-op thread count and
the CPU capability torch dispatches to (``scripts/determinism_check.py`` measures it; the
README's "Reproducibility" section has the figures). ``environment()`` records those facts
in every match record; ``apply_deterministic_defaults()`` fixes the ones a process can fix.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

from arena.util.errors import ArenaError

THREADS_VARIABLE = "ARENA_THREADS"


# The intra-op thread count of the arena command, unless ARENA_THREADS says otherwise. A
# fixed number, not "every core", so that machines with different core counts train the
# same weights; one thread also trained smoke and mnist5k fastest on a 2-core CPU.
DEFAULT_THREADS = 1


# cuBLAS needs a fixed workspace for deterministic matrix products (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


_PACKAGES = {
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "scipy": "scipy",
    "art": "adversarial-robustness-toolbox",
}


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device and the CPU settings that decide a run's bits.

    ``device`` is the one the run used; without it, CUDA when available, else the CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: _version(package) for name, package in _PACKAGES.items()},
        "device_kind": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    return facts


def threads_setting() -> int:
    """The thread count asked for: ``ARENA_THREADS`` when set, else ``DEFAULT_THREADS``."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ArenaError(f"{THREADS_VARIABLE} must be a whole number >= 1, got {value!r}")
    return int(value)


def apply_deterministic_defaults(threads: int | None = None) -> int:
    """Fix what a process can fix for bit-identical reruns; returns the thread count set.

    ``threads`` defaults to ``threads_setting()``. Deterministic algorithms only warn
    where an operation has no deterministic implementation, so nothing that ran before
    fails now. Process-wide: the ``arena`` command calls it, a library caller chooses.
    """
    threads = threads_setting() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        # Read when cuBLAS first starts; an explicit setting of the user's wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    return threads


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
