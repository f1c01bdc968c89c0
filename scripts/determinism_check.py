"""Train a protocol's clean model and print the SHA-256 of its weights.

Run it twice, or under two settings, and compare the hashes: equal hashes mean the two
runs trained the same weights to the bit. For example (the README's "Reproducibility"
figures):

    python scripts/determinism_check.py --threads 1
    python scripts/determinism_check.py --threads 2
    ATEN_CPU_CAPABILITY=avx2 python scripts/determinism_check.py --threads 1
    python scripts/determinism_check.py --protocol mnist5k --epochs 1

The model is the one a match trains as its clean model (``arena.clean.train_clean`` on the
protocol's owner split, seed 0 by default), trained here without the artifact cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time

import torch
from torch import nn

from arena.core.context import Context
from arena.core.environment import apply_deterministic_defaults, environment
from arena.core.protocols import get_protocol
from arena.core.training import accuracy
from arena.storage.clean import train_clean


def state_digest(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="smoke")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="[default: arena's]")
    parser.add_argument("--epochs", type=int, default=None, help="[default: the protocol's]")
    parser.add_argument(
        "--no-deterministic",
        action="store_true",
        help="leave torch.use_deterministic_algorithms off (only set the threads)",
    )
    args = parser.parse_args()

    apply_deterministic_defaults(args.threads)
    if args.no_deterministic:
        torch.use_deterministic_algorithms(False)
    protocol = get_protocol(args.protocol)
    if args.epochs is not None:
        training = dataclasses.replace(protocol.training, epochs=args.epochs)
        protocol = dataclasses.replace(protocol, training=training)
    ctx = Context(protocol=protocol, seed=args.seed)
    ctx.splits  # noqa: B018 (load the data before the clock starts)
    model = ctx.owner_model()
    started = time.perf_counter()
    train_clean(model, ctx)
    seconds = time.perf_counter() - started
    facts = environment(ctx.device)
    test = ctx.splits.test
    print(
        json.dumps(
            {
                "sha256": state_digest(model),
                "train_seconds": round(seconds, 2),
                "test_acc": accuracy(model, test.images, test.labels, ctx.device),
                "protocol": protocol.name,
                "epochs": protocol.training.epochs,
                "seed": args.seed,
                **{key: facts[key] for key in ("device_kind", "threads", "cpu_capability")},
                "deterministic_algorithms": facts["deterministic_algorithms"],
                "torch": facts["torch"],
            }
        )
    )


if __name__ == "__main__":
    main()
