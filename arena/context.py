"""``Context``: what every plugin verb receives."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.data import Splits, load_splits
from arena.errors import ArenaError
from arena.models import create_model
from arena.progress import Reporter, silent
from arena.protocols import Protocol


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


@dataclass
class Context:
    protocol: Protocol
    seed: int = 0
    device: torch.device = field(default_factory=default_device)
    progress: Reporter = silent
    _splits: Splits | None = None
    # Supplies the owner's trained clean model (a match passes its cached one); without
    # it, ``clean_model`` trains one. Model-dependent keys (frontier stitching) need it.
    clean_provider: Callable[[], nn.Module] | None = None
    # What every attacker knows of the victim (Kerckhoffs): the scheme that marked it, as
    # configured, and the owner's public verification key file. Set by a match; claim
    # attacks (forgery, piracy) build on them. Never the marking key.
    victim_scheme: Any = None  # a Defense
    victim_vk: Path | None = None

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.protocol)
        return self._splits

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
        """The owner's trained clean model of this protocol and seed."""
        if self.clean_provider is None:
            from arena.clean import train_clean  # the clean model's trainer builds on Context

            model = self.owner_model()
            train_clean(model, self)
            self.clean_provider = lambda: model
        return self.clean_provider()

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
