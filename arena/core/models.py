"""timm model factory and output-layer access through timm's own classifier API."""

from __future__ import annotations

import copy
import difflib

import torch
from torch import nn

from arena.util.errors import ArenaError, UnknownNameError


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest few it does."""
    import timm  # pulls in torchvision: imported when a model is built, not at start-up

    if not timm.is_model(name):
        # Only the closest few: timm has over a thousand names, too many for one line.
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        raise UnknownNameError("timm model", name, close, hint="timm.list_models() lists all")


def create_model(name: str, num_classes: int, channels: int, image_size: int) -> nn.Module:
    """A randomly initialised timm model with the right input channels and classes."""
    import timm

    check_model_name(name)
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


def find_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at the module path ``path`` (e.g. ``layer3.1.conv2``).

    A path the model lacks is an ``ArenaError`` naming the closest paths it has.
    """
    if path:
        try:
            return model.get_submodule(path)
        except AttributeError:
            pass
    paths = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.6)
    shown = close or [name for name, _ in model.named_children()][:8]
    lead = "did you mean one of" if close else "its top-level layers are"
    raise ArenaError(
        f"{type(model).__name__} has no layer {path!r}; {lead} "
        f"{', '.join(repr(name) for name in shown)} "
        f"(model.named_modules() lists all {len(paths)} paths)"
    )


def default_conv_layer(model: nn.Module, min_inputs: int = 1) -> str:
    """The middle full convolution with a spatial kernel, in ``named_modules()`` order,
    among those whose filters have at least ``min_inputs`` weights (k_h * k_w * C_in)."""
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.kernel_size != (1, 1)
        and module.weight[0].numel() >= min_inputs
    ]
    if not candidates:
        raise ArenaError(
            f"{type(model).__name__} has no ungrouped spatial convolution with at least "
            f"{min_inputs} weights per filter; name a layer by its module path"
        )
    return candidates[(len(candidates) - 1) // 2]


def default_block_layer(model: nn.Module) -> str:
    """The middle block, in ``named_modules()`` order; the middle convolution if none.

    A block is a module with submodules that sits in an ``nn.Sequential`` (a stage of a
    ResNet, EfficientNet or ViT) and holds no smaller such block.
    """
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    nested = [
        f"{name}.{child_name}" if name else child_name
        for name, module in model.named_modules()
        if isinstance(module, nn.Sequential)
        for child_name, child in module.named_children()
        if any(True for _ in child.children())
    ]
    blocks = sorted(
        (path for path in nested if not any(other.startswith(path + ".") for other in nested)),
        key=order.__getitem__,
    )
    if not blocks:
        return default_conv_layer(model)
    return blocks[(len(blocks) - 1) // 2]
