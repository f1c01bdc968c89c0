"""What a result was computed with, and the process settings that make a rerun bit-identical.

Two runs of the same match give the same weights to the bit when they share the locked
package versions (``requirements.lock``), the device kind, the intra-op thread count and
the CPU capability torch dispatches to (``scripts/determinism_check.py`` measures it; the
README's "Reproducibility" section has the figures). ``environment()`` records those facts
in every match record; ``apply_deterministic_defaults()`` fixes the ones a process can fix.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Literal

import torch

from arena.util.errors import ArenaError

THREADS_VARIABLE = "ARENA_THREADS"
PRECISION_VARIABLE = "ARENA_PRECISION"

# What training and evaluation compute in. "fp32" everywhere; "bf16": bfloat16 autocast
# (weights and optimizer stay float32) with channels-last tensors; "auto", the default:
# bf16 on a CUDA device that supports it, fp32 on the CPU (where bfloat16 is fast only on
# CPUs with native support, and emulated, much slower, elsewhere). Like the thread count,
# the precision decides a run's bits and is recorded with every result.
Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


# The intra-op thread count of the arena command, unless ARENA_THREADS says otherwise. A
# fixed number, not "every core", so that machines with different core counts train the
# same weights. Two: on the 2-core CPU the project measures on, ResNet-18 on mnist5k trains
# 1.8 times as fast as on one thread (612-633 against 333-349 images/s); the mnist5k v2
# leaderboard is computed at two (v1's was at one). The tests run one thread per worker.
DEFAULT_THREADS = 2


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
        "precision": precision(device),
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


def precision_setting() -> str:
    """The precision asked for: ``ARENA_PRECISION`` when set, else "auto"."""
    value = os.environ.get(PRECISION_VARIABLE, "").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ArenaError(
            f"{PRECISION_VARIABLE} must be one of {', '.join(PRECISIONS)}, got {value!r}"
        )
    return value


def precision(device: torch.device | str) -> Precision:
    """The precision training and evaluation use on ``device`` (``precision_setting``)."""
    device = torch.device(device)
    setting = precision_setting()
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Forward passes in ``device``'s precision: bfloat16 autocast, or nothing for fp32."""
    if precision(device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def layout(model: torch.nn.Module, device: torch.device) -> Iterator[bool]:
    """``model`` in the memory layout of ``device``'s precision while inside; yields
    whether inputs should be channels-last too. bf16 convolutions run faster channels-last;
    the model returns to the ordinary layout after, so saved weights never depend on it."""
    if precision(device) == "fp32":
        yield False
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        model.to(memory_format=torch.contiguous_format)


def apply_deterministic_defaults(threads: int | None = None) -> int:
    """Fix what a process can fix for bit-identical reruns; returns the thread count set.

    ``threads`` defaults to ``threads_setting()``. Deterministic algorithms only warn
    where an operation has no deterministic implementation, so nothing that ran before
    fails now. Process-wide: the ``arena`` command calls it, a library caller chooses.
    """
    threads = threads_setting() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    precision_setting()  # a bad ARENA_PRECISION is refused before any work
    torch.set_num_threads(threads)
    _deterministic_algorithms()
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


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, without its import of
    the compiler's configuration (``torch._inductor.config``: a second of every command's
    start) while no compiler is loaded: the arena compiles nothing, and the setting it
    needs is the one torch keeps itself. Once the compiler is loaded, or in a torch that
    keeps the setting elsewhere, the public call does both."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
