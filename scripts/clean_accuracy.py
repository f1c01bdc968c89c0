"""Test accuracy of a protocol's clean model, per seed and epoch count: the figures behind
a protocol's training budget (README, "Protocols").

    python scripts/clean_accuracy.py --protocol mnist5k --epochs 30 --seed 0 --seed 1
    python scripts/clean_accuracy.py --epochs 15 --label-smoothing 0.1 --seed 0

Trains with the arena's ``train_clean`` (the protocol's recipe, its epochs and any recipe
option given here replaced) at the ``arena`` command's settings
(``apply_deterministic_defaults``), nothing cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from arena.core.context import Context
from arena.core.environment import apply_deterministic_defaults
from arena.core.protocols import PROTOCOLS, get_protocol
from arena.core.training import accuracy
from arena.storage.clean import train_clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mnist5k", choices=sorted(PROTOCOLS))
    parser.add_argument(
        "--epochs", type=int, action="append", help="repeatable [default: the protocol's]"
    )
    parser.add_argument("--seed", type=int, action="append", help="repeatable [default: 0]")
    parser.add_argument("--lr", type=float, help="[default: the protocol's]")
    parser.add_argument("--batch-size", type=int, help="[default: the protocol's]")
    parser.add_argument("--label-smoothing", type=float, help="[default: the protocol's]")
    args = parser.parse_args()
    recipe = {
        name: value
        for name, value in (
            ("lr", args.lr),
            ("batch_size", args.batch_size),
            ("label_smoothing", args.label_smoothing),
        )
        if value is not None
    }
    threads = apply_deterministic_defaults()
    base = get_protocol(args.protocol)
    for epochs in args.epochs or [base.training.epochs]:
        protocol = dataclasses.replace(
            base, training=dataclasses.replace(base.training, epochs=epochs, **recipe)
        )
        for seed in args.seed or [0]:
            ctx = Context(protocol=protocol, seed=seed)
            model = ctx.owner_model()
            start = time.perf_counter()
            train_clean(model, ctx)
            test = ctx.splits.test
            acc = accuracy(model, test.images, test.labels, ctx.device)
            print(
                f"{base.label}, {epochs} epochs{''.join(f', {k}={v}' for k, v in recipe.items())}, "
                f"seed {seed}: test accuracy {acc:.4f} "
                f"({time.perf_counter() - start:.1f} s, {threads} threads)",
                flush=True,
            )


if __name__ == "__main__":
    main()
