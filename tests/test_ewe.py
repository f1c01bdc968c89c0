"""Entangled watermarks (``ewe``, Jia et al., USENIX Security 2021): the soft nearest
neighbour loss, the key's structure, the parameters refused, and on ``smoke`` that the
objective entangles triggers with the target class and that the mark verifies."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.models import create_model
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.training import accuracy
from arena.storage.clean import trained_clean
from arena.util.errors import ArenaError
from defenses.ewe import (
    EntanglingLoss,
    captured_features,
    default_layers,
    soft_nearest_neighbour_loss,
)

SMOKE = get_protocol("smoke")
CPU = torch.device("cpu")


def ewe(**params):
    return defenses.get("ewe")(params)


def smoke_context(seed: int = 0, **changes) -> Context:
    return Context(protocol=SMOKE, seed=seed, device=CPU, **changes)


# --- the soft nearest neighbour loss ------------------------------------------------------


def naive_snnl(features: torch.Tensor, groups: torch.Tensor, temperature: float) -> float:
    """Frosst et al.'s formula written out, row by row, on rectified cosine distances."""
    vectors = F.normalize(F.relu(features), dim=1)
    total = 0.0
    for i in range(len(vectors)):
        weights = {
            j: math.exp(-(1 - float(vectors[i] @ vectors[j])) / temperature)
            for j in range(len(vectors))
            if j != i
        }
        own = sum(w for j, w in weights.items() if groups[j] == groups[i])
        total -= math.log(own / sum(weights.values()))
    return total / len(vectors)


def test_snnl_is_frosst_et_al_formula():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(9, 5, generator=generator)
    groups = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1])
    for temperature in (0.1, 1.0, 5.0):
        got = float(soft_nearest_neighbour_loss(features, groups, temperature))
        assert got == pytest.approx(naive_snnl(features, groups, temperature), rel=1e-5)


def test_snnl_is_low_for_separated_clusters_and_high_for_mixed_ones():
    generator = torch.Generator().manual_seed(1)
    noise = 0.05 * torch.randn(40, 8, generator=generator)
    apart = torch.cat([torch.eye(8)[0].expand(20, 8), torch.eye(8)[1].expand(20, 8)]) + noise
    groups = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    separated = float(soft_nearest_neighbour_loss(apart, groups, 0.1))
    assert separated < 0.01
    # The same points with the groups alternating within both clusters: of a point's 19
    # near neighbours 9 are of its group, so the loss is near -log(9/19) (log 2, fully mixed,
    # for large clusters).
    mixed_groups = torch.arange(40) % 2
    mixed = float(soft_nearest_neighbour_loss(apart, mixed_groups, 0.1))
    assert mixed == pytest.approx(-math.log(9 / 19), abs=0.03)
    # A flat kernel (high temperature) sees every pair alike: mixed whatever the clusters.
    assert float(soft_nearest_neighbour_loss(apart, groups, 100.0)) > 0.6


def test_the_objective_is_cross_entropy_minus_the_weighted_snnl_of_triggers_and_targets():
    model = create_model(SMOKE.model, 10, 1, 16)
    model.eval()  # the same features on every forward pass
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(14, 1, 16, 16, generator=generator)
    labels = torch.tensor([1, 3, 1, 4, 1, 5, 6, 7, 8, 9, 1, 1, 1, 1])  # 4 rows appended
    appended = 4
    plain = EntanglingLoss(target_class=1, weight=0.0, temperature=0.5, temperature_lr=0.0)
    entangling = EntanglingLoss(target_class=1, weight=3.0, temperature=0.5, temperature_lr=0.0)
    cross_entropy = float(plain(model, images, labels, appended).detach())
    expected = F.cross_entropy(model(images), labels)
    assert cross_entropy == pytest.approx(float(expected.detach()))
    layers = default_layers(model)
    with torch.no_grad(), captured_features(model, layers) as features:
        model(images)
    rows = torch.tensor([10, 11, 12, 13, 0, 2, 4])  # the triggers, then the batch's 1s
    groups = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    snnl = sum(
        float(soft_nearest_neighbour_loss(feature[rows].flatten(1), groups, 0.5))
        for feature in features
    )
    got = float(entangling(model, images, labels, appended).detach())
    assert got == pytest.approx(cross_entropy - 3.0 * snnl, rel=1e-4)
    # Fewer than two target-class rows in the batch: nothing to entangle with.
    lonely = labels.clone()
    lonely[[2, 4]] = 0
    alone = entangling(model, images, lonely, appended).detach()
    expected = F.cross_entropy(model(images), lonely).detach()
    assert float(alone) == pytest.approx(float(expected), rel=1e-5)


def test_the_temperatures_descend_the_snnl():
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(12, 6, generator=generator) for _ in range(2)]
    groups = torch.arange(12) % 3 == 0
    loss = EntanglingLoss(target_class=1, weight=1.0, temperature=1.0, temperature_lr=0.5)
    before = loss.temperatures(2, CPU).exp()
    loss.adapt_temperatures(features, groups.long())
    after = loss.log_temperatures.exp()
    assert not torch.equal(before, after) and (after > 0).all()
    for feature, old, new in zip(features, before, after):
        assert soft_nearest_neighbour_loss(feature, groups.long(), new) < (
            soft_nearest_neighbour_loss(feature, groups.long(), old)
        )


def test_default_layers_are_the_last_two_stages_and_the_output_layer_input():
    small = create_model(SMOKE.model, 10, 1, 16)
    assert default_layers(small) == ["layer3", "layer4", "pre-logits"]
    assert default_layers(create_model("resnet18", 10, 1, 32)) == [
        "layer3",
        "layer4",
        "pre-logits",
    ]
    efficient = create_model("test_efficientnet.r160_in1k", 10, 1, 16)
    with captured_features(efficient, default_layers(efficient)) as features:
        logits = efficient(torch.rand(3, 1, 16, 16))
    assert len(features) == 3 and all(len(feature) == 3 for feature in features)
    assert features[-1].shape == (3, efficient.get_classifier().in_features)
    assert logits.shape == (3, 10)
    with pytest.raises(ArenaError, match="no layer 'layer9'"):
        with captured_features(small, ["layer9"]):
            pass


# --- the key ------------------------------------------------------------------------------


def test_triggers_are_source_images_with_one_keyed_patch_and_the_target_label():
    key = ewe().keygen(smoke_context(seed=4))
    key.open()
    assert (key.labels == 1).all() and len(key) == SMOKE.trigger_size
    assert key.controls is not None and (key.controls.labels == 7).all()
    owner = smoke_context().splits.owner
    sevens = {
        image.tobytes()
        for image in (owner.images[owner.labels == 7].numpy() * 255).round().astype(np.uint8)
    }
    assert all(control.tobytes() in sevens for control in key.controls.images)
    changed = (key.images != key.controls.images).any(axis=(0, 1))  # pixels any patch touched
    rows, columns = np.nonzero(changed)
    assert rows.max() - rows.min() < 3 and columns.max() - columns.min() < 3  # one 3x3 square
    top, left = rows.min(), columns.min()
    patches = key.images[..., top : top + 3, left : left + 3]
    assert (patches == patches[:1]).all()  # the same pattern on every trigger
    assert set(np.unique(patches)) == {0, 255}
    assert len({image.tobytes() for image in key.images}) == len(key)
    other = ewe().keygen(smoke_context(seed=5))
    other.open()
    assert not np.array_equal(other.images, key.images)
    again = ewe().keygen(smoke_context(seed=4))
    again.open()
    assert np.array_equal(again.images, key.images)


def test_a_model_answering_the_target_to_everything_is_not_claimed():
    class Constant(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.ones(len(images), dtype=torch.long), 10).float()

    defense = ewe()
    key = defense.keygen(smoke_context(seed=6))
    assert defense.evidence(Constant(), key, smoke_context()).successes == 0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"source_class": 3, "target_class": 3}, "both 3"),
        ({"layers": " , "}, "names no layer"),
        ({"snnl_weight": -1}, "snnl_weight must be >= 0"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
    ],
)
def test_invalid_parameters_are_refused(params, message):
    with pytest.raises(ArenaError, match=message):
        ewe(**params)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"target_class": 10}, "target_class 10 does not exist"),
        ({"source_class": 12}, "source_class 12 does not exist"),
        ({"patch_size": 16}, "covers the whole 16x16 image"),
        ({"trigger_size": 500}, "fewer than the 500 distinct triggers"),
    ],
)
def test_keys_the_protocol_cannot_hold_are_refused(params, message):
    with pytest.raises(ArenaError, match=message):
        ewe(**params).keygen(smoke_context())


def test_an_attacker_with_few_source_images_draws_a_smaller_key():
    attacker = smoke_context()
    sevens = int((attacker.splits.owner.labels == 7).sum())
    assert ewe(trigger_size=sevens + 5).for_data(attacker).params.trigger_size == sevens
    assert ewe().for_data(attacker).params.trigger_size is None


# --- on smoke: it entangles, and it verifies -----------------------------------------------


def entanglement(model: torch.nn.Module, key, ctx: Context) -> float:
    """The SNNL at T = 0.1, averaged over the marked layers, between the key's triggers and
    as many of the owner's target-class images: log 2 is fully mixed, 0 fully apart."""
    owner = ctx.splits.owner
    targets = owner.images[owner.labels == int(key.labels[0])][: len(key)]
    triggers = to_model_input(key.images, SMOKE.image_size, SMOKE.channels)
    groups = torch.cat([torch.ones(len(triggers)), torch.zeros(len(targets))]).long()
    model.eval()
    with torch.no_grad(), captured_features(model, default_layers(model)) as features:
        model(torch.cat([triggers, targets]))
    return float(
        np.mean([soft_nearest_neighbour_loss(feature, groups, 0.1) for feature in features])
    )


@pytest.fixture(scope="module")
def marked_on_smoke(train_seed):
    """The clean model of ``train_seed``, and it marked with the SNNL term and without."""
    ctx = smoke_context(train_seed)
    clean = trained_clean(ctx)
    ctx = smoke_context(train_seed, clean=lambda: clean)
    defense, plain = ewe(), ewe(snnl_weight=0)
    key = defense.keygen(ctx)
    marked = defense.mark(copy.deepcopy(clean), key, ctx)
    unentangled = plain.mark(copy.deepcopy(clean), key, ctx)
    return {"ctx": ctx, "clean": clean, "marked": marked, "plain": unentangled, "key": key}


def test_the_objective_entangles_triggers_with_the_target_class(marked_on_smoke):
    ctx, key = marked_on_smoke["ctx"], marked_on_smoke["key"]
    entangled = entanglement(marked_on_smoke["marked"], key, ctx)
    apart = entanglement(marked_on_smoke["plain"], key, ctx)
    # Seeds 0-2: 0.66-0.70 with the SNNL term, 0.04-0.39 without (0.01-0.03 clean).
    assert entangled > 0.5 and entangled > apart + 0.15, (entangled, apart)


def test_the_marked_model_verifies_and_the_clean_one_does_not(marked_on_smoke):
    ctx, key = marked_on_smoke["ctx"], marked_on_smoke["key"]
    defense = ewe()
    marked = defense.evidence(marked_on_smoke["marked"], key, ctx)
    clean = defense.evidence(marked_on_smoke["clean"], key, ctx)
    # Seeds 0-2: 19-20 of 20 marked, 0 clean; the nominal null needs 7 at alpha 0.01.
    assert marked.verified and marked.successes >= 15, marked
    assert not clean.verified and clean.successes <= 2, clean
    test = ctx.splits.test
    clean_acc = accuracy(marked_on_smoke["clean"], test.images, test.labels, CPU)
    marked_acc = accuracy(marked_on_smoke["marked"], test.images, test.labels, CPU)
    assert marked_acc >= clean_acc - 0.07, (marked_acc, clean_acc)
