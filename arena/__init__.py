"""Watermark Arena: DNN watermarks against removal, forgery, piracy and evasion attacks.

The stable surface a plugin author imports from (``from arena import Attack, Context,
register_attack, train``) is listed in ``SURFACE``; each name loads its layer only when
first used, so ``import arena`` stays cheap. The layers, lowest first: ``arena.util``,
``arena.core`` (the plugin SDK), ``arena.storage``, ``arena.ownership``, ``arena.eval``,
``arena.report``, ``arena.cli`` (see ``ARCHITECTURE.md``). The module paths of release
0.1 (``arena.plugin``, ``arena.keys``, ...) still import, with a DeprecationWarning, for
one release (``arena._legacy``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# bfloat16 on a CPU with AMX: oneDNN's AMX convolutions (torch 2.14) gave non-finite weight
# gradients on ResNet's stride-2 convolutions within 30 steps on smoke (the model then
# answered 8.5% of the test split; AVX-512 bfloat16 kernels train it to 89%). The cap must
# be set before torch first runs a convolution, so it is set here, when the arena is
# imported first (the `arena` command). A process that imported torch before gets
# a clear error from `train` instead (README, "Reproducibility").
if os.environ.get("ARENA_PRECISION", "").strip().lower() == "bf16" and "torch" not in sys.modules:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

from arena import _legacy  # noqa: E402
from arena.util.version import __version__

# Public name -> the module that defines it.
SURFACE = {
    # plugin bases and what their verbs receive and return
    "Plugin": "arena.core.plugin",
    "Defense": "arena.core.plugin",
    "Attack": "arena.core.plugin",
    "RemovalAttack": "arena.core.plugin",
    "ClaimAttack": "arena.core.plugin",
    "QueryAttack": "arena.core.plugin",
    "ThreatModel": "arena.core.plugin",
    "AttackOutcome": "arena.core.plugin",
    "ClaimAttempt": "arena.core.plugin",
    "QueryFilter": "arena.core.plugin",
    "Requirements": "arena.core.plugin",
    "Context": "arena.core.context",
    "Victim": "arena.core.context",
    "derive_seed": "arena.core.context",
    # keys
    "Key": "arena.core.keys",
    "TriggerKey": "arena.core.keys",
    "VerificationKey": "arena.core.keys",
    "abstract_images": "arena.core.keys",
    "commit": "arena.core.keys",
    # registration and parameters
    "register_attack": "arena.core.registry",
    "register_defense": "arena.core.registry",
    "NoParams": "arena.core.params",
    "param": "arena.core.params",
    # data, models, training, statistics
    "Protocol": "arena.core.protocols",
    "get_protocol": "arena.core.protocols",
    "Split": "arena.core.data",
    "Splits": "arena.core.data",
    "to_model_input": "arena.core.data",
    "find_layer": "arena.core.models",
    "reinitialize_head": "arena.core.models",
    "train": "arena.core.training",
    "TrainSettings": "arena.core.training",
    "ExtraLoss": "arena.core.training",
    "predict": "arena.core.training",
    "predict_logits": "arena.core.training",
    "accuracy": "arena.core.training",
    "Evidence": "arena.core.stats",
    "art_classifier": "arena.core.estimators",
    "ArenaError": "arena.util.errors",
    "KeyTamperedError": "arena.util.errors",
}

__all__ = ["__version__", *SURFACE]

_legacy.install()


def __getattr__(name: str) -> Any:
    module = SURFACE.get(name)
    if module is None:
        raise AttributeError(f"module 'arena' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from arena.core.context import Context, Victim, derive_seed  # noqa: F401
    from arena.core.keys import Key, TriggerKey, VerificationKey  # noqa: F401
    from arena.core.plugin import Attack, AttackOutcome, ClaimAttempt, Defense  # noqa: F401
    from arena.core.registry import register_attack, register_defense  # noqa: F401
    from arena.core.training import TrainSettings, accuracy, predict, train  # noqa: F401
