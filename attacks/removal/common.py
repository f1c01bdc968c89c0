"""What the weight-editing removal attacks share: the attacker's own fine-tuning settings,
the fine-tuning step on the attacker's split, and the threat model that follows from it.

Pruning, quantization, fine-pruning and weight shifting edit the weights and then, if the
attacker spends a budget on it, fine-tune on the attacker's labelled split. The optimizer
is the attacker's, declared as parameters; nothing is inherited from the owner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from arena.core.context import Context
from arena.core.environment import precision
from arena.core.params import param
from arena.core.plugin import ThreatModel
from arena.core.training import TrainReport, TrainSettings, train

MAX_EPOCHS = 10_000  # far above any budget; more is a typo, refused before training
# The epochs a removal-cost curve plays (``Attack.budget_curve``): from one pass over the
# attacker's data to four times mnist5k's attack budget of 5.
EPOCH_GRID = (1, 2, 5, 10, 20)


@dataclass(frozen=True)
class AttackerTraining:
    """The attacker's fine-tuning budget and optimizer; subclasses add their own fields."""

    epochs: int | None = param(
        None, help="fine-tuning epochs; None: the protocol's attack budget", min=0, max=MAX_EPOCHS
    )
    lr: float = param(0.01, help="the attacker's learning rate", above=0)
    batch_size: int = param(64, help="images per training batch", min=1)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="the attacker's optimizer")
    momentum: float = param(
        0.9, help="SGD's (Nesterov when > 0) momentum; adam ignores it", min=0, below=1
    )
    weight_decay: float = param(5e-4, help="the optimizer's weight decay", min=0)

    def budget(self, ctx: Context) -> int:
        """Fine-tuning epochs: the declared ones, else the protocol's attack budget."""
        return ctx.protocol.attack_epochs if self.epochs is None else self.epochs

    def settings(self, epochs: int, label_smoothing: float = 0.0) -> TrainSettings:
        return TrainSettings(
            epochs=epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            label_smoothing=label_smoothing,
        )


def removal_threat_model(epochs: int, reads_data: bool = False) -> ThreatModel:
    """Fine-tuning needs the attacker's split with true labels; without it the attack
    needs no data (``reads_data``: it still looks at unlabelled attacker images)."""
    if epochs > 0:
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)
    return ThreatModel(data="attacker-split" if reads_data else "none", labels="none", epochs=0)


def fine_tune(
    model: nn.Module,
    ctx: Context,
    settings: TrainSettings,
    name: str,
) -> TrainReport:
    """Fine-tune every layer of ``model`` in place on the attacker's labelled split."""
    attacker = ctx.splits.attacker
    return train(
        model,
        attacker.images,
        attacker.labels,
        settings,
        device=ctx.device,
        generator=ctx.generator(f"attack:{name}"),
        description=f"{name} fine-tuning",
        progress=ctx.progress,
        augment=ctx.protocol.augment,
    )


@dataclass(frozen=True)
class ScratchTraining(AttackerTraining):
    """The attacker's budget and optimizer for a model trained from scratch.

    ``epochs`` None is the owner's own from-scratch budget (the protocol's training
    epochs): extraction starts from random weights, not from a trained model. The rate
    0.1 is the usual from-scratch SGD rate (He et al., CVPR 2016), also the protocols'.
    """

    epochs: int | None = param(
        None,
        help="training epochs; None: the owner's from-scratch budget (the protocol's)",
        min=0,
        max=MAX_EPOCHS,
    )
    lr: float = param(0.1, help="the attacker's learning rate: the usual one from scratch", above=0)

    def budget(self, ctx: Context) -> int:
        return ctx.protocol.training.epochs if self.epochs is None else self.epochs


def fresh_model(ctx: Context, architecture: str | None, purpose: str) -> nn.Module:
    """A randomly initialised model of ``architecture`` (None: the protocol's), seeded for
    ``purpose``: never the victim's weights."""
    protocol = ctx.protocol.with_model(architecture)
    if protocol is ctx.protocol:
        return ctx.new_model(purpose)
    return Context(protocol=protocol, seed=ctx.seed, device=ctx.device).new_model(purpose)


def train_fresh(
    ctx: Context,
    architecture: str | None,
    purpose: str,
    data: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    description: str,
    *,
    generator_purpose: str | None = None,
    **options: Any,
) -> tuple[nn.Module, TrainReport]:
    """A fresh model (``fresh_model``) trained on the attacker's ``data`` (images and the
    labels it got from the victim): extraction, distillation, an ensemble's members.
    ``options`` go to ``train`` (``augment``, ``temperature``).

    Training is deterministic, so a model this process already trained from exactly the
    same inputs (``_Extractions``) is handed back instead of trained again: the same
    weights either way, and a report marked ``reused`` with the seconds the training
    took. ``retrain`` and ``evade-ensemble``'s first member are one such model
    (``EXTRACTION_PURPOSE``): a sweep, which plays both against each marked model, trains
    it once.
    """
    model = fresh_model(ctx, architecture, purpose)
    images, labels = data
    generator_purpose = generator_purpose or purpose
    key = _EXTRACTIONS.key(
        ctx, architecture, purpose, generator_purpose, images, labels, settings, options
    )
    found = _EXTRACTIONS.get(key, model, ctx.device) if key is not None else None
    if found is not None:
        ctx.progress.log(f"{description}: the same model as one trained before, reused")
        return model, dataclasses.replace(found, reused=True)
    report = train(
        model,
        images,
        labels,
        settings,
        device=ctx.device,
        generator=ctx.generator(generator_purpose),
        description=description,
        progress=ctx.progress,
        **options,
    )
    if key is not None:
        _EXTRACTIONS.put(key, model, report)
    return model, report


def reused_seconds(*reports: TrainReport) -> dict[str, float]:
    """For an attack's ``info``: the seconds of the trainings it reused (none: nothing),
    which the cost model adds back to what the attack costs on its own."""
    seconds = sum(report.seconds for report in reports if report.reused)
    return {"reused_seconds": seconds} if any(report.reused for report in reports) else {}


class _Extractions:
    """The last few models ``train_fresh`` trained in this process, by all that decides
    their weights: the seed and purposes (initialisation and data order), architecture,
    protocol, data, labels, optimizer and options, and the device, precision and thread
    count the bits depend on. A bounded memory: a sweep's attacks on one marked model run
    one after another."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[dict[str, torch.Tensor], TrainReport]] = OrderedDict()

    @staticmethod
    def key(
        ctx: Context,
        architecture: str | None,
        purpose: str,
        generator_purpose: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        settings: TrainSettings,
        options: dict[str, Any],
    ) -> str | None:
        """The key, or None when an option is not a plain value whose ``repr`` says all of
        it (a tensor's elides, a function's is an address): such a training is not kept."""
        if not all(isinstance(value, _PLAIN) for value in options.values()):
            return None
        digest = hashlib.sha256()
        facts = {
            "protocol": ctx.protocol.with_model(architecture).fingerprint,
            "seed": ctx.seed,
            "purpose": purpose,
            "generator_purpose": generator_purpose,
            "settings": dataclasses.asdict(settings),
            "options": {name: repr(value) for name, value in sorted(options.items())},
            "device": str(ctx.device),
            "precision": precision(ctx.device),
            "threads": torch.get_num_threads(),
        }
        digest.update(json.dumps(facts, sort_keys=True).encode())
        for tensor in (images, labels):
            contiguous = tensor.detach().cpu().contiguous()
            digest.update(f"{contiguous.dtype}{tuple(contiguous.shape)}".encode())
            digest.update(contiguous.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str, model: nn.Module, device: torch.device) -> TrainReport | None:
        """Fill ``model`` with the weights trained under ``key``; None if none are kept."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        state, report = entry
        model.to(device).load_state_dict(state)
        model.eval()
        return report

    def put(self, key: str, model: nn.Module, report: TrainReport) -> None:
        state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.entries[key] = (state, report)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


_PLAIN = (str, int, float, bool, type(None))
_EXTRACTIONS = _Extractions()

# The seed purpose of the model ``retrain`` extracts, which ``evade-ensemble`` takes for
# its first member.
EXTRACTION_PURPOSE = "attack:retrain"
