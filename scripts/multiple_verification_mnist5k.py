"""Multiple verification on mnist5k: a key of 5 disjoint subsets of 100 triggers.

Marks a model with it, verifies five times (each reveals a fresh subset), shows that a
sixth is refused, then fine-tunes the model with the protocol's attack budget on the
attacker's split plus the two revealed subsets relabelled at random, and verifies the
three unrevealed subsets on the result. Prints every figure. Minutes on a CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.training import TrainSettings, train
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import Ledger
from arena.util.errors import ArenaError


def main() -> None:
    protocol = get_protocol("mnist5k")
    root = Path(tempfile.mkdtemp(prefix="multiple-verification-"))
    keys = root / "keys"
    ownership.keygen("backdoor-wm", protocol, keys, {"trigger_size": 500, "subsets": 5}, seed=0)
    model_path = ownership.mark(
        keys / "mk.json",
        keys / "vk.json",
        protocol,
        root / "m.safetensors",
        Ledger(root / "owner.sqlite"),
        # Five times the triggers of a single key need about five times the showings.
        params={"triggers_per_batch": 40, "epochs": 8},
    )
    ledger = Ledger(root / "verifier.sqlite")
    for _ in range(5):
        claim = ownership.verify(model_path, keys / "mk.json", keys / "vk.json", protocol, ledger)
        print(f"{claim.triggers_opened}: {claim.evidence.summary()}")
    try:
        ownership.verify(model_path, keys / "mk.json", keys / "vk.json", protocol, ledger)
    except ArenaError as error:
        print(f"sixth verification refused: {error}")

    key = TriggerKey.load(keys)
    defense = defenses.get("backdoor-wm")()
    ctx = Context(protocol=protocol, seed=1)
    model = modelfile.load_model(model_path, protocol)
    revealed = [key.subset(0), key.subset(1)]
    images = torch.cat([part.tensors()[0] for part in revealed])
    generator = ctx.generator("relabel")
    relabelled = torch.randint(0, protocol.num_classes, (len(images),), generator=generator)
    before = sum(defense.evidence(model, part, ctx).successes for part in revealed)
    attacker = ctx.splits.attacker
    settings = TrainSettings(epochs=protocol.attack_epochs, batch_size=64, lr=0.01)
    train(
        model,
        attacker.images,
        attacker.labels,
        settings,
        device=ctx.device,
        generator=generator,
        triggers=(images, relabelled),
        triggers_per_batch=20,
    )
    after = sum(defense.evidence(model, part, ctx).successes for part in revealed)
    print(
        f"revealed subsets 0-1, committed answers: {before}/200 before, {after}/200 after "
        f"fine-tuning on them relabelled ({settings.epochs} epochs, lr {settings.lr})"
    )
    for index in (2, 3, 4):
        evidence = defense.evidence(model, key.subset(index), ctx)
        print(f"unrevealed subset {index}: {evidence.summary()}")


if __name__ == "__main__":
    main()
