"""The per-scheme null on ``smoke``: reference and foreign models, the stored null, its use."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arena.core.environment import PRECISION_VARIABLE
from arena.core.protocols import RECIPES, get_protocol, parse_reference
from arena.core.stats import Evidence, null_p_value
from arena.core.verify import Null
from arena.eval.calibration import calibrate
from arena.eval.match import MatchSpec, run_match
from arena.report.calibration import to_markdown
from arena.storage.calibrations import CalibrationStore
from arena.storage.clean import reference_models, reference_set
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError

SMOKE = get_protocol("smoke")


def test_reference_set_is_round_robin_over_entries_and_roles():
    chosen = reference_set(SMOKE, models=3, foreign=2)
    entries = [parse_reference(e) for e in SMOKE.reference_models]
    assert [(r.architecture, r.recipe) for r in chosen[:3]] == [entries[i % 2] for i in range(3)]
    assert [r.role for r in chosen] == ["reference"] * 3 + ["foreign"] * 2
    assert [r.name for r in chosen[3:]] == [
        "test_byobnet.r160_in1k@protocol",
        "test_byobnet.r160_in1k@diverged",
    ]
    assert len({r.seed for r in chosen}) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"models": 0, "foreign": 1}, r"--models must lie in \[1, 1000\], got 0"),
        ({"models": 2, "foreign": -1}, r"--foreign must lie in \[0, 1000\], got -1"),
        ({"models": 4, "references": ("resnet18", "resnet18@adam")}, "two architectures"),
        (
            {"models": 2, "foreign": 1, "foreign_models": ("test_resnet.r160_in1k@adam",)},
            "test_resnet.r160_in1k is in both",
        ),
        ({"models": 2, "references": ("resnet18@adma", "x")}, "did you mean 'adam'"),
    ],
)
def test_reference_set_rejects_bad_sizes_and_entries(kwargs, message):
    with pytest.raises(ArenaError, match=message):
        reference_set(SMOKE, **kwargs)


def test_recipes_change_the_protocols_training_and_nothing_else():
    settings, augment = RECIPES["adam"].apply(SMOKE)
    assert settings.optimizer == "adam" and settings.lr == 1e-3
    assert settings.epochs == SMOKE.training.epochs and augment == SMOKE.augment
    assert RECIPES["protocol"].apply(SMOKE) == (SMOKE.training, SMOKE.augment)
    assert RECIPES["long"].apply(SMOKE)[0].epochs == 2 * SMOKE.training.epochs


def test_an_exact_scheme_fits_nothing_and_counts_false_claims(smoke_calibration):
    record = smoke_calibration["record"]
    null = record["null"]
    assert null["kind"] == "exact" and null["nominal"] == pytest.approx(0.1)
    assert null["smallest_p_value"] == pytest.approx(0.1**SMOKE.trigger_size)
    rows = record["models"]
    assert len(rows) == 3 and {row["role"] for row in rows} == {"reference"}
    assert null["trials"] == 3 * 5 * SMOKE.trigger_size == sum(row["trials"] for row in rows)
    assert all(row["test_acc"] > 0.5 for row in rows)  # real, trained clean models
    for row in rows + record["claims"]:  # every key's count, summing to the model's
        assert len(row["counts"]) == row["keys"] and sum(row["counts"]) == row["successes"]
    claims = record["false_claims"]
    # Every foreign model gets all 10 claim keys, every reference model the first 5.
    assert claims["foreign"]["pairs"] == 2 * 10 and claims["reference"]["pairs"] == 3 * 5
    assert claims["foreign"]["claimed"] == sum(
        row["claimed"] for row in record["claims"] if row["role"] == "foreign"
    )
    for rate in claims.values():
        assert rate["ci95"][0] <= rate["rate"] <= rate["ci95"][1]
    store = CalibrationStore(smoke_calibration["db"])
    exact = store.null(SMOKE, "backdoor-wm")
    assert exact.kind == "exact" and exact.sound and exact.calibration is None
    assert "| foreign | test_byobnet.r160_in1k | diverged |" in to_markdown(record)


def test_the_diverged_foreign_model_is_degenerate_and_never_claimed(smoke_calibration):
    rows = smoke_calibration["record"]["claims"]
    diverged = next(row for row in rows if row["recipe"] == "diverged")
    assert diverged["test_acc"] < 0.3  # a failed training: near one class for everything
    assert diverged["claimed"] == 0


def test_label_check_rejects_in_distribution_keys(smoke_calibration):
    inside = smoke_calibration["record"]["in_distribution"]
    assert inside["rejected_by_label_check"] == inside["keys"] == 3
    # Without the check, such a key claims clean models it never saw.
    assert inside["foreign_agreement"] > 0.3
    honest = smoke_calibration["record"]["label_check_honest"]
    assert honest["keys"] == 5 and honest["rejected"] <= 1


@pytest.fixture(scope="module")
def content_calibration(smoke_calibration):
    return calibrate(
        SMOKE,
        "content",
        models=3,
        foreign=2,
        keys=4,
        claim_keys=4,
        in_distribution_keys=2,
        db=smoke_calibration["db"],
        cache=smoke_calibration["cache"],
    )


def test_a_single_target_scheme_gets_a_fitted_beta_binomial(smoke_calibration, content_calibration):
    null = content_calibration["null"]
    assert null["kind"] == "beta-binomial" and null["counts"] == 3 * 4
    assert 0 < null["mean"] < 1 and 0 < null["dispersion"] < 1
    trials = null["trials_per_key"]
    assert null["smallest_p_value"] == pytest.approx(
        null_p_value(trials, trials, null["mean"], null["dispersion"])
    )
    assert null["reaches_alpha"] == (null["smallest_p_value"] <= SMOKE.alpha)
    served = CalibrationStore(smoke_calibration["db"]).null(SMOKE, "content")
    assert served.kind == "beta-binomial" and served.calibration == content_calibration["position"]
    assert (served.p, served.dispersion) == (null["mean"], null["dispersion"])
    tested = served.apply(Evidence(5, trials, 0.1, SMOKE.alpha))
    assert tested.p_value == pytest.approx(
        null_p_value(5, trials, null["mean"], null["dispersion"])
    )
    assert "beta-binomial fitted by maximum likelihood" in to_markdown(content_calibration)
    # Keys of test images with their true labels (and controls, as a forger would add).
    assert content_calibration["in_distribution"]["keys"] == 2


def test_an_uncalibrated_single_target_scheme_has_no_sound_null(tmp_path):
    null = CalibrationStore(tmp_path / "r.sqlite").null(SMOKE, "noise")
    assert null.kind == "uncalibrated" and not null.sound
    assert "arena calibrate --protocol smoke --defense noise" in null.source
    evidence = Evidence(5, 20, 0.1, 0.01)
    assert null.apply(evidence) == evidence
    assert Null("exact", "exact").apply(evidence) == evidence


def test_verify_refuses_an_unsound_null_before_anything_is_spent(tmp_path):
    from arena.ownership import vendor as ownership

    keys = tmp_path / "keys"
    ownership.keygen("noise", SMOKE, keys, params={"subsets": 2}, seed=3)
    assert_refused_unspent(keys, tmp_path, CalibrationStore(tmp_path / "r.sqlite"), "UNCALIBRATED")


def assert_refused_unspent(keys, tmp_path, calibrations, kind: str) -> None:
    """``verify`` of the key in ``keys`` is refused for its null, and nothing is spent."""
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    with pytest.raises(ArenaError, match=f"cannot verify: {kind}"):
        ownership.verify(
            tmp_path / "missing.safetensors",
            keys / "mk.json",
            keys / "vk.json",
            SMOKE,
            ledger,
            calibrations=calibrations,
        )
    assert not [entry for entry in ledger.entries() if entry.kind == "spent"]


def test_a_repeated_calibration_reuses_the_cached_models(smoke_calibration):
    again = calibrate(
        SMOKE,
        models=3,
        foreign=0,
        keys=2,
        claim_keys=0,
        db=smoke_calibration["db"],
        cache=smoke_calibration["cache"],
    )
    first = smoke_calibration["record"]["models"]
    # The cache keeps the seconds each model cost to train: the same models, not retrained.
    assert [row["train_seconds"] for row in again["models"]] == [
        row["train_seconds"] for row in first
    ]
    assert again["position"] > smoke_calibration["record"]["position"]
    assert "false_claims" not in again
    assert "| reference |" in to_markdown(again)


def test_reference_models_load_from_the_cache_and_never_train(
    smoke_calibration, tmp_path, monkeypatch
):
    store = CalibrationStore(smoke_calibration["db"])
    models = reference_models(SMOKE, "backdoor-wm", store, smoke_calibration["cache"])
    assert len(models) == 3
    # A verifier computing in bfloat16 (a GPU's default) loads the float32 models this
    # calibration trained: it only evaluates them.
    assert smoke_calibration["record"]["versions"]["precision"] == "fp32"
    monkeypatch.setenv(PRECISION_VARIABLE, "bf16")
    again = reference_models(SMOKE, "backdoor-wm", store, smoke_calibration["cache"])
    for loaded, model in zip(again, models, strict=True):
        pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    monkeypatch.delenv(PRECISION_VARIABLE)
    from arena.storage.artifacts import ArtifactCache

    with pytest.raises(ArenaError, match="not in the cache"):
        reference_models(SMOKE, "backdoor-wm", store, ArtifactCache(tmp_path / "empty"))
    with pytest.raises(ArenaError, match="arena calibrate --protocol smoke"):
        reference_models(SMOKE, "backdoor-wm-pretrained", store, smoke_calibration["cache"])


def test_matches_of_an_exact_scheme_test_against_one_over_the_labels(smoke_calibration):
    db, cache = smoke_calibration["db"], smoke_calibration["cache"]
    store = ResultStore(db)
    spec = MatchSpec(defense="backdoor-wm", attack="none", protocol="smoke", seed=0)
    first = run_match(spec, store=store, cache=cache)
    assert first["null"] == dataclasses.asdict(CalibrationStore(db).null(SMOKE, "backdoor-wm"))
    assert first["null"]["kind"] == "exact"
    for phase in ("clean", "marked", "attacked"):
        assert first[phase]["evidence"]["null_p"] == pytest.approx(0.1)
        assert first[phase]["evidence"]["null_dispersion"] == 0.0
    assert run_match(spec, store=store, cache=cache)["cached"]["attacked"]  # replayed


def test_matches_of_a_fitted_scheme_remeasure_after_a_new_calibration(
    smoke_calibration, content_calibration
):
    db, cache = smoke_calibration["db"], smoke_calibration["cache"]
    store = ResultStore(db)
    spec = MatchSpec(defense="content", attack="none", protocol="smoke", seed=0)
    first = run_match(spec, store=store, cache=cache)
    assert first["null"]["kind"] == "beta-binomial"
    assert first["marked"]["evidence"]["null_dispersion"] == pytest.approx(
        content_calibration["null"]["dispersion"]
    )
    newer = calibrate(
        SMOKE, "content", models=3, foreign=0, keys=2, claim_keys=0, db=db, cache=cache
    )
    again = run_match(spec, store=store, cache=cache)
    assert again["null"]["calibration"] == newer["position"]
    assert all(again["cached"].values())  # re-measured from cached models, none retrained
    assert "replay_seconds" not in again


def test_the_leaderboard_shows_which_null_decided(smoke_calibration):
    from arena.eval.leaderboard import build
    from arena.report.leaderboard import to_markdown

    store = ResultStore(smoke_calibration["db"])
    run_match(MatchSpec(protocol="smoke"), store=store, cache=smoke_calibration["cache"])
    board = build(store, SMOKE)
    row = next(row for row in board.defenses if row.defense == "backdoor-wm")
    assert row.null.kind == "exact"
    assert "same key on clean" in to_markdown(board) and not row.clean_evidence.verified


def test_white_box_schemes_calibrate_on_the_architecture_they_read(smoke_calibration):
    record = calibrate(
        SMOKE,
        "uchida",
        models=3,
        foreign=2,
        keys=2,
        claim_keys=2,
        db=smoke_calibration["db"],
        cache=smoke_calibration["cache"],
    )
    assert {row["architecture"] for row in record["models"]} == {SMOKE.model}
    assert record["null"]["kind"] == "exact" and record["null"]["nominal"] == 0.5
    assert 0.35 < record["null"]["rate"] < 0.65  # chance bit agreement, not 0 bits read


def _refuted_copy(smoke_calibration, content_calibration, tmp_path) -> CalibrationStore:
    """A copy of the session's database whose newest content calibration measured, on the
    foreign models, far more false claims than alpha allows."""
    import shutil

    db = tmp_path / "results.sqlite"
    shutil.copy(smoke_calibration["db"], db)
    record = {k: v for k, v in content_calibration.items() if k != "position"}
    record["false_claims"] = {
        **record.get("false_claims", {}),
        "foreign": {"pairs": 100, "claimed": 12, "rate": 0.12, "ci95": [0.064, 0.2], "alpha": 0.01},
    }
    store = CalibrationStore(db)
    store.save(record)
    return store


def test_a_null_its_calibration_caught_claiming_clean_models_is_refuted(
    smoke_calibration, content_calibration, tmp_path
):
    from arena.ownership import vendor as ownership
    from arena.storage.calibrations import refutation

    assert refutation(content_calibration) is None  # the real one claimed nothing
    store = _refuted_copy(smoke_calibration, content_calibration, tmp_path)
    null = store.null(SMOKE, "content")
    assert null.kind == "refuted" and not null.sound
    assert "12 of 100 (key, foreign clean model) pairs" in null.source
    assert "--reference" in null.source
    # Still tested against the fit, for information.
    fitted = content_calibration["null"]
    assert (null.p, null.dispersion) == (fitted["mean"], fitted["dispersion"])
    assert "REFUTED" in to_markdown(store.latest(SMOKE, "content"))
    # A claim within the interval's reach of alpha does not refute it.
    within = store.latest(SMOKE, "content")
    within["false_claims"]["foreign"]["ci95"] = [0.0, 0.05]
    assert refutation(within) is None

    keys = tmp_path / "keys"
    ownership.keygen("content", SMOKE, keys, params={"subsets": 2}, seed=3)
    assert_refused_unspent(keys, tmp_path, store, "REFUTED")


def test_matches_against_a_refuted_null_record_no_verdict_and_rank_last(
    smoke_calibration, content_calibration, tmp_path
):
    from arena.eval.leaderboard import build
    from arena.report.leaderboard import match_cells
    from arena.report.leaderboard import to_markdown as board_markdown

    store = _refuted_copy(smoke_calibration, content_calibration, tmp_path)
    results = ResultStore(store.path)
    cache = smoke_calibration["cache"]
    for defense in ("content", "backdoor-wm"):
        spec = MatchSpec(defense=defense, attack="ftll", protocol="smoke", seed=0)
        record = run_match(spec, store=results, cache=cache)
    content = [
        r for r in results.records("smoke") if (r["defense"], r["attack"]) == ("content", "ftll")
    ][-1]
    assert content["null"]["kind"] == "refuted"
    assert content["outcome"].startswith("the refuted null decides nothing")
    assert not content["attack_succeeded"]
    assert record["null"]["kind"] == "exact"  # backdoor-wm's null is untouched
    board = build(results, SMOKE)
    assert [row.defense for row in board.defenses][-1] == "content"
    row = next(row for row in board.defenses if row.defense == "content")
    assert row.survived is None and row.null.kind == "refuted"
    cell = next(m for m in board.matches if m.defense == "content" and m.attack == "ftll")
    assert "no verdict (null refuted)" in match_cells(cell)
    assert "| no verdict |" in board_markdown(board)
