"""BlackMarks (Chen, Rouhani, Koushanfar 2019): the class encoding, the key images, the key
with its committed cluster map, the bit loss, and on smoke: the marked model decodes the
signature and clean models do not."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.training import accuracy, predict
from arena.storage.clean import trained_clean
from arena.util.errors import ArenaError, KeyTamperedError
from defenses.blackmarks import BlackMarksKey, class_groups, decode, two_means

SMOKE = get_protocol("smoke")


@pytest.fixture(scope="module")
def owner(train_seed):
    """The owner's clean smoke model of the train seed, its context, and a key drawn on it."""
    ctx = Context(protocol=SMOKE, seed=train_seed)
    ctx = dataclasses.replace(ctx, clean=functools.cache(lambda: trained_clean(ctx)))
    defense = defenses.get("blackmarks")()
    return ctx, defense, defense.keygen(ctx)


def _random_key(bits: int = 8, subsets: int = 1) -> BlackMarksKey:
    rng = np.random.default_rng(0)
    groups = np.array([0, 1] * 5, dtype=np.uint8)
    images = rng.integers(0, 256, (2, bits, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, (2, bits))
    controls = (images[1], labels[1])
    return BlackMarksKey.create("blackmarks", 10, images[0], labels[0], groups, subsets, controls)


class _Constant(nn.Module):
    """A degenerate model: the same class for every input."""

    def __init__(self, answer: int) -> None:
        super().__init__()
        self.answer = answer
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full((len(images),), self.answer), 10).float() + 0 * self.anchor


# --- the encoding --------------------------------------------------------------------------


def test_two_means_finds_two_clusters_the_same_way_every_time():
    rng = np.random.default_rng(0)
    near, far = rng.normal(0, 0.1, (4, 3)), rng.normal(5, 0.1, (6, 3))
    points = np.concatenate([far[:2], near, far[2:]])
    groups = two_means(points)
    assert groups.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]  # point 0's group is group 0
    assert (two_means(points) == groups).all()
    with pytest.raises(ArenaError, match="same mean output"):
        two_means(np.ones((4, 3)))


def test_a_trained_model_splits_its_classes_in_two_deterministically(owner):
    ctx, _, key = owner
    groups = class_groups(ctx.clean_model(), ctx)
    assert groups.shape == (10,) and set(groups.tolist()) == {0, 1}
    assert (class_groups(ctx.clean_model(), ctx) == groups).all()
    assert (key.groups == groups).all()  # the key commits to the clean model's encoding


# --- the key -------------------------------------------------------------------------------


def test_key_images_are_owner_images_moved_a_little_that_the_clean_model_decodes_wrong(owner):
    ctx, defense, key = owner
    assert len(key) == defense.params.bits == 64
    assert (key.bits == key.groups[key.labels]).all() and set(key.bits.tolist()) == {0, 1}
    clean = ctx.clean_model()
    images, _ = key.tensors()
    # The paper's intent: the unmarked model decodes every key image as the opposite bit.
    answers = predict(clean, images, ctx.device).numpy()
    assert (decode(answers, key.groups) == 1 - key.bits).all()
    assert defense.evidence(clean, key, ctx).successes == 0
    # Each control is the owner image its key image was crafted from, with its true label:
    # a class of the other group, which the clean model answers right.
    sources, true_labels = key.controls.tensors()
    split = ctx.splits.owner
    distance = (sources.flatten(1)[:, None, :] - split.images.flatten(1)[None]).abs().amax(-1)
    assert (distance.min(dim=1).values <= 1 / 255).all()  # quantized to uint8
    assert (split.labels[distance.argmin(dim=1)] == true_labels).all()
    assert (key.groups[true_labels.numpy()] == 1 - key.bits).all()
    assert (predict(clean, sources, ctx.device) == true_labels).all()
    moved = (images - sources).abs().flatten(1).amax(dim=1)
    assert (moved <= defense.params.eps + 1 / 255).all() and (moved > 0).all()


def test_a_model_answering_one_class_decodes_no_bit_with_controls_half_without(owner):
    ctx, defense, key = owner
    undefended = BlackMarksKey.create("blackmarks", 10, key.images, key.labels, key.groups)
    for answer in (0, 7):
        assert defense.evidence(_Constant(answer), key, ctx).successes == 0
        # The paper's decoding alone: every bit of the answer's group, about half.
        half = defense.evidence(_Constant(answer), undefended, ctx).successes
        assert half == int((key.bits == key.groups[answer]).sum()) > 0
    shown = key.exhibit()
    assert (shown.bits == key.bits).all() and len(shown.controls[0]) == len(key)


def test_the_key_saves_loads_and_opens_its_cluster_map(tmp_path):
    key = _random_key()
    key.save(tmp_path)
    loaded = BlackMarksKey.load(tmp_path)
    assert (loaded.groups == key.groups).all() and (loaded.labels == key.labels).all()
    assert (loaded.images == key.images).all() and (loaded.bits == key.bits).all()
    assert type(loaded.controls) is TriggerKey
    assert (loaded.controls.images == key.controls.images).all()
    assert loaded.fingerprint == key.fingerprint
    assert BlackMarksKey.public_fingerprint(tmp_path / "vk.json") == key.fingerprint
    # The map is bound by the public key: it is part of the key's identity.
    other = _random_key()
    assert other.fingerprint != key.fingerprint
    assert not BlackMarksKey.public_verification


@pytest.mark.parametrize(
    "file, change, message",
    [
        ("mk.json", lambda r: r.update(groups="1010101010"), "cluster map does not open"),
        ("mk.json", lambda r: r.update(groups="0101"), "one group, 0 or 1, for each of 10"),
        ("mk.json", lambda r: r.pop("groups_nonce"), "malformed"),
        ("vk.json", lambda r: r.update(groups="0" * 64), "cluster map does not open"),
        ("vk.json", lambda r: r.pop("groups"), "commits to no cluster map"),
    ],
)
def test_a_key_whose_cluster_map_was_altered_does_not_open(tmp_path, file, change, message):
    _random_key().save(tmp_path)
    record = json.loads((tmp_path / file).read_text())
    change(record)
    (tmp_path / file).write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match=message):
        BlackMarksKey.load(tmp_path)


def test_a_plain_trigger_key_is_no_blackmarks_key(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 1, 16, 16), dtype=np.uint8)
    plain = TriggerKey.create("blackmarks", 10, images, np.arange(4))
    plain.save(tmp_path)
    with pytest.raises(KeyTamperedError, match="commits to no cluster map"):
        BlackMarksKey.load(tmp_path)
    defense, ctx = defenses.get("blackmarks")(), Context(protocol=SMOKE)
    with pytest.raises(ArenaError, match="has none: generate a blackmarks key"):
        defense.evidence(ctx.new_model(), plain, ctx)


def test_a_forgers_key_is_a_blackmarks_key_judged_on_its_evidence(tmp_path):
    """Forgeries build a plain trigger key; ``forged`` makes it one of the victim's kind
    (a map of the forger's), so the claim is judged on the bits it decodes, not refused
    because the file lacks a map."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    labels = np.array([0, 3, 5, 7, 9, 2])
    controls = (rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8), np.arange(6))
    plain = TriggerKey.create("blackmarks", 10, images, labels, controls=controls)
    forged = BlackMarksKey.forged(plain, np.random.default_rng(2))
    forged.save(tmp_path / "fresh")
    loaded = BlackMarksKey.load(tmp_path / "fresh")  # every commitment opens, the map's too
    assert (loaded.labels == labels).all() and loaded.groups[0] == 0
    assert set(loaded.groups) == {0, 1} and (loaded.bits == loaded.groups[labels]).all()
    assert type(loaded.controls) is TriggerKey and (loaded.controls.labels == np.arange(6)).all()
    # A model answering each forged image with its label decodes every bit: a forger's map
    # is as good as any, and the ownership protocol, not the format, must stop the claim.
    answers = np.array(labels)
    assert (decode(answers, loaded.groups) == loaded.bits).all()
    # Around the victim's published key the map's commitment stays the victim's, which the
    # forger's guessed map does not open.
    victim = _random_key(bits=6)
    victim.save(tmp_path / "victim")
    record = json.loads((tmp_path / "victim" / "vk.json").read_text())
    reused = BlackMarksKey.forged(dataclasses.replace(plain, vk=victim.vk), rng, record)
    assert reused.vk.groups_commitment == victim.vk.groups_commitment
    with pytest.raises(KeyTamperedError):
        reused.open()


def test_subsets_keep_the_cluster_map_and_their_controls():
    key = _random_key(bits=8, subsets=2)
    second = key.subset(1)
    second.open()
    assert len(second) == 4 and (second.groups == key.groups).all()
    assert (second.labels == key.labels[4:]).all()
    assert (second.controls.labels == key.controls.labels[4:]).all()


def test_bits_decode_through_the_map_and_unknown_classes_match_nothing():
    groups = np.array([0, 1, 1, 0], dtype=np.uint8)
    assert decode(np.array([0, 1, 2, 3, 4, -1]), groups).tolist() == [0, 1, 1, 0, -1, -1]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"bits": 10, "subsets": 3}, "10 bits do not split into 3 equal subsets"),
        ({"bits": 0}, "bits must lie in"),
        ({"eps": 0}, "eps must lie in"),
        ({"eps": 1.5}, "eps must lie in"),
        ({"steps": 0}, "steps must lie in"),
        ({"strength": -1}, "strength must be >= 0"),
        ({"controls": "maybe"}, "expected true or false"),
        ({"epsilon": 0.1}, "did you mean 'eps'"),
    ],
)
def test_bad_params_are_refused(params, message):
    with pytest.raises(ArenaError, match=message):
        defenses.get("blackmarks")(params)


# --- the loss ------------------------------------------------------------------------------


def test_the_bit_loss_adds_minus_log_p_of_the_bits_group_on_key_images_only():
    key = _random_key()
    defense = defenses.get("blackmarks")({"strength": 0.5})
    ctx = Context(protocol=SMOKE, device=torch.device("cpu"))
    objective = defense.objective(key, ctx)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    images = torch.rand(6, 1, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = model(images)
    task = F.cross_entropy(logits, labels)
    assert torch.isclose(objective(model, images, labels, 0), task)
    group_of_label = torch.as_tensor(key.groups)[labels[-2:]]
    in_group = torch.as_tensor(key.groups)[None, :] == group_of_label[:, None]
    p_group = (logits[-2:].softmax(dim=1) * in_group).sum(dim=1)
    expected = task - 0.5 * p_group.log().mean()
    assert torch.isclose(objective(model, images, labels, 2), expected, atol=1e-6)
    assert defenses.get("blackmarks")({"strength": 0}).objective(key, ctx) is None


# --- on smoke ------------------------------------------------------------------------------


def test_the_marked_model_decodes_the_signature_and_clean_models_do_not(owner, train_seed):
    ctx, defense, key = owner
    clean = ctx.clean_model()
    marked = defense.mark(copy.deepcopy(clean), key, ctx)
    evidence = defense.evidence(marked, key, ctx)
    assert evidence.null_p == 0.5 and evidence.trials == 64
    assert evidence.successes >= 48 and evidence.verified, evidence.summary()  # 57-64 seen
    test = ctx.splits.test
    drop = accuracy(clean, test.images, test.labels, ctx.device) - accuracy(
        marked, test.images, test.labels, ctx.device
    )
    assert drop <= SMOKE.delta
    # A clean model of another seed: the key images partly transfer, far from the mark.
    stranger = trained_clean(Context(protocol=SMOKE, seed=train_seed + 100))
    assert defense.evidence(stranger, key, ctx).successes <= 16  # 0-8 of 64 seen
