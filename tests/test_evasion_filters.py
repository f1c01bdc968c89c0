"""The evasion attacks that serve the stolen model behind a query detector or inside an
ensemble, on the ``smoke`` protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.models import clone_model
from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.core.training import accuracy, predict, predict_logits
from arena.util.errors import ArenaError
from attacks.evasion.detector import CalibratedFilter, EvadeDetector
from attacks.evasion.ensemble import Ensemble, EvadeEnsemble
from defenses.backdoor_wm import BackdoorWatermark
from tests.backdoors import TARGET, backdoored_model

# fpr is 0.05. With 100 conformal calibration images (ood; STRIP has 180) a detector
# that keeps its promise flags Beta(5, 96) of clean queries, and 200 test images add
# binomial noise: it exceeds 0.15 with chance 0.2% (STRIP 0.03%), 0.12 with 1.2%.
# Measured on seeds 0-9: ood 0.015-0.09, STRIP 0.025-0.10.
CLEAN_FLAG_CEILING = 0.15


def stamp(images: torch.Tensor) -> torch.Tensor:
    """A white 4x4 square near the lower right corner: a BadNets-style patch trigger."""
    stamped = images.clone()
    stamped[..., -5:-1, -5:-1] = 1.0
    return stamped


@pytest.fixture(scope="module")
def ctx(train_seed) -> Context:
    return Context(protocol=get_protocol("smoke"), seed=train_seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def marked(ctx):
    """A ``backdoor-wm`` key and a smoke model marked with it from scratch."""
    defense = BackdoorWatermark()
    key = defense.keygen(ctx)
    model = defense.mark(ctx.owner_model(), key, ctx)
    assert defense.evidence(model, key, ctx).verified
    return defense, key, model


@pytest.fixture(scope="module")
def patch_backdoored(ctx) -> nn.Module:
    return backdoored_model(ctx, stamp, "patch-backdoor")


def trigger_images(key, ctx) -> torch.Tensor:
    return to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels)


def clean_flag_rate(served, ctx) -> float:
    served.reset_counts()
    accuracy(served, ctx.splits.test.images, ctx.splits.test.labels, ctx.device)
    return served.flagged / served.queries


def test_ood_detector_flags_the_key_and_few_clean_queries(ctx, marked):
    defense, key, model = marked
    served = EvadeDetector().serve(model, ctx)
    assert clean_flag_rate(served, ctx) <= CLEAN_FLAG_CEILING

    served.reset_counts()
    evidence = defense.evidence(served, key, ctx)
    assert served.queries == len(key)
    assert served.flagged >= 0.9 * len(key)
    assert evidence.successes <= 2 and not evidence.verified


def test_strip_flags_a_patch_backdoor(ctx, patch_backdoored):
    served = EvadeDetector({"detector": "strip"}).serve(patch_backdoored, ctx)
    assert clean_flag_rate(served, ctx) <= CLEAN_FLAG_CEILING

    test = ctx.splits.test
    stamped = stamp(test.images[test.labels != TARGET])
    served.reset_counts()
    predict(served, stamped, ctx.device)
    assert served.flagged >= 0.9 * len(stamped)


def test_flagged_queries_get_the_runner_up_answer(ctx, marked):
    _, key, model = marked
    served = EvadeDetector().serve(model, ctx).eval()
    images = torch.cat([ctx.splits.test.images[:20], trigger_images(key, ctx)])
    with torch.no_grad():
        logits = model(images)
        flagged = served.flags(images, logits)
        answers = served(images).argmax(dim=1)
    assert 0 < int(flagged.sum()) < len(images)
    runner_up = logits.topk(2, dim=1).indices[:, 1]
    assert torch.equal(answers[flagged], runner_up[flagged])
    assert torch.equal(answers[~flagged], logits.argmax(dim=1)[~flagged])


@pytest.mark.parametrize("detector", ["ood", "strip"])
def test_serve_is_deterministic_and_batch_independent(ctx, marked, detector):
    _, key, model = marked
    attack = EvadeDetector({"detector": detector})
    first, second = attack.serve(model, ctx), attack.serve(model, ctx)
    assert first.threshold == second.threshold
    images = torch.cat([ctx.splits.test.images[:30], trigger_images(key, ctx)])
    batch = predict_logits(first, images, ctx.device)
    assert torch.equal(batch, predict_logits(second, images, ctx.device))
    # A query's score does not depend on the other queries in its batch.
    alone = torch.cat([first.score(image[None]) for image in images])
    assert torch.allclose(alone, first.score(images), rtol=1e-4, atol=1e-4)


class _MeanPixel(CalibratedFilter):
    fit_images = 0

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).mean(dim=1)


def test_threshold_is_the_conformal_rank():
    detector = _MeanPixel(nn.Identity())
    clean = torch.arange(1.0, 20.0).view(19, 1, 1, 1)  # scores 1, ..., 19
    detector.calibrate(clean, fpr=0.1)  # rank ceil(20 * 0.9) = 18
    assert detector.threshold == 18.0 and detector.calibration_images == 19
    queries = torch.tensor([18.0, 18.5]).view(2, 1, 1, 1)
    assert detector.flags(queries, None).tolist() == [False, True]
    detector.calibrate(clean, fpr=0.01)  # rank 20 > 19: no threshold bounds 1%
    assert not detector.flags(torch.tensor([1e9]).view(1, 1, 1, 1), None).any()


def test_too_many_overlays_are_refused(ctx, marked):
    attack = EvadeDetector({"detector": "strip", "overlays": len(ctx.splits.attacker)})
    with pytest.raises(ArenaError, match="overlays"):
        attack.serve(marked[2], ctx)


@pytest.fixture(scope="module")
def ensemble_attack() -> EvadeEnsemble:
    return EvadeEnsemble({"epochs": 2})


@pytest.fixture(scope="module")
def ensemble(ctx, marked, ensemble_attack) -> Ensemble:
    outcome = ensemble_attack.run(clone_model(marked[2]), ctx)
    assert outcome.info["members"] == 2 and outcome.info["queries"] == len(ctx.splits.attacker)
    return outcome.model.eval()


def test_ensemble_round_trips_through_build(ctx, ensemble, ensemble_attack):
    container = ensemble_attack.build(ctx, lambda: ctx.new_model("attack")).eval()
    container.load_state_dict(ensemble.state_dict(), strict=True)
    images = ctx.splits.test.images[:50]
    with torch.no_grad():
        assert torch.equal(container(images), ensemble(images))
    served = ensemble_attack.serve(container, ctx)
    assert torch.equal(predict_logits(served, images, ctx.device), ensemble(images))

    three = EvadeEnsemble({"members": 3}).build(ctx, lambda: ctx.new_model("attack"))
    with pytest.raises(RuntimeError):
        three.load_state_dict(ensemble.state_dict(), strict=True)


def test_ensemble_answers_the_mean_probability_of_its_voters(ctx, marked, ensemble):
    images = ctx.splits.test.images[:50]
    with torch.no_grad():
        probabilities = [F.softmax(voter(images), dim=1) for voter in ensemble.voters]
        assert torch.equal(ensemble.voters[0](images), marked[2](images))  # the stolen model
        mean = torch.stack(probabilities).mean(dim=0)
        assert torch.allclose(ensemble(images).exp(), mean, atol=1e-5)
    assert len(ensemble.voters) == 3
    assert not torch.equal(probabilities[1], probabilities[2])  # members differ in seed


def test_ensemble_threat_model_counts_every_member(ctx):
    threat_model = EvadeEnsemble({"members": 3, "epochs": 4}).threat_model(ctx)
    assert threat_model.epochs == 12 and threat_model.labels == "victim-top1"
    assert threat_model.query_budget == len(ctx.splits.attacker)


@pytest.mark.parametrize("name", ["evade-detector", "evade-ensemble"])
def test_white_box_defenses_are_out_of_reach(name):
    attack = attacks.get(name)()
    assert attack.threat == "evasion"
    assert "white-box" in attack.applies_to(defenses.get("uchida")())
    assert attack.applies_to(defenses.get("backdoor-wm")()) is None


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("evade-detector", {"fpr": 0}),
        ("evade-detector", {"fpr": 1}),
        ("evade-detector", {"overlays": 0}),
        ("evade-detector", {"detector": "mahalanobis"}),
        ("evade-ensemble", {"members": 0}),
        ("evade-ensemble", {"lr": -1}),
    ],
)
def test_bad_params_are_rejected(name, params):
    with pytest.raises(ArenaError, match=next(iter(params))):
        attacks.get(name)(params)
