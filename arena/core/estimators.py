"""Our models as adversarial-robustness-toolbox (ART) estimators.

Attacks and defenses that use ART's evasion attacks, extraction attacks or trainers wrap
a model here once, so the input shape, class count, value range and device are set the
same way everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from arena.core.protocols import Protocol


def art_classifier(
    model: nn.Module,
    protocol: Protocol,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
):
    """``model`` as an ART ``PyTorchClassifier`` over inputs in [0, 1] of the protocol's shape."""
    from art.estimators.classification import PyTorchClassifier

    model.to(device).eval()
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        input_shape=(protocol.channels, protocol.image_size, protocol.image_size),
        nb_classes=protocol.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
