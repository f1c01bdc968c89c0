"""The certified watermark: its noisy objective, and a match that reports the certificate
beside the attack's weight change and checks it on the attacked model."""

from __future__ import annotations

import pytest
import torch

from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.eval.match import MatchSpec, play_match
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from tests.record_schema import check_record

# Fewer noisy copies than the defaults: the smoke model's certificate in seconds.
QUICK = {"certify_samples": 200, "check_samples": 100}


def test_the_objective_adds_the_keys_loss_at_noisy_weights():
    ctx = Context(protocol=get_protocol("smoke"), seed=0)
    scheme = defenses.get("certified")(QUICK)
    key = scheme.keygen(ctx)
    model = ctx.new_model()
    images = torch.rand(6, 1, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    plain = torch.nn.functional.cross_entropy(model(images), labels)
    first = scheme.objective(key, ctx)(model, images, labels, 2)
    second = scheme.objective(key, ctx)(model, images, labels, 2)
    assert torch.equal(first, second)  # the noise is drawn from the key's own stream
    assert first > plain  # plus the key rows' loss at the noisy weights
    without = defenses.get("certified")({**QUICK, "noise_weight": 0.0})
    assert torch.equal(without.objective(key, ctx)(model, images, labels, 2), plain)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    model.train()
    scheme.objective(key, ctx)(model, images, labels, 2)
    moved = [n for n, v in model.named_buffers() if not torch.equal(v, buffers[n])]
    assert moved  # the plain forward pass moves BatchNorm's statistics ...
    again = {name: value.clone() for name, value in model.named_buffers()}
    model(images)  # ... once: a second plain pass moves them by as much again
    assert any(not torch.equal(v, again[n]) for n, v in model.named_buffers())


@pytest.mark.parametrize("bad", [{"sigma": 0}, {"confidence": 0.5}, {"certify_samples": 3}])
def test_parameters_out_of_range_are_refused(bad):
    with pytest.raises(Exception, match=next(iter(bad))):
        defenses.get("certified")(bad)


def test_a_change_within_the_certificate_is_checked_and_holds(tmp_path, train_seed):
    """Weight shifting reduced to a whisper of noise (no shift, no fine-tuning) moves
    parameters only, by less than the certified radius (about sigma, 0.01: far below
    what fine-tuning moves, l2 above 0.1): the certificate applies, and the match checks
    it."""
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    spec = MatchSpec(
        defense="certified",
        attack="weight-shift",
        protocol="smoke",
        seed=train_seed,
        defense_params=QUICK,
        attack_params={"strength": 0.0, "noise": 1e-4, "epochs": 0},
    )
    record = play_match(spec, store=store, cache=cache)
    check_record(record.to_dict())  # also: no certificate check ever violated
    assert record.marked.evidence.verified and not record.clean.evidence.verified
    certificate, change = record.certificate, record.attacked.weight_change
    assert certificate is not None and sum(certificate.histogram) == 200
    assert certificate.certified(0.0) >= record.marked.evidence.successes // 2
    assert change is not None and not change.buffers_changed and change.l2 > 0
    check = record.attacked.certificate_check
    assert check is not None and check.radius == change.l2
    assert check.certified == certificate.certified(change.l2) > 0
    assert not check.violated and check.median >= check.certified - 2
