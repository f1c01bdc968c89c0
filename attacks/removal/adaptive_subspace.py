"""An adaptive removal attack on white-box weight watermarks: move the embedding layer's
mean filter out of the subspace the secret projection reads, and fine-tune.

The attacker knows the scheme family and its published parameters, not the key: Uchida
et al. ("Embedding Watermarks into Deep Neural Networks", ICMR 2017) and the schemes
built on it (DeepMarks, Chen et al., ICMR 2019) read their bits as ``sign(X w)``, ``w``
one convolution's weights averaged over its output filters and ``X`` a secret standard
normal matrix. Which convolution is public (the verification key names it). Without
``X`` the attacker cannot aim at the bits, but it does not need to: for a ``w'``
orthogonal to the marked ``w``, and ``X`` drawn independently of both, ``X w'`` is
independent of ``X w``, so every bit read from ``w'`` agrees with the key by chance
alone. The attack is this arena's design.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.core.context import Context
from arena.core.models import find_layer
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, Requirements, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import train
from arena.util.errors import ArenaError
from arena.util.jsonio import read_json
from attacks.removal.common import AttackerTraining


@dataclass(frozen=True)
class AdaptiveSubspaceParams(AttackerTraining):
    layer: str = param(
        "",
        help='module path of the embedding layer; "": the one the victim\'s public '
        "verification key names",
    )
    scale: float = param(
        1.0, help="the new mean filter's norm, in units of the marked one's", above=0
    )
    hold: float = param(
        10.0,
        help="weight of the squared cosine between the mean filter and the marked one, "
        "added to the fine-tuning loss so the mean stays orthogonal",
        min=0,
    )

    def check(self) -> None:
        if self.layer != self.layer.strip():
            raise ValueError(f"layer {self.layer!r} has surrounding spaces")


@register_attack("adaptive-subspace")
class AdaptiveSubspace(RemovalAttack):
    """Re-randomise the embedding layer's mean-filter direction, then fine-tune
    (adaptive: the attacker knows the white-box scheme family, not its projection).

    1. Layer: the convolution the victim's public verification key names (or
       ``layer``); when that is a block (an activation scheme such as DeepSigns names
       one), every convolution inside it, shortcuts included.
    2. Re-randomise: with ``w`` the layer's weights averaged over its output filters,
       draw a standard normal direction, remove its component along ``w``, scale it to
       ``scale`` times ``|w|`` and call it ``r``; every filter is shifted by ``r - w``.
       The filters keep their differences (what the layer computes, up to a pattern
       common to all of them), and their mean becomes ``r``, orthogonal to ``w``.
    3. Fine-tune every layer on the attacker's split with true labels for the protocol's
       attack budget, adding ``hold`` times the squared cosine between the current mean
       filter and ``w``, so training does not drift the mean back into ``w``'s
       direction (only that direction is known, not ``X``).

    Blind spot: an activation watermark (DeepSigns) reads the mean activation of its key
    images, not a mean filter; re-randomising the block's mean filters is a perturbation
    of its weights, not an attack aimed at that subspace.

    Defaults: ``scale`` 1 (the mean keeps its norm, so the layer's output scale is
    unchanged; the bits read are the same at any scale, only the direction counts);
    ``hold`` 10 (a squared cosine is at most 1, so at 10 drifting back would cost more
    than a cross-entropy of a few tenths gains; on smoke, seed 0, the cosine stayed below
    1e-3 with no hold at all, even over 20 epochs at 0.05, so it is a guard, not measured
    to matter); the attackers' usual optimizer (SGD at 0.01) and the protocol's attack
    budget. On smoke, seed 0, the re-randomisation alone (``epochs=0``) left the test
    accuracy of the ``uchida`` model unchanged (88.5%) and 124 of its 256 bits.
    """

    budget_curve = Budget("scale", (0.25, 0.5, 1.0, 2.0, 4.0))

    paper = "adaptive (this arena), against Uchida et al., ICMR 2017 and its descendants"
    Params = AdaptiveSubspaceParams
    requires = Requirements(
        access=("white-box",),
        reason="it moves the mean filter a white-box projection reads; a trigger set's "
        "mark is in the model's answers, not in one layer's mean filter",
    )

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        path = self.params.layer or embedding_layer(ctx)
        convolutions = layer_convolutions(model, path)
        generator = ctx.generator(f"attack:{self.name}")
        originals = {
            name: rerandomize_mean(conv, self.params.scale, generator)
            for name, conv in convolutions.items()
        }
        directions = {name: w / w.norm().clamp(min=1e-12) for name, w in originals.items()}

        def hold_orthogonal(trained: nn.Module) -> torch.Tensor:
            total = 0.0
            for name, direction in directions.items():
                mean = trained.get_submodule(name).weight.mean(0).flatten()
                cosine = mean @ direction.to(mean.device) / mean.norm().clamp(min=1e-12)
                total = total + cosine**2
            return self.params.hold * total

        report = train(
            model,
            ctx.splits.attacker.images,
            ctx.splits.attacker.labels,
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=generator,
            description="adaptive subspace fine-tuning",
            progress=ctx.progress,
            augment=ctx.protocol.augment,
            extra_loss=hold_orthogonal if self.params.hold > 0 else None,
        )
        cosines = {
            name: float(_cosine(model.get_submodule(name).weight.mean(0).flatten(), w))
            for name, w in originals.items()
        }
        return AttackOutcome(
            model=model,
            info={
                "summary": f"mean filter of {', '.join(convolutions)} re-randomised "
                f"(largest |cosine| to the marked one after fine-tuning "
                f"{max(abs(c) for c in cosines.values()):.3f})",
                "layers": list(convolutions),
                "cosine_to_marked_mean": cosines,
                "steps": report.steps,
            },
        )


def embedding_layer(ctx: Context) -> str:
    """The layer the victim's public verification key names."""
    victim = ctx.victim
    vk = None if victim is None or victim.vk is None else read_json(victim.vk)
    layer = vk.get("layer") if isinstance(vk, dict) else None
    if not isinstance(layer, str) or not layer:
        raise ArenaError(
            "adaptive-subspace needs the embedding layer: the victim's verification key "
            "names none here; pass it with -A layer=<module path>"
        )
    return layer


def layer_convolutions(model: nn.Module, path: str) -> dict[str, nn.Conv2d]:
    """The convolution at ``path``, or every convolution inside the module there."""
    module = find_layer(model, path)
    if isinstance(module, nn.Conv2d):
        return {path: module}
    found = {
        f"{path}.{name}": child
        for name, child in module.named_modules()
        if isinstance(child, nn.Conv2d)
    }
    if not found:
        raise ArenaError(f"layer {path!r} is a {type(module).__name__} holding no Conv2d")
    return found


@torch.no_grad()
def rerandomize_mean(conv: nn.Conv2d, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Shift every filter of ``conv`` so their mean becomes a random direction orthogonal
    to the old mean, ``scale`` times its norm; the old mean (flattened, on the host)."""
    weight = conv.weight
    old = weight.mean(0)
    direction = torch.randn(old.shape, generator=generator).to(old)
    unit = old / old.norm().clamp(min=1e-12)
    direction = direction - (direction * unit).sum() * unit
    new = direction / direction.norm().clamp(min=1e-12) * scale * old.norm()
    weight += (new - old).unsqueeze(0)
    return old.flatten().cpu().clone()


def _cosine(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    first, second = first.detach().cpu(), second.detach().cpu()
    return first @ second / (first.norm() * second.norm()).clamp(min=1e-12)
