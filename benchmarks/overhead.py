"""What the arena's training loop costs over a plain PyTorch loop doing the same work.

The arena side is the real code path of a match's clean model: ``ctx.owner_model()``
trained by ``arena.core.training.train`` with the protocol's ``TrainSettings``. The plain side
is a hand-written loop with the same model and initial weights, the same data, the same
SGD (Nesterov momentum, weight decay), cosine schedule, batch size, epochs and the same
shuffled batch order. Both run in the same process, alternating, after a warm-up of
each; the final weights are compared to show the two loops did the same steps.

``arena run`` draws rich progress bars, so the arena is measured twice: with the silent
reporter (tests, notebooks) and with ``RichReporter`` drawing to a null terminal.

    python benchmarks/overhead.py --protocol smoke --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from arena.core.context import Context, default_device
from arena.core.protocols import PROTOCOLS, get_protocol
from arena.storage.clean import train_clean
from arena.util.progress import Reporter, RichReporter, silent

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from plain import largest_difference  # noqa: E402 (the benchmarks' shared plain code)

Loop = Callable[[], tuple[float, nn.Module]]


def arena_loop(ctx: Context, progress: Reporter) -> Loop:
    ctx = dataclasses.replace(ctx, progress=progress)

    def run() -> tuple[float, nn.Module]:
        model = ctx.owner_model()
        start = time.perf_counter()
        train_clean(model, ctx)
        return time.perf_counter() - start, model

    return run


def plain_loop(ctx: Context) -> Loop:
    settings = ctx.protocol.training
    owner = ctx.splits.owner

    def run() -> tuple[float, nn.Module]:
        model = ctx.owner_model()  # built outside the timing, like the arena side
        start = time.perf_counter()
        model.to(ctx.device)
        images, labels = owner.images.to(ctx.device), owner.labels.to(ctx.device)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.momentum > 0,
        )
        steps_per_epoch = -(-len(images) // settings.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.epochs * steps_per_epoch
        )
        # The arena seeds a match's clean-model shuffles this way; same seed, same batches.
        generator = torch.Generator()
        generator.manual_seed(ctx.owner_generator().initial_seed())
        for _ in range(settings.epochs):
            model.train()
            order = torch.randperm(len(images), generator=generator).to(ctx.device)
            for first in range(0, len(images), settings.batch_size):
                index = order[first : first + settings.batch_size]
                loss = F.cross_entropy(
                    model(images[index]), labels[index], label_smoothing=settings.label_smoothing
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        model.eval()
        return time.perf_counter() - start, model

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="smoke", choices=sorted(PROTOCOLS))
    parser.add_argument("--epochs", type=int, help="override the protocol's clean-model epochs")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    protocol = get_protocol(args.protocol)
    settings = protocol.training
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
        settings.check()
    if settings.optimizer != "sgd" or settings.schedule != "cosine":
        parser.error("the plain loop mirrors SGD with a cosine schedule only")
    # The plain loop has no augmentation; switch it off on the arena side too.
    protocol = dataclasses.replace(protocol, training=settings, augment="none")
    ctx = Context(protocol=protocol, seed=args.seed, device=default_device())
    with open(os.devnull, "w") as devnull:
        # A terminal that discards everything: the bars are drawn, as on a user's screen.
        null_terminal = Console(file=devnull, force_terminal=True, width=120)
        loops: dict[str, Loop] = {
            "plain PyTorch": plain_loop(ctx),  # loads the data, before any timing
            "arena, silent": arena_loop(ctx, silent),
            "arena, RichReporter": arena_loop(ctx, RichReporter(null_terminal)),
        }
        report(ctx, loops, args.repeats)


def report(ctx: Context, loops: dict[str, Loop], repeats: int) -> None:
    protocol, settings = ctx.protocol, ctx.protocol.training
    names = list(loops)
    steps = settings.epochs * -(-len(ctx.splits.owner) // settings.batch_size)
    print(
        f"protocol {protocol.label} ({protocol.model}, {len(ctx.splits.owner)} images), "
        f"{settings.epochs} epochs x batch {settings.batch_size} = {steps} steps; "
        f"device {ctx.device}, {torch.get_num_threads()} threads, {repeats} repeats"
    )

    finals = {name: loops[name]()[1] for name in names}  # warm-up, untimed
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        # Rotate the order each repeat so no loop always runs first or last.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            elapsed, finals[name] = loops[name]()
            seconds[name].append(elapsed)

    plain = statistics.median(seconds["plain PyTorch"])
    print()
    print(f"{'loop':<22}{'median s':>10}{'min s':>10}{'max s':>10}{'ms/step':>10}{'ratio':>8}")
    for name in names:
        median = statistics.median(seconds[name])
        print(
            f"{name:<22}{median:>10.3f}{min(seconds[name]):>10.3f}{max(seconds[name]):>10.3f}"
            f"{1000 * median / max(1, steps):>10.2f}{median / plain:>8.3f}"
        )
    print()
    for name in names[1:]:
        ratio = statistics.median(seconds[name]) / plain
        print(f"ratio arena/plain ({name.removeprefix('arena, ')}): {ratio:.3f}")
    difference = largest_difference(finals["arena, silent"], finals["plain PyTorch"])
    print(
        "final weights of arena and plain loops: "
        + ("identical" if difference == 0 else f"largest difference {difference:.3g}")
    )


if __name__ == "__main__":
    main()
