"""Training speed of a protocol's model, on synthetic data of its shape, on this device.

Images per second of the arena's training loop (``arena.core.training.train``: the
protocol's optimizer, batch size and augmentation, in the precision ``ARENA_PRECISION``
picks for the device: bfloat16 autocast and channels-last on CUDA, float32 on a CPU)
against a plain PyTorch loop doing the same steps in the same precision, in the same run,
alternating, after a warm-up of each. The data are random images of the protocol's shape
(no data set needed: a GPU machine without a network can run it), resident on the device.

    python benchmarks/train_speed.py --protocol cifar10 --images 10000 --epochs 2
    python benchmarks/train_speed.py --protocol mnist5k --json speed.json

It prints one line per side and the ratio; ``--json`` also writes them with the device,
precision, thread count and versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arena.core.context import default_device
from arena.core.environment import autocast, environment, precision
from arena.core.models import create_model
from arena.core.protocols import PROTOCOLS, Protocol, get_protocol
from arena.core.training import TrainSettings, make_optimizer, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from plain import shift  # noqa: E402 (the benchmarks' shared plain code)


def synthetic(protocol: Protocol, count: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    shape = (count, protocol.channels, protocol.image_size, protocol.image_size)
    images = torch.rand(shape, generator=generator)
    labels = torch.randint(protocol.num_classes, (count,), generator=generator)
    return images.to(device), labels.to(device)


def arena_side(
    protocol: Protocol, settings: TrainSettings, data: tuple[torch.Tensor, ...], device
) -> float:
    model = _model(protocol, device)
    _synchronize(device)
    start = time.perf_counter()
    train(
        model,
        *data,
        settings,
        device=device,
        generator=torch.Generator().manual_seed(1),
        augment=protocol.augment,
    )
    _synchronize(device)
    return time.perf_counter() - start


def plain_side(
    protocol: Protocol, settings: TrainSettings, data: tuple[torch.Tensor, ...], device
) -> float:
    """The textbook loop: shuffle, crop, forward under autocast, backward, step."""
    model = _model(protocol, device)
    images, labels = data
    channels_last = precision(device) == "bf16"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(list(model.parameters()), settings)
    steps = settings.epochs * -(-len(images) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator).to(device)
        for first in range(0, len(images), settings.batch_size):
            index = order[first : first + settings.batch_size]
            batch = images[index]
            if protocol.augment != "none":
                batch = shift(batch, generator, flip=protocol.augment == "shift-flip")
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    _synchronize(device)
    return time.perf_counter() - start


def _model(protocol: Protocol, device: torch.device) -> torch.nn.Module:
    model = create_model(
        protocol.model, protocol.num_classes, protocol.channels, protocol.image_size
    )
    return model.to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    protocol: Protocol, images: int, epochs: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    settings = dataclasses.replace(protocol.training, epochs=epochs)
    data = synthetic(protocol, images, device)
    warm = dataclasses.replace(settings, epochs=1)
    arena_side(protocol, warm, data, device)  # warm-up: kernels, allocator, caches
    plain_side(protocol, warm, data, device)
    times: dict[str, list[float]] = {"arena": [], "plain": []}
    for _ in range(repeats):
        times["arena"].append(arena_side(protocol, settings, data, device))
        times["plain"].append(plain_side(protocol, settings, data, device))
    work = images * epochs
    result = {
        side: {"seconds": statistics.median(values), "images_per_s": work / min(values)}
        for side, values in times.items()
    }
    return {
        "protocol": protocol.label,
        "model": protocol.model,
        "shape": [protocol.channels, protocol.image_size, protocol.image_size],
        "images": images,
        "epochs": epochs,
        "repeats": repeats,
        **result,
        "ratio": result["arena"]["seconds"] / result["plain"]["seconds"],
        "environment": environment(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="cifar10", choices=sorted(PROTOCOLS))
    parser.add_argument("--images", type=int, default=5000, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument("--device", help="cuda, cpu, ... [default: cuda when available]")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    result = measure(get_protocol(args.protocol), args.images, args.epochs, args.repeats, device)
    facts = result["environment"]
    print(
        f"{result['protocol']} ({result['model']}, {'x'.join(map(str, result['shape']))}) on "
        f"{facts['gpu'] or facts['device_kind']}, {facts['precision']}, "
        f"{facts['threads']} threads: {args.images} images x {args.epochs} epochs"
    )
    for side in ("arena", "plain"):
        figures = result[side]
        print(f"  {side:5s} {figures['images_per_s']:9.0f} images/s ({figures['seconds']:.2f} s)")
    print(f"  ratio {result['ratio']:.3f} (arena over plain, median of {args.repeats})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
