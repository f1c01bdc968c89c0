"""Neural structural obfuscation: rewrite a stolen model's weights without changing what
it computes (Yan, Pan, Zhang, Yang, "Rethinking White-Box Watermarks on Deep Learning
Models under Neural Structural Obfuscation", USENIX Security 2023).

A white-box watermark is read from the weights of one layer, at fixed positions. The
weights of a network are not unique: shuffling the hidden channels of a layer (and the
input channels of the one that reads them), rescaling a channel across a ReLU, or adding
channels whose outgoing weights are zero gives another set of weights for the very same
function. The test accuracy and every answer (a black-box mark's trigger set included)
stay what they were, up to float rounding; only what a weight-reading verifier sees moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.util.errors import ArenaError


@dataclass(frozen=True)
class PermuteParams:
    permute: bool = param(True, help="shuffle the hidden channels of every block")
    max_scale: float = param(
        4.0,
        help="rescale each hidden channel by s, log-uniform in [1/max_scale, max_scale], "
        "across its ReLU; 1: no rescaling",
        min=1,
        max=1e3,
    )
    dummy_channels: int = param(
        1,
        help="channels with zero outgoing weights added to every hidden layer (changes "
        "the tensor shapes); 0: none",
        min=0,
        max=4096,
    )

    def check(self) -> None:
        if not self.permute and self.max_scale == 1 and self.dummy_channels == 0:
            raise ValueError(
                "permute=false, max_scale=1 and dummy_channels=0 leave the model unchanged; "
                "enable at least one rewrite"
            )


@dataclass(frozen=True)
class HiddenLayer:
    """Channels that one convolution (``producer``) writes, a BatchNorm (``norm``) and a
    ReLU pass on, and one convolution (``consumer``) alone reads: the module paths."""

    producer: str
    norm: str
    consumer: str


@register_attack("permute")
class NeuralStructuralObfuscation(RemovalAttack):
    """Function-preserving weight rewrites (Yan et al., USENIX Security 2023).

    In every hidden layer (``hidden_layers``: the inner channels of each timm ResNet
    BasicBlock and Bottleneck, and of Conv-BN-ReLU-Conv runs inside a plain
    ``nn.Sequential`` such as a deep stem) the attack, in this order:

    - adds ``dummy_channels`` channels: random incoming filters (the layer's own weight
      scale), BatchNorm statistics copied from random real channels, zero outgoing
      weights, so they contribute exactly nothing;
    - permutes the channels (``permute``): the producer's filters, the BatchNorm's
      affine weight, bias and running statistics, and the consumer's input channels
      alike;
    - rescales each channel by s > 0 (``max_scale``): the BatchNorm's affine weight and
      bias times s, the consumer's input channel times 1/s. ReLU(s x) = s ReLU(x), and
      the ReLU there has no other consumer, so the consumer sees the same sum.

    Channels on a residual path are left alone: a residual add ties the channels of
    every block of a stage together, and the hidden ones can always be shuffled on their
    own. So a white-box mark in a block's inner convolution (Uchida et al.'s filter mean
    reads the consumer's input channels) is scrambled, while one read from a block's
    output (DeepSigns' activations) is not touched by construction.

    Defaults: permutation on; scales up to 4 in either direction, which reweights the
    per-channel weight magnitudes a projection reads by up to 16x relative to each
    other, while float32 products stay exact to rounding at any s; one dummy channel
    per hidden layer. Why dummies are on, measured on smoke against ``uchida`` (whose
    key layer, ``layer2.0.conv2``, is a consumer here; seeds 0, 1, 2, the marked model
    at 245, 244, 242 of 256 bits): permutation and scaling alone left 151, 119 and 148
    bits, still verified on seeds 0 and 2 (alpha 0.01); our reading, not checked
    further: the filter mean Uchida et al. read lines up one 3x3 kernel per input
    channel, and what those kernels share stays in place under any reordering and any
    positive scaling. One dummy channel changes the layer's shape,
    and the verifier reads no bits (0 of 256 on all three seeds); one is enough for
    that, and more only grow the model, since channels with zero outgoing weights are
    found by looking whatever their number (Yan et al. hide them better, with outgoing
    weights that cancel instead of vanish; this attack does not).

    Dummy channels change the layer shapes, so the model no longer loads into the
    victim's architecture: ``build`` widens a fresh model the same way, which the arena
    uses to store and reload the attacked model (the record's weight change is then
    empty: the weights are no longer comparable one to one).

    The attacker needs no data and no queries: the weights alone.
    """

    paper = "Yan et al., USENIX Security 2023"
    Params = PermuteParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="none", labels="none", epochs=0)

    def build(self, ctx: Context, new_model: Callable[[], nn.Module]) -> nn.Module:
        """A fresh victim architecture widened as ``remove`` widens it, so a cached
        attacked model with dummy channels loads strictly."""
        model = new_model()
        if self.params.dummy_channels:
            for layer in hidden_layers(model):
                add_dummy_channels(model, layer, self.params.dummy_channels, generator=None)
        return model

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        layers = hidden_layers(model)
        if not layers:
            raise ArenaError(
                f"permute found no hidden channels it can rewrite safely in "
                f"{type(model).__name__} (it knows timm ResNet blocks and Conv-BN-ReLU-Conv "
                "runs in nn.Sequential)"
            )
        generator = ctx.generator(f"attack:{self.name}")
        channels = moved = 0
        for layer in layers:
            if self.params.dummy_channels:
                add_dummy_channels(model, layer, self.params.dummy_channels, generator)
            count = model.get_submodule(layer.producer).out_channels
            identity = torch.arange(count)
            order = torch.randperm(count, generator=generator) if self.params.permute else identity
            log_range = math.log(self.params.max_scale)
            scales = torch.exp((2 * torch.rand(count, generator=generator) - 1) * log_range)
            rewrite_channels(model, layer, order, scales)
            channels += count
            moved += int((order != identity).sum())
        info = {
            "summary": f"{moved} of {channels} hidden channels moved in {len(layers)} layers",
            "hidden_layers": len(layers),
            "hidden_channels": channels,
            "channels_moved": moved,
            "dummy_channels": self.params.dummy_channels * len(layers),
        }
        return AttackOutcome(model=model, info=info)


def hidden_layers(model: nn.Module) -> list[HiddenLayer]:
    """Every hidden layer of ``model`` whose channels can be permuted, rescaled and
    widened without changing its function, in ``named_modules()`` order."""
    from timm.models.resnet import BasicBlock, Bottleneck

    found = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if type(module) is BasicBlock:
            chains = [("conv1", "bn1", ("drop_block", "act1", "aa"), "conv2")]
        elif type(module) is Bottleneck:
            chains = [
                ("conv1", "bn1", ("act1",), "conv2"),
                ("conv2", "bn2", ("drop_block", "act2", "aa"), "conv3"),
            ]
        elif type(module) is nn.Sequential:
            children = list(module.named_children())
            chains = [
                (children[i][0], children[i + 1][0], (children[i + 2][0],), children[i + 3][0])
                for i in range(len(children) - 3)
            ]
        else:
            continue
        for producer, norm, between, consumer in chains:
            if _safe(module, producer, norm, between, consumer):
                found.append(HiddenLayer(prefix + producer, prefix + norm, prefix + consumer))
    return found


@torch.no_grad()
def rewrite_channels(
    model: nn.Module, layer: HiddenLayer, order: torch.Tensor, scales: torch.Tensor
) -> None:
    """Put old channel ``order[i]`` at position i, then multiply channel i by
    ``scales[i]`` before the ReLU and divide the consumer's input channel by it."""
    producer = model.get_submodule(layer.producer)
    norm = model.get_submodule(layer.norm)
    consumer = model.get_submodule(layer.consumer)
    index = order.to(producer.weight.device)
    producer.weight.copy_(producer.weight[index])
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[index])
    scale = scales.to(norm.weight)
    norm.weight.copy_(norm.weight[index] * scale)
    norm.bias.copy_(norm.bias[index] * scale)
    norm.running_mean.copy_(norm.running_mean[index])
    norm.running_var.copy_(norm.running_var[index])
    consumer.weight.copy_(consumer.weight[:, index] / scale[None, :, None, None])


@torch.no_grad()
def add_dummy_channels(
    model: nn.Module, layer: HiddenLayer, count: int, generator: torch.Generator | None
) -> None:
    """Widen ``layer`` by ``count`` channels whose outgoing weights are zero. Without a
    ``generator``, the new entries are zeros: a container for weights loaded later."""
    producer = model.get_submodule(layer.producer)
    norm = model.get_submodule(layer.norm)
    consumer = model.get_submodule(layer.consumer)
    wide_producer = _conv_like(producer, producer.in_channels, producer.out_channels + count)
    wide_norm = nn.BatchNorm2d(norm.num_features + count, eps=norm.eps, momentum=norm.momentum).to(
        norm.weight
    )
    wide_consumer = _conv_like(consumer, consumer.in_channels + count, consumer.out_channels)
    old = producer.out_channels
    wide_producer.weight.zero_()
    wide_producer.weight[:old] = producer.weight
    if producer.bias is not None:
        wide_producer.bias.zero_()
        wide_producer.bias[:old] = producer.bias
    wide_consumer.weight.zero_()  # the dummies' outgoing weights stay zero
    wide_consumer.weight[:, :old] = consumer.weight
    if consumer.bias is not None:
        wide_consumer.bias.copy_(consumer.bias)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(wide_norm, name)[:old] = getattr(norm, name)
    wide_norm.num_batches_tracked.copy_(norm.num_batches_tracked)
    if generator is not None:
        spread = float(producer.weight.std())
        shape = (count, *producer.weight.shape[1:])
        wide_producer.weight[old:] = spread * torch.randn(shape, generator=generator).to(
            producer.weight
        )
        donors = torch.randint(0, old, (count,), generator=generator).to(norm.weight.device)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(wide_norm, name)[old:] = getattr(norm, name)[donors]
    else:
        wide_norm.running_var[old:] = 1.0
    wide_norm.train(norm.training)
    for path, module in (
        (layer.producer, wide_producer),
        (layer.norm, wide_norm),
        (layer.consumer, wide_consumer),
    ):
        parent, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attribute, module)


def _safe(
    block: nn.Module, producer: str, norm: str, between: tuple[str, ...], consumer: str
) -> bool:
    """Whether the path producer -> norm -> between -> consumer inside ``block`` is a
    plain convolution, a BatchNorm, a ReLU (with identities beside it) and a plain
    convolution, all ungrouped, so its channels are the consumer's alone."""
    modules = [getattr(block, name, None) for name in (producer, norm, *between, consumer)]
    first, batch_norm, *middle, last = modules
    relus = [m for m in middle if type(m) is nn.ReLU]
    return (
        all(type(conv) is nn.Conv2d and conv.groups == 1 for conv in (first, last))
        and type(batch_norm) is nn.BatchNorm2d
        and batch_norm.affine
        and batch_norm.track_running_stats
        and len(relus) == 1
        and all(type(m) in (nn.ReLU, nn.Identity) for m in middle)
        and first.out_channels == batch_norm.num_features == last.in_channels
    )


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(conv.weight)
