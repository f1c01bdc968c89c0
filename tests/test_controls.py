"""Single-target schemes pair every trigger with a committed control input, so a model that
answers the target class to everything is not taken for a marked one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.ownership.public import make_proof, open_proof
from arena.util.errors import ArenaError, KeyTamperedError

SMOKE = get_protocol("smoke")
SINGLE_TARGET = ("content", "noise", "unrelated", "ewe")


class Constant(nn.Module):
    """A model that failed to learn: it answers ``label`` to every input."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.logits[label] = 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1)


class Oracle(nn.Module):
    """Answers ``answers[i]`` to the i-th image it has been shown (by exact pixels)."""

    def __init__(self, images: np.ndarray, answers: np.ndarray) -> None:
        super().__init__()
        self.table = {image.tobytes(): int(a) for image, a in zip(images, answers)}
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(images), 10)
        for row, image in enumerate(images):
            key = (image * 255).round().to(torch.uint8).numpy().tobytes()
            logits[row, self.table.get(key, 9)] = 1.0
        return logits


def classes(name: str) -> tuple[int | None, int]:
    """The scheme's (source, target) classes: its triggers are source-class images
    relabelled to the target (``unrelated``'s come from no class of the task: None)."""
    params = defenses.get(name)().params
    return getattr(params, "source_class", None), params.target_class


def keygen(name: str, seed: int = 1):
    defense = defenses.get(name)()
    return defense, defense.keygen(Context(protocol=SMOKE, seed=seed))


@pytest.mark.parametrize("name", SINGLE_TARGET)
def test_every_trigger_has_a_committed_control_with_its_true_label(name):
    _, key = keygen(name)
    source, target = classes(name)
    assert key.controls is not None and len(key.controls) == len(key)
    assert key.vk.controls is not None and "controls" in key.vk.to_dict()
    assert set(key.labels.tolist()) == {target}
    assert target not in set(key.controls.labels.tolist())  # controls are of other classes
    key.open()
    if name != "unrelated":  # the control is the trigger's own source image, unmarked
        assert set(key.controls.labels.tolist()) == {source}
        assert not np.array_equal(key.images, key.controls.images)


@pytest.mark.parametrize("name", SINGLE_TARGET)
def test_a_model_answering_the_target_to_everything_is_not_claimed(name):
    defense, key = keygen(name)
    _, target = classes(name)
    ctx = Context(protocol=SMOKE)
    evidence = defense.evidence(Constant(target), key, ctx)
    assert evidence.successes == 0
    # Without the control, every trigger would have counted.
    answered = defense.answered(Constant(target), key.select(range(len(key))), ctx)
    assert int(answered.sum()) == 0
    targets = torch.full((len(key),), target, dtype=torch.long)
    assert int((targets == key.tensors()[1]).sum()) == len(key)


@pytest.mark.parametrize("name", SINGLE_TARGET)
def test_a_trigger_counts_only_with_its_control_answered_right(name):
    defense, key = keygen(name)
    images = np.concatenate([key.images, key.controls.images])
    half = len(key) // 2
    control_answers = key.controls.labels.copy()
    control_answers[:half] = (control_answers[:half] + 1) % 10  # the first half wrong
    model = Oracle(images, np.concatenate([key.labels, control_answers]))
    evidence = defense.evidence(model, key, Context(protocol=SMOKE))
    assert evidence.successes == len(key) - half


def test_keys_without_controls_keep_their_identity_and_format():
    _, key = keygen("backdoor-wm")
    assert key.controls is None and "controls" not in key.vk.to_dict()


def test_controls_round_trip_through_files_and_are_bound_by_commitments(tmp_path):
    _, key = keygen("content")
    key.save(tmp_path / "k")
    loaded = TriggerKey.load(tmp_path / "k")
    assert loaded.fingerprint == key.fingerprint
    assert np.array_equal(loaded.controls.images, key.controls.images)
    mk = tmp_path / "k" / "mk.json"
    record = json.loads(mk.read_text())
    record["controls"][3]["label"] = (record["controls"][3]["label"] + 1) % 10
    mk.write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="control of trigger 3"):
        TriggerKey.load(tmp_path / "k")
    del record["controls"]
    mk.write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="controls"):
        TriggerKey.load(tmp_path / "k")


def test_a_public_proof_opens_the_controls_of_its_subset():
    defense = defenses.get("content")({"subsets": 2})
    key = defense.keygen(Context(protocol=SMOKE, seed=2))
    opened = open_proof(make_proof(key, 1), key.vk)
    assert np.array_equal(opened.controls.images, key.controls.images[len(key) // 2 :])
    proof = make_proof(key, 0)
    proof["openings"][0]["control"]["label"] = 7
    with pytest.raises(KeyTamperedError):
        open_proof(proof, key.vk)


def test_a_single_target_key_without_controls_is_refused():
    defense, key = keygen("noise")
    bare = TriggerKey.create("noise", 10, key.images, key.labels)
    with pytest.raises(ArenaError, match="pairs every trigger with a control"):
        defense.evidence(Constant(0), bare, Context(protocol=SMOKE))
