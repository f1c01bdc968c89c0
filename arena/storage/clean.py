"""The owner's clean model: the protocol's training budget on the owner's split.

Trained once per protocol, architecture and seed and kept in the artifact cache; a
match's clean model, a pretrained scheme's starting point and calibration's reference
models are all this model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from arena.core.context import Context, default_device
from arena.core.environment import precision
from arena.core.models import check_model_name
from arena.core.protocols import Protocol, Recipe, parse_reference
from arena.core.training import Augment, TrainSettings, train
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import RECORD_FORMAT, CalibrationSnapshot, CalibrationStore
from arena.util.errors import ArenaError
from arena.util.progress import Reporter, silent
from arena.util.version import __version__

Role = Literal["reference", "foreign"]


def artifact_base(protocol: Protocol, seed: int, computed_in: str) -> dict[str, Any]:
    """What every artifact of a match depends on: the protocol, the seed, the code, and the
    precision it is computed in (``precision(device)``) when that is not float32 (a
    bfloat16 model is another model; float32 names stay what they were before bfloat16)."""
    base: dict[str, Any] = {"protocol": protocol.fingerprint, "seed": seed, "arena": __version__}
    if computed_in != "fp32":
        base["precision"] = computed_in
    return base


def clean_model(ctx: Context, cache: ArtifactCache) -> tuple[nn.Module, dict[str, Any], bool]:
    """The owner's clean model of ``ctx``'s protocol and seed, trained once and cached.

    Returns the model, its cache metadata and whether it came from the cache.
    """
    base = artifact_base(ctx.protocol, ctx.seed, precision(ctx.device))
    return cache.model(
        cache.folder("clean", base),
        build=ctx.owner_model,
        train=lambda model: train_clean(model, ctx),
        spec=base,
    )


def trained_clean(ctx: Context) -> nn.Module:
    """The owner's clean model of ``ctx``, trained now (no cache: the vendor's own run)."""
    model = ctx.owner_model()
    train_clean(model, ctx)
    return model


def train_clean(
    model: nn.Module,
    ctx: Context,
    settings: TrainSettings | None = None,
    augment: Augment | None = None,
    description: str = "clean model",
) -> dict[str, Any]:
    """Train a clean model on the owner's split: the protocol's budget and augmentation,
    unless ``settings`` or ``augment`` say otherwise (a reference model's recipe)."""
    splits = ctx.splits
    report = train(
        model,
        splits.owner.images,
        splits.owner.labels,
        settings or ctx.protocol.training,
        device=ctx.device,
        generator=ctx.owner_generator(),
        description=description,
        progress=ctx.progress,
        augment=ctx.protocol.augment if augment is None else augment,
    )
    return {"train_seconds": report.seconds, "steps": report.steps}


# Bounds on a calibration's size, far above any real one: checked before anything trains.
MAX_MODELS = 1_000


# Reference model i is trained with seed REFERENCE_SEED + i, foreign model i with
# FOREIGN_SEED + i: far from match seeds and from each other.
REFERENCE_SEED = 1_000_000


FOREIGN_SEED = 2_000_000


@dataclass(frozen=True)
class ReferenceModel:
    """One clean model of the protocol: an architecture, a training recipe and a seed."""

    index: int
    architecture: str
    recipe: Recipe
    role: Role

    @property
    def seed(self) -> int:
        return (REFERENCE_SEED if self.role == "reference" else FOREIGN_SEED) + self.index

    @property
    def name(self) -> str:
        return f"{self.architecture}@{self.recipe.name}"

    def context(self, protocol: Protocol, device: torch.device, progress: Reporter) -> Context:
        return Context(
            protocol=protocol.with_model(self.architecture),
            seed=self.seed,
            device=device,
            progress=progress,
        )

    def _folder(self, ctx: Context, cache: ArtifactCache, computed_in: str) -> Path:
        base = artifact_base(ctx.protocol, ctx.seed, computed_in)
        if self.recipe.name == "protocol":
            return cache.folder("clean", base)  # exactly a match's clean model
        return cache.folder("clean", {**base, "recipe": self.recipe.to_dict()})

    def load(
        self,
        protocol: Protocol,
        cache: ArtifactCache,
        device: torch.device,
        progress: Reporter = silent,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train it, or load it from the cache (the protocol's recipe: a match's clean model)."""
        ctx = self.context(protocol, device, progress)
        if self.recipe.name == "protocol":
            model, meta, _ = clean_model(ctx, cache)
            return model, meta
        computed_in = precision(ctx.device)
        base = artifact_base(ctx.protocol, ctx.seed, computed_in)
        model, meta, _ = cache.model(
            self._folder(ctx, cache, computed_in),
            build=ctx.owner_model,
            train=lambda model: _train_recipe(model, ctx, self.recipe),
            spec={**base, "recipe": self.recipe.to_dict()},
        )
        return model, meta

    def cached(
        self, protocol: Protocol, cache: ArtifactCache, device: torch.device, computed_in: str
    ) -> nn.Module:
        """Load the model its calibration trained in the precision ``computed_in`` from the
        cache; never train (a verifier does not train 20 models)."""
        ctx = self.context(protocol, device, silent)
        model = ctx.owner_model()
        if cache.load_model(self._folder(ctx, cache, computed_in), model) is None:
            raise ArenaError(
                f"reference model {self.index} ({self.name}, seed {self.seed}, trained in "
                f"{computed_in}) is not in the cache {cache.root}; run arena calibrate "
                f"--protocol {protocol.name} with the same cache"
            )
        return model


def _train_recipe(model: nn.Module, ctx: Context, recipe: Recipe) -> dict[str, Any]:
    settings, augment = recipe.apply(ctx.protocol)
    return train_clean(model, ctx, settings, augment, f"clean model ({recipe.name})")


def reference_set(
    protocol: Protocol,
    models: int,
    foreign: int = 0,
    references: tuple[str, ...] = (),
    foreign_models: tuple[str, ...] = (),
) -> list[ReferenceModel]:
    """``models`` reference models, then ``foreign`` foreign ones, each round robin over
    the protocol's entries ("architecture" or "architecture@recipe")."""
    references = references or protocol.reference_models or (protocol.model,)
    foreign_models = foreign_models or protocol.foreign_models
    if not 1 <= models <= MAX_MODELS:
        raise ArenaError(f"--models must lie in [1, {MAX_MODELS}], got {models}")
    if not 0 <= foreign <= MAX_MODELS:
        raise ArenaError(f"--foreign must lie in [0, {MAX_MODELS}], got {foreign}")
    parsed = [parse_reference(entry) for entry in references]
    architectures = {architecture for architecture, _ in parsed}
    if len(architectures) < 2:
        raise ArenaError(
            f"calibration needs reference models of at least two architectures, got "
            f"{', '.join(sorted(architectures))}"
        )
    strangers = [parse_reference(entry) for entry in foreign_models]
    if foreign and not strangers:
        raise ArenaError(f"protocol {protocol.name!r} names no foreign models")
    shared = architectures & {architecture for architecture, _ in strangers}
    if shared:
        raise ArenaError(
            f"foreign models must be of architectures the reference set does not contain; "
            f"{', '.join(sorted(shared))} is in both"
        )
    for architecture in architectures | {architecture for architecture, _ in strangers}:
        check_model_name(architecture)  # before any model is trained, not at the first new one
    chosen = [ReferenceModel(i, *parsed[i % len(parsed)], role="reference") for i in range(models)]
    chosen += [
        ReferenceModel(i, *strangers[i % len(strangers)], role="foreign") for i in range(foreign)
    ]
    return chosen


def reference_models(
    protocol: Protocol,
    defense: str,
    store: CalibrationStore | CalibrationSnapshot,
    cache: ArtifactCache | None = None,
    device: torch.device | None = None,
) -> list[nn.Module]:
    """The clean reference models of the newest calibration of ``defense`` on ``protocol``."""
    record = store.latest(protocol, defense)
    if record is None or record.get("format") != RECORD_FORMAT:
        raise ArenaError(
            f"public verification needs clean reference models of {protocol.label}: run "
            f"arena calibrate --protocol {protocol.name} --defense {defense}"
        )
    cache = cache or ArtifactCache()
    device = device or default_device()
    # The models the calibration trained, in its precision (records from before bfloat16
    # existed were all float32), whatever this verifier computes in.
    computed_in = record.get("versions", {}).get("precision", "fp32")
    return [
        _row_model(row).cached(protocol, cache, device, computed_in) for row in record["models"]
    ]


def _row_model(row: dict[str, Any]) -> ReferenceModel:
    architecture, recipe = parse_reference(f"{row['architecture']}@{row['recipe']}")
    return ReferenceModel(row["index"], architecture, recipe, row["role"])
