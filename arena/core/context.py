"""``Context``: what every plugin verb receives."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.core.data import Split, Splits, load_splits
from arena.core.models import create_model
from arena.core.protocols import Protocol
from arena.util.errors import ArenaError
from arena.util.progress import Reporter, silent


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_seed(seed: int) -> None:
    """A seed every generator, the results database and the cache take: [0, 2^63)."""
    if not 0 <= seed < 2**63:
        raise ArenaError(f"--seed must lie in [0, 2^63), got {seed}")


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose ("keygen", "attack:rtal", ...) derived from the match seed.

    Each phase gets its own stream, so a phase's randomness does not depend on which
    other phases ran before it (cached phases are skipped).
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _moved(old: str, new: str) -> None:
    warnings.warn(
        f"Context.{old} moved to Context.{new}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class Victim:
    """What every attacker knows of the model it attacks (Kerckhoffs): the scheme that
    marked it, as configured, the owner's public verification key file, and the
    attacker's own share of the data. Never the marking key. A match hands it to the
    attack on ``Context.victim``; claim attacks (forgery, piracy) build on it."""

    scheme: Any  # the Defense that marked the model (typed loosely: plugins sit above)
    vk: Path | None = None
    data: Split | None = None


@dataclass(frozen=True)
class Context:
    """What every plugin verb receives: an immutable value. It never trains anything;
    derive a changed one with ``dataclasses.replace``.

    ``data`` overrides the protocol's splits (an attacker who trains as if it owned its
    share of the data); ``clean`` supplies the owner's trained clean model, which
    model-dependent keys (frontier stitching) need; ``victim`` is set for attacks only.
    """

    protocol: Protocol
    seed: int = 0
    device: torch.device = field(default_factory=default_device)
    progress: Reporter = silent
    data: Splits | None = None
    clean: Callable[[], nn.Module] | None = None
    victim: Victim | None = None

    # Release 0.1's attack-only fields, for one release: ``ctx.victim`` holds them now.
    @property
    def victim_scheme(self) -> Any:
        _moved("victim_scheme", "victim.scheme")
        return None if self.victim is None else self.victim.scheme

    @property
    def victim_vk(self) -> Path | None:
        _moved("victim_vk", "victim.vk")
        return None if self.victim is None else self.victim.vk

    @property
    def splits(self) -> Splits:
        return self.data if self.data is not None else load_splits(self.protocol)

    @property
    def num_classes(self) -> int:
        return self.protocol.num_classes

    @property
    def null_p(self) -> float:
        """Chance agreement of an unmarked model with a key's labels: 1/|L|.

        Exact for keys whose labels are drawn uniformly and independently of any model.
        """
        return 1.0 / self.protocol.num_classes

    def rng(self, purpose: str) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, purpose))

    def generator(self, purpose: str) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, purpose))
        return generator

    def owner_model(self) -> nn.Module:
        """The owner's initial model. The clean model and a from-scratch marked model both
        start here and see the owner's data in the same order (``owner_generator``), so the
        difference between them is the mark alone."""
        return self.new_model("owner-init")

    def clean_model(self) -> nn.Module:
        """The owner's trained clean model of this protocol and seed, as supplied."""
        if self.clean is None:
            raise ArenaError(
                "this context has no clean model: whoever builds it supplies one "
                "(Context(clean=...)); a match and the vendor's mark do"
            )
        return self.clean()

    def owner_generator(self) -> torch.Generator:
        """The order of the owner's training data."""
        return self.generator("owner-data")

    def new_model(self, purpose: str = "init") -> nn.Module:
        """A freshly initialised protocol model, seeded for ``purpose``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, purpose))
            model = create_model(
                self.protocol.model,
                num_classes=self.protocol.num_classes,
                channels=self.protocol.channels,
                image_size=self.protocol.image_size,
            )
        return model.to(self.device)
