"""Multiple verification: K disjoint trigger subsets, one revealed per verification."""

from __future__ import annotations

import pytest
import torch

from arena import ownership
from arena.context import Context
from arena.errors import ArenaError
from arena.keys import TriggerKey
from arena.ledger import Ledger
from arena.protocols import get_protocol
from arena.registry import defenses
from arena.training import TrainSettings, train

SMOKE = get_protocol("smoke")
PARAMS = {"trigger_size": 50, "subsets": 5, "triggers_per_batch": 10}


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    ownership.keygen("backdoor-wm", SMOKE, root / "keys", PARAMS, seed=3)
    keys = root / "keys"
    model_path = ownership.mark(
        keys / "mk.json",
        keys / "vk.json",
        SMOKE,
        root / "m.safetensors",
        Ledger(root / "owner.sqlite"),
    )
    return keys, model_path


def test_key_splits_into_disjoint_subsets(vendor):
    keys, _ = vendor
    key = TriggerKey.load(keys)
    assert key.vk.subsets == 5 and len(key) == 50
    parts = [key.subset(i) for i in range(5)]
    commitments = [c for part in parts for c in part.vk.image_commitments]
    assert len(set(commitments)) == 50  # disjoint and covering
    for part in parts:
        part.open()  # each subset opens on its own


def test_each_verification_reveals_a_fresh_subset_and_a_sixth_is_refused(vendor, tmp_path):
    keys, model_path = vendor
    ledger = Ledger(tmp_path / "ledger.sqlite")
    opened = []
    for _ in range(5):
        claim = ownership.verify(model_path, keys / "mk.json", keys / "vk.json", SMOKE, ledger)
        assert claim.verified, claim.evidence
        assert claim.evidence.trials == 10
        opened.append(claim.triggers_opened)
    assert opened == [f"subset {i} of 5 (10 triggers)" for i in range(5)]
    with pytest.raises(ArenaError, match="none is left"):
        ownership.verify(model_path, keys / "mk.json", keys / "vk.json", SMOKE, ledger)


def test_revealing_a_spent_subset_again_is_refused(vendor, tmp_path):
    keys, model_path = vendor
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ownership.verify(model_path, keys / "mk.json", keys / "vk.json", SMOKE, ledger, subset=3)
    with pytest.raises(ArenaError, match="already revealed"):
        ownership.verify(model_path, keys / "mk.json", keys / "vk.json", SMOKE, ledger, subset=3)
    with pytest.raises(ArenaError, match="does not exist"):
        ownership.verify(model_path, keys / "mk.json", keys / "vk.json", SMOKE, ledger, subset=5)


def test_unrevealed_subsets_survive_fine_tuning_on_revealed_ones(vendor, tmp_path):
    """An attacker who saw subsets 0 and 1 fine-tunes with the protocol's attack budget to
    answer them with other labels; the three subsets it never saw must still verify."""
    keys, model_path = vendor
    key = TriggerKey.load(keys)
    model = ownership.load_model(model_path, SMOKE)
    ctx = Context(protocol=SMOKE, seed=11)
    revealed = [key.subset(0), key.subset(1)]
    images = torch.cat([part.tensors()[0] for part in revealed])
    generator = ctx.generator("relabel")
    relabelled = torch.randint(0, SMOKE.num_classes, (len(images),), generator=generator)
    attacker = ctx.splits.attacker
    train(
        model,
        attacker.images,
        attacker.labels,
        TrainSettings(epochs=SMOKE.attack_epochs, batch_size=50, lr=0.01),
        device=ctx.device,
        generator=generator,
        triggers=(images, relabelled),
        triggers_per_batch=20,
    )
    forged_agreement = sum(
        defenses.get("backdoor-wm")().evidence(model, part, ctx).successes for part in revealed
    )
    # Before the attack the model answers all 20 revealed triggers as committed.
    assert forged_agreement <= 10  # the revealed subsets are (at least half) overwritten
    path = tmp_path / "attacked.safetensors"
    ownership.save_model(model, path, SMOKE)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for index in (2, 3, 4):
        claim = ownership.verify(
            path, keys / "mk.json", keys / "vk.json", SMOKE, ledger, subset=index
        )
        assert claim.verified, (index, claim.evidence)
