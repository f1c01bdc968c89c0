"""DAWN (Szyller et al., ACM MM 2021): the keyed choice of wrong answers, the API that
serves them, the key with its committed secret, the threat model (only extraction
applies), and on smoke: a model extracted through the API carries the client's
watermark set and the clean model does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from arena.core.registry import attacks, defenses
from arena.eval.match import MatchSpec, run_match
from arena.eval.sweep import plan
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError, KeyTamperedError
from defenses.dawn import DawnAPI, DawnKey, watermarked

SECRET = bytes(range(32))


class _Fixed(nn.Module):
    """Logits that depend on the image alone: class = first pixel's value mod 10."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        classes = (images[:, 0, 0, 0] * 255).round().long() % 10
        return torch.nn.functional.one_hot(classes, 10).float() * 5 + images.mean() * 0


def _images(count: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(0, 256, (count, 1, 8, 8), dtype=np.uint8)).float() / 255


def test_the_wrong_answers_are_keyed_near_their_fraction_and_uniform_over_the_others():
    images = (_images(4000) * 255).round().to(torch.uint8).numpy()
    chosen, offsets = watermarked(images, SECRET, 0.05, 10)
    again, same_offsets = watermarked(images, SECRET, 0.05, 10)
    assert (chosen == again).all() and (offsets == same_offsets).all()
    # 4,000 queries at 5%: 200 expected, sd 13.8; 4.5 sd either side.
    assert 138 <= chosen.sum() <= 262
    assert set(offsets) == set(range(1, 10))  # never the model's own answer
    other, _ = watermarked(images, bytes(32), 0.05, 10)
    assert (other != chosen).sum() > 100  # another secret picks other queries


def test_the_api_answers_a_query_alike_in_any_batch_and_records_it_once():
    images = _images(300)
    api = DawnAPI(_Fixed(), SECRET, 0.2)
    whole = api(images)
    parts = torch.cat([api(images[i : i + 7]) for i in range(0, 300, 7)])
    assert torch.equal(whole, parts)
    model_answers = _Fixed()(images).argmax(1)
    flipped = whole.argmax(1) != model_answers
    assert 30 <= int(flipped.sum()) <= 90 and api.queries == 600
    # A permutation of the model's own logits: the probabilities a client sees.
    assert torch.equal(whole.sort(1).values, _Fixed()(images).sort(1).values)
    logged, labels = api.watermark_set()
    assert len(logged) == int(flipped.sum())  # asked twice, recorded once
    assert (labels == whole.argmax(1)[flipped].numpy()).all()
    assert DawnAPI(_Fixed(), SECRET, 0.2).watermark_set() is None


def test_the_key_saves_loads_and_opens_its_secret(tmp_path):
    images = (_images(6) * 255).round().to(torch.uint8).numpy()
    key = DawnKey.create_with_secret("dawn", 10, images, np.arange(6), SECRET)
    key.save(tmp_path)
    loaded = DawnKey.load(tmp_path)
    assert loaded.secret == SECRET and (loaded.labels == np.arange(6)).all()
    assert DawnKey.public_fingerprint(tmp_path / "vk.json") == key.fingerprint
    assert not DawnKey.public_verification
    record = json.loads((tmp_path / "mk.json").read_text())
    record["secret"] = bytes(32).hex()
    (tmp_path / "mk.json").write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="API secret does not open"):
        DawnKey.load(tmp_path)


def test_only_attacks_that_query_the_api_apply():
    dawn = defenses.get("dawn")()
    applicable = {name for name in attacks.names() if attacks.get(name)().applies_to(dawn) is None}
    assert applicable == {"distill", "knockoff", "retrain", "smooth-retrain"}
    reason = attacks.get("ftal")().applies_to(dawn)
    assert "outside its threat model" in reason
    skipped: list = []
    specs = plan("smoke", ["dawn"], ["none", "ftal", "distill"], [0], skipped)
    assert [spec.attack for spec in specs] == ["distill"]
    assert [(d, a) for d, a, _ in skipped] == [("dawn", "none"), ("dawn", "ftal")]
    with pytest.raises(ArenaError, match="does not apply to 'dawn'"):
        run_match(MatchSpec(defense="dawn", attack="none", protocol="smoke"))


def test_a_model_extracted_through_the_api_carries_the_mark(tmp_path, train_seed):
    """Retraining on the API's answers (30 epochs) learns the client's wrong answers: on
    seeds 0-3 26/26, 21/21, 21/21, 25/26 against 7-8 needed (copies at 57-69% test
    accuracy); the clean model answers none of the owner's set (0 of 77-95)."""
    record = run_match(
        MatchSpec(
            defense="dawn",
            attack="retrain",
            protocol="smoke",
            seed=train_seed,
            defense_params={"fraction": 0.1},
            attack_params={"epochs": 30, "lr": 0.05},
        ),
        store=ResultStore(tmp_path / "r.sqlite"),
        cache=ArtifactCache(tmp_path / "cache"),
    )
    clean, marked, attacked = record["clean"], record["marked"], record["attacked"]
    assert marked["evidence"]["successes"] == marked["evidence"]["trials"]
    assert marked["evidence"]["verified"] and not clean["evidence"]["verified"]
    assert marked["evidence"]["null_p"] == pytest.approx(1 / 9)
    # The API's accuracy is the model's less the share answered wrongly.
    assert clean["test_acc"] - 0.2 <= marked["test_acc"] <= clean["test_acc"]
    evidence = attacked["evidence"]
    assert evidence["verified"] and evidence["successes"] >= 0.7 * evidence["trials"]
    assert record["attack_succeeded"] is False
