"""timm model factory and output-layer access through timm's own classifier API."""

from __future__ import annotations

import copy

import torch
from torch import nn

from arena.errors import ArenaError, UnknownNameError


def create_model(name: str, num_classes: int, channels: int, image_size: int) -> nn.Module:
    """A randomly initialised timm model with the right input channels and classes."""
    import timm  # pulls in torchvision: imported when a model is built, not at start-up

    if not timm.is_model(name):
        raise UnknownNameError("timm model", name, timm.list_models(), hint="timm.list_models()")
    try:
        # Transformers need the input size; convolutional models refuse the argument.
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=channels, img_size=image_size
        )
    except TypeError:
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=channels
        )
    model.eval()
    return model


def head_module(model: nn.Module) -> nn.Module:
    """The output layer, as timm's ``get_classifier()`` names it."""
    if not hasattr(model, "get_classifier"):
        raise ArenaError(f"{type(model).__name__} has no get_classifier(); use a timm model")
    head = model.get_classifier()
    if not isinstance(head, nn.Module) or not list(head.parameters()):
        raise ArenaError(f"{type(model).__name__} has no trainable output layer")
    return head


def head_path(model: nn.Module) -> str:
    """The module path of the output layer inside ``model``, e.g. ``fc``."""
    head = head_module(model)
    for path, module in model.named_modules():
        if module is head:
            return path
    raise ArenaError("the output layer is not a submodule of the model")


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the output layer's weights."""
    return {
        name: tensor.detach().clone() for name, tensor in head_module(model).state_dict().items()
    }


def load_head_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    head_module(model).load_state_dict(state)


def reinitialize_head(model: nn.Module, generator_seed: int) -> None:
    """Replace the output layer by a freshly initialised one of the same shape."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        model.reset_classifier(model.num_classes)
    device = next(model.parameters()).device
    head_module(model).to(device)


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
