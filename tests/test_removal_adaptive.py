"""Laundering, data-free removal and the adaptive attacks (issue 20), on ``smoke``.

Tests that assert a training outcome take ``train_seed``; their margins were checked on
seeds 0, 1 and 2 (``--train-seed N``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arena.core.context import Context, Victim
from arena.core.models import clone_model
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.training import accuracy, predict_logits, train
from arena.util.errors import ArenaError
from attacks.removal import launder as launder_module
from attacks.removal.adaptive_ood import AdaptiveOod, choose_outliers, features_and_logits
from attacks.removal.adaptive_subspace import AdaptiveSubspace
from attacks.removal.data_free import DataFree
from attacks.removal.launder import Laundering, channel_means
from attacks.removal.reversal import stamp as stamp_trigger
from tests.backdoors import TARGET, backdoored_model, small_stamp

patch = small_stamp


@pytest.fixture(scope="module")
def ctx(train_seed) -> Context:
    return Context(protocol=get_protocol("smoke"), seed=train_seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def clean(ctx):
    owner = ctx.splits.owner
    model = ctx.new_model("clean")
    train(
        model,
        owner.images,
        owner.labels,
        ctx.protocol.training,
        device=ctx.device,
        generator=ctx.generator("clean"),
    )
    return model


@pytest.fixture(scope="module")
def backdoored(ctx):
    return backdoored_model(ctx, patch)


def test_accuracy(model, ctx) -> float:
    test = ctx.splits.test
    return accuracy(model, test.images, test.labels, ctx.device)


test_accuracy.__test__ = False  # a helper, not a test


def backdoor_success(model, ctx) -> float:
    test = ctx.splits.test
    keep = test.labels != TARGET
    return accuracy(
        model, patch(test.images[keep]), torch.full((int(keep.sum()),), TARGET), ctx.device
    )


# --- launder ----------------------------------------------------------------------------


def test_launder_reconstructs_triggers_resets_the_channels_they_excite_and_retrains(
    ctx, backdoored
):
    before = backdoor_success(backdoored, ctx)
    assert before > 0.9
    attack = Laundering()
    model = clone_model(backdoored)
    outcome = attack.run(model, ctx)
    info = outcome.info

    # Reconstructed inputs: every class's trigger works, and the backdoor's is the smallest.
    norms = info["mask_l1_norms"]
    assert min(info["reversed_trigger_success"]) > 0.8, info["reversed_trigger_success"]
    assert min(range(len(norms)), key=norms.__getitem__) == TARGET, norms
    assert norms[TARGET] < 0.6 * sorted(norms)[1], norms

    # Reset channels: in the last two convolutions, at most 10% of each, each one excited
    # past the ratio by some reconstructed trigger, and still zero after retraining.
    reset = info["reset_channels"]
    assert list(reset) == launder_module.last_convolutions(backdoored, 2)
    assert sum(map(len, reset.values())) > 0
    images = ctx.splits.attacker.images
    clean_means = channel_means(backdoored, list(reset), images, ctx.device)
    reversal = Laundering().params.reversal()
    masks, patterns = launder_module.reverse_triggers(
        backdoored, images, ctx.num_classes, reversal, ctx.generator("attack:launder"), ctx.device
    )
    stamped = [
        channel_means(backdoored, list(reset), stamp_trigger(images, m, p), ctx.device)
        for m, p in zip(masks, patterns)
    ]
    for path, channels in reset.items():
        conv = model.get_submodule(path)
        assert len(channels) <= 0.1 * conv.out_channels
        floor = clean_means[path].mean() * 0.01
        elevation = torch.stack([s[path] for s in stamped]).amax(0) / clean_means[path].clamp(
            min=floor
        )
        assert all(elevation[c] > attack.params.ratio for c in channels), path
        assert conv.weight[channels].abs().sum() == 0
        norm = model.get_submodule(path.rpartition(".")[0] + ".bn" + path[-1])
        assert norm.weight[channels].abs().sum() == 0  # its shift alone may regrow
        others = [c for c in range(conv.out_channels) if c not in channels]
        assert conv.weight[others].abs().sum() > 0

    # Retraining: the backdoor loses ground, the task keeps most of its accuracy (the
    # reset cost 8 of 89 points on seed 1, none on seed 0).
    assert info["stamped_images"] == round(0.2 * len(images))
    assert backdoor_success(outcome.model, ctx) < before
    assert test_accuracy(outcome.model, ctx) >= 0.85 * test_accuracy(backdoored, ctx)


def test_launder_refuses_bad_parameters_before_any_work(ctx, clean, monkeypatch):
    def no_reversal(*args, **kwargs):
        raise AssertionError("reversal started before the parameters were checked")

    monkeypatch.setattr(launder_module, "reverse_triggers", no_reversal)
    with pytest.raises(ArenaError, match="layers=500 but ResNet has"):
        Laundering({"layers": 500}).run(clone_model(clean), ctx)
    with pytest.raises(ArenaError, match="ratio"):
        Laundering({"ratio": 0.5})
    with pytest.raises(ArenaError, match="max_fraction"):
        Laundering({"max_fraction": 1.5})


def test_launder_threat_model():
    smoke = Context(protocol=get_protocol("smoke"))
    threat = Laundering({"epochs": 5}).threat_model(smoke)
    assert (threat.data, threat.labels, threat.epochs) == ("attacker-split", "true", 5)


# --- data-free ----------------------------------------------------------------------------


def test_data_free_inputs_are_images_the_model_answers_with_their_class(ctx, clean):
    from attacks.removal.data_free import synthesize

    attack = DataFree({"images_per_class": 4})
    images, classes, reached = synthesize(
        clean, ctx, attack.params, ctx.generator("attack:data-free")
    )
    protocol = ctx.protocol
    assert images.shape == (40, protocol.channels, protocol.image_size, protocol.image_size)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(classes, torch.arange(10).repeat(4))
    assert reached > 0.8
    # Not one image repeated: every input started from its own noise.
    assert torch.cdist(images.flatten(1), images.flatten(1)).fill_diagonal_(1).min() > 0.1


def test_data_free_threat_model_and_budgets():
    smoke = Context(protocol=get_protocol("smoke"))
    threat = DataFree().threat_model(smoke)
    assert (threat.data, threat.labels) == ("none", "victim-soft")
    assert threat.query_budget == 500 and threat.epochs == smoke.protocol.attack_epochs
    fresh = DataFree({"student": "fresh"}).threat_model(smoke)
    assert fresh.epochs == smoke.protocol.training.epochs
    with pytest.raises(ArenaError, match="student"):
        DataFree({"student": "teacher"})
    with pytest.raises(ArenaError, match="images_per_class"):
        DataFree({"images_per_class": 0})


# --- adaptive-ood ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trigger_marked(ctx):
    """A ``backdoor-wm`` model of this seed, with its key."""
    defense = defenses.get("backdoor-wm")()
    key = defense.keygen(ctx)
    return defense, key, defense.mark(ctx.owner_model(), key, ctx)


def test_adaptive_ood_chooses_confident_outliers_and_unlearns_them(ctx, trigger_marked):
    defense, key, marked = trigger_marked
    attack = AdaptiveOod()
    attacker = ctx.splits.attacker
    candidates = attack.draw_candidates(ctx)
    assert len(candidates) == 2000 and candidates.min() >= 0 and candidates.max() <= 1
    choice = choose_outliers(
        marked, attacker.images, attacker.labels, candidates, attack.params, ctx
    )
    features, _ = features_and_logits(marked, candidates, ctx.device)
    own, _ = features_and_logits(marked, attacker.images, ctx.device)
    # Chosen: beyond the 0.99 quantile of the attacker images' own distances, and the
    # model's most confident answers among the outliers.
    means = torch.stack([own[attacker.labels == c].mean(0) for c in range(ctx.num_classes)])
    distance = torch.cdist(features, means).amin(1)
    own_distance = torch.cdist(own, means).amin(1)
    assert (own_distance > choice.threshold).float().mean() <= 0.011
    assert len(choice.chosen) == 200 and (distance[choice.chosen] > choice.threshold).all()
    confidence = predict_logits(marked, candidates, ctx.device).softmax(1).amax(1)
    rejected = torch.ones(len(candidates), dtype=torch.bool)
    rejected[choice.chosen] = False
    outliers_left = rejected & (distance > choice.threshold)
    assert confidence[choice.chosen].min() >= confidence[outliers_left].max()

    before = defense.evidence(marked, key, ctx).successes
    outcome = attack.run(clone_model(marked), ctx)
    assert outcome.info["unlearned"] == 200 and outcome.info["outliers"] == choice.outliers
    after_confidence = predict_logits(outcome.model, candidates[choice.chosen], ctx.device)
    assert after_confidence.softmax(1).amax(1).mean() < confidence[choice.chosen].mean() - 0.3
    assert defense.evidence(outcome.model, key, ctx).successes < before
    assert test_accuracy(outcome.model, ctx) >= test_accuracy(marked, ctx) - 0.05


def test_adaptive_ood_applies_to_trigger_sets_only_and_checks_its_parameters():
    attack = AdaptiveOod()
    assert attack.applies_to(defenses.get("backdoor-wm")()) is None
    assert "white-box mark" in attack.applies_to(defenses.get("uchida")())
    with pytest.raises(ArenaError, match="unlearned \\(300\\) cannot exceed candidates"):
        AdaptiveOod({"candidates": 200, "unlearned": 300})
    with pytest.raises(ArenaError, match="pool"):
        AdaptiveOod({"pool": "photos"})


# --- adaptive-subspace ------------------------------------------------------------------


@pytest.fixture(scope="module")
def uchida_marked(ctx, tmp_path_factory):
    defense = defenses.get("uchida")()
    key = defense.keygen(ctx)
    marked = defense.mark(ctx.owner_model(), key, ctx)
    folder = tmp_path_factory.mktemp("uchida-key")
    key.save(folder)
    return defense, key, marked, folder / "vk.json"


def test_adaptive_subspace_turns_the_mean_filter_orthogonal_and_removes_the_bits(
    ctx, uchida_marked
):
    defense, key, marked, vk = uchida_marked
    attacker_ctx = dataclasses.replace(ctx, victim=Victim(defense, vk, ctx.splits.attacker))
    original = marked.get_submodule(key.layer).weight.mean(0).flatten().detach().clone()
    assert defense.evidence(marked, key, ctx).verified
    outcome = AdaptiveSubspace().run(clone_model(marked), attacker_ctx)
    assert outcome.info["layers"] == [key.layer]  # read from the public vk
    mean = outcome.model.get_submodule(key.layer).weight.mean(0).flatten().detach()
    cosine = float(mean @ original / (mean.norm() * original.norm()))
    assert abs(cosine) < 0.05 and mean.norm() > 0.5 * original.norm()
    assert outcome.info["cosine_to_marked_mean"][key.layer] == pytest.approx(cosine, abs=1e-6)
    evidence = defense.evidence(outcome.model, key, ctx)
    assert not evidence.verified
    assert abs(evidence.successes - evidence.trials / 2) < 4 * (evidence.trials / 4) ** 0.5
    assert test_accuracy(outcome.model, ctx) >= test_accuracy(marked, ctx) - 0.05


def test_adaptive_subspace_needs_a_layer_before_any_training(ctx, uchida_marked):
    _, key, marked, _ = uchida_marked
    with pytest.raises(ArenaError, match="needs the embedding layer"):
        AdaptiveSubspace().run(clone_model(marked), ctx)  # no victim, no layer
    with pytest.raises(ArenaError, match="has no layer 'layer9'"):
        AdaptiveSubspace({"layer": "layer9"}).run(clone_model(marked), ctx)
    attack = AdaptiveSubspace()
    assert attack.applies_to(defenses.get("uchida")()) is None
    assert "trigger set" in attack.applies_to(defenses.get("backdoor-wm")())
    block = AdaptiveSubspace({"layer": "layer2.0", "epochs": 0}).run(clone_model(marked), ctx)
    assert set(block.info["layers"]) >= {"layer2.0.conv1", "layer2.0.conv2"}


def test_data_free_reads_no_data_and_keeps_most_of_the_accuracy(ctx, trigger_marked, monkeypatch):
    """On the ``backdoor-wm`` model a match attacks. (On an unmarked smoke model of seed 2
    the attack fell from 92.5% to 59%: see the attack's docstring.)"""
    _, _, marked = trigger_marked
    before = test_accuracy(marked, ctx)
    model = clone_model(marked)

    def no_data(self):
        raise AssertionError("the data-free attack read the protocol's data")

    monkeypatch.setattr(Context, "splits", property(no_data))
    with pytest.raises(AssertionError, match="read the protocol's data"):
        ctx.splits  # noqa: B018 (the guard is in place)
    outcome = DataFree().run(model, ctx)
    monkeypatch.undo()

    info = outcome.info
    assert info["synthetic_images"] == 50 * ctx.num_classes
    assert info["synthesis_success"] > 0.8, info
    assert outcome.replaced_head and outcome.model is model
    after = test_accuracy(outcome.model, ctx)
    # Re-learning the output layer from inverted inputs alone costs a few points (0.5,
    # 5 and 4.5 on seeds 0-2 in matches); most of the accuracy stays.
    assert after >= 0.85 * before, (before, after)
