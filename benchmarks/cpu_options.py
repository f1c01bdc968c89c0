"""What each way of running the same training buys on this machine: images per second of a
plain PyTorch loop of a protocol's model, under one setting at a time, against the loop as
the protocol runs it (float32, contiguous, eager, its batch size and thread count).

The settings, each measured in this run after a warm-up of its own:

- ``channels-last``: the model and batches in channels-last memory;
- ``bf16``: bfloat16 autocast and channels-last (what CUDA uses);
- ``compile``: the training step under ``torch.compile`` (its compilation is timed apart);
- ``batch=B``: another batch size (fewer, larger steps per epoch: a new recipe);
- ``size=S``: images of side S instead of the protocol's (a new protocol);
- ``2 processes``: two copies of the loop side by side, one thread each, their images per
  second added (what running two matches at once would give two cores).

The data are random images of the protocol's shape, resident in memory; the optimizer,
learning rate, weight decay and augmentation are the protocol's.

    python benchmarks/cpu_options.py --protocol mnist5k
    python benchmarks/cpu_options.py --protocol mnist5k --only fp32 --only compile --json cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arena.core.environment import apply_deterministic_defaults, environment
from arena.core.models import create_model
from arena.core.protocols import PROTOCOLS, Protocol, get_protocol
from arena.core.training import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from plain import shift  # noqa: E402 (the benchmarks' shared plain code)

SETTINGS = (
    "fp32",
    "channels-last",
    "bf16",
    "compile",
    "batch=50",
    "batch=200",
    "batch=500",
    "size=28",
    "size=24",
    "2 processes",
)


def images_per_second(
    protocol: Protocol, setting: str, images: int, epochs: int, threads: int
) -> dict[str, float]:
    """One setting's plain loop: images per second over ``epochs`` after one warm-up epoch
    (and, for ``compile``, the seconds its first steps took)."""
    torch.set_num_threads(threads)
    batch_size = protocol.training.batch_size
    size = protocol.image_size
    if setting.startswith("batch="):
        batch_size = int(setting.split("=")[1])
    if setting.startswith("size="):
        size = int(setting.split("=")[1])
    channels_last = setting in ("channels-last", "bf16")
    generator = torch.Generator().manual_seed(0)
    data = torch.rand((images, protocol.channels, size, size), generator=generator)
    labels = torch.randint(protocol.num_classes, (images,), generator=generator)
    torch.manual_seed(0)
    model = create_model(protocol.model, protocol.num_classes, protocol.channels, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    settings = dataclasses.replace(protocol.training, batch_size=batch_size)
    optimizer = make_optimizer(list(model.parameters()), settings)

    def step(batch: torch.Tensor, answers: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "bf16"):
            loss = F.cross_entropy(model(batch), answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    run_step = torch.compile(step) if setting == "compile" else step

    def epoch() -> None:
        model.train()
        order = torch.randperm(images, generator=generator)
        for first in range(0, images, batch_size):
            index = order[first : first + batch_size]
            batch = data[index]
            if protocol.augment != "none":
                batch = shift(batch, generator, flip=protocol.augment == "shift-flip")
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            run_step(batch, labels[index])

    start = time.perf_counter()
    epoch()  # warm-up: kernels, allocator; compilation for ``compile``
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    seconds = time.perf_counter() - start
    return {"images_per_s": images * epochs / seconds, "warm_up_s": warm_up}


def side_by_side(protocol: Protocol, images: int, epochs: int) -> dict[str, float]:
    """Two processes of the float32 loop at one thread each, started together."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--protocol",
        protocol.name,
        "--images",
        str(images),
        "--epochs",
        str(epochs),
        "--threads",
        "1",
        "--only",
        "fp32",
        "--child",
    ]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise SystemExit("a side-by-side process failed")
    rates = [json.loads(output)["fp32"]["images_per_s"] for output in outputs]
    return {"images_per_s": sum(rates), "per_process": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mnist5k", choices=sorted(PROTOCOLS))
    parser.add_argument("--images", type=int, default=3000, help="random training images")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per setting")
    parser.add_argument("--threads", type=int, default=None, help="[default: arena's]")
    parser.add_argument("--only", action="append", choices=SETTINGS, help="repeatable")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = apply_deterministic_defaults(args.threads)
    protocol = get_protocol(args.protocol)
    results: dict[str, Any] = {}
    for setting in args.only or SETTINGS:
        if setting == "2 processes":
            results[setting] = side_by_side(protocol, args.images, args.epochs)
        else:
            results[setting] = images_per_second(
                protocol, setting, args.images, args.epochs, threads
            )
        if not args.child:
            base = results.get("fp32", {}).get("images_per_s")
            rate = results[setting]["images_per_s"]
            ratio = f"  {rate / base:.2f} x fp32" if base else ""
            extra = (
                f"  (first epoch {results[setting]['warm_up_s']:.1f} s)"
                if setting == "compile"
                else ""
            )
            print(f"{setting:14s} {rate:7.0f} images/s{ratio}{extra}", flush=True)
    if args.child:
        print(json.dumps(results))
        return
    if args.json:
        facts = {"protocol": protocol.label, "model": protocol.model, "threads": threads}
        payload = {**facts, "images": args.images, "epochs": args.epochs, "results": results}
        args.json.write_text(json.dumps({**payload, "environment": environment()}, indent=2))


if __name__ == "__main__":
    main()
