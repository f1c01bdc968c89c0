"""What the benchmarks' plain PyTorch loops share: written once, without arena code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def shift(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translations by up to 1/8 of the side (reflect-padded crops), one gather."""
    n, channels, height, width = images.shape
    pad = max(1, height // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    columns = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    samples = torch.arange(n, device=images.device)[:, None, None, None]
    planes = torch.arange(channels, device=images.device)[None, :, None, None]
    out = padded[samples, planes, rows, columns]
    if flip:
        flips = (torch.rand(n, generator=generator) < 0.5).to(out.device)
        out[flips] = out[flips].flip(-1)
    return out


def largest_difference(first: nn.Module, second: nn.Module) -> float:
    """Largest absolute difference over every parameter and buffer."""
    theirs = second.state_dict()
    return max(
        float((tensor.float() - theirs[name].float()).abs().max())
        for name, tensor in first.state_dict().items()
        if tensor.numel()
    )
