"""Contract tests, parametrized over every registered plugin: a new plugin is tested
here on the ``smoke`` protocol without anyone writing a test for it."""

from __future__ import annotations

import dataclasses
import math

import pytest

from arena.core.context import Context
from arena.core.plugin import Attack, Defense, ThreatModel
from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.core.stats import Evidence
from arena.eval.match import MatchSpec, run_match
from arena.storage.calibrations import CalibrationStore
from arena.storage.clean import clean_model
from arena.storage.results import ResultStore
from tests.record_schema import check_record


@pytest.fixture(scope="module")
def shared(tmp_path_factory, smoke_calibration):
    """One store and cache for the module, so the clean and marked models are reused.

    The store holds the session's smoke calibration of ``backdoor-wm``: claim attacks
    (forgery, piracy) judge claims with its reference models, as ``arena verify`` does.
    """
    root = tmp_path_factory.mktemp("contracts")
    store = ResultStore(root / "results.sqlite")
    CalibrationStore(store.path).save(smoke_calibration["record"])
    return store, smoke_calibration["cache"]


def _run(shared, defense: str, attack: str) -> dict:
    store, cache = shared
    return run_match(
        MatchSpec(defense=defense, attack=attack, protocol="smoke"), store=store, cache=cache
    )


@pytest.mark.parametrize("name", defenses.names())
def test_defense_contract(name, shared):
    defense_cls = defenses.get(name)
    assert issubclass(defense_cls, Defense)
    assert defense_cls.__doc__ and defense_cls.family and defense_cls.paper
    assert defense_cls.access in ("black-box", "white-box")
    defense = defense_cls()
    store, cache = shared
    ctx = Context(protocol=get_protocol("smoke"))
    # Model-dependent keys (frontier stitching) need the owner's clean model, supplied.
    ctx = dataclasses.replace(ctx, clean=lambda: clean_model(ctx, cache)[0])
    key = defense.keygen(ctx)
    assert isinstance(key.fingerprint, str) and key.fingerprint
    evidence = defense.evidence(ctx.new_model(), key, ctx)
    assert isinstance(evidence, Evidence) and evidence.trials > 0

    # A scheme whose model never leaves the owner's API (DAWN) meets only attacks that
    # query it: the cheapest, distillation, instead of the null attack.
    attack = "distill" if defense_cls.serves else "none"
    record = _run(shared, name, attack)
    check_record(record)
    assert record["defense"] == name and record["attack"] == attack
    if not defense_cls.serves:
        # The null attack changes nothing: the evidence after it is the marked evidence.
        assert record["attacked"]["evidence"] == record["marked"]["evidence"]
        assert record["attack_succeeded"] is False
    # The same key on the clean model it was not embedded in agrees by chance only. A
    # clean model verifies with probability alpha at most, so the contract is agreement
    # within 4 standard deviations of the null's mean, not "never verified".
    clean = Evidence.from_dict(record["clean"]["evidence"])
    n, p, rho = clean.trials, clean.null_p, clean.null_dispersion
    assert clean.successes <= n * p + 4 * math.sqrt(n * p * (1 - p) * (1 + (n - 1) * rho))
    if name != "none":
        assert record["marked"]["evidence"]["verified"], record["marked"]["evidence"]


def _opponent(attack_cls: type) -> str:
    """The defense an attack's contract is played against: ``backdoor-wm``, else (an
    attack that declares it needs another kind of scheme) ``uchida``, else the first
    registered defense it applies to."""
    attack = attack_cls()
    preferred = ["backdoor-wm", "uchida", *defenses.names()]
    for name in preferred:
        if attack.applies_to(defenses.get(name)()) is None:
            return name
    raise AssertionError(f"{attack_cls.__name__} applies to no registered defense")


# A chain is an attack too: one of removals, one ending in a query filter, one in a claim.
CHAINS = ["fine-prune+distill", "ftll+jpeg", "rtll+piracy"]


@pytest.mark.parametrize("name", attacks.names() + CHAINS)
def test_attack_contract(name, shared):
    attack_cls = attacks.get(name)
    assert issubclass(attack_cls, Attack)
    assert attack_cls.__doc__ and attack_cls.paper
    attack = attack_cls()
    threat_model = attack.threat_model(Context(protocol=get_protocol("smoke")))
    assert isinstance(threat_model, ThreatModel)

    record = _run(shared, _opponent(attack_cls), name)
    check_record(record)
    assert record["attack"] == name
    assert record["threat_model"] == threat_model.to_dict()
    assert record["marked"]["evidence"]["verified"]
    if attack_cls.threat in ("forgery", "piracy"):
        # Judged as claims of ownership; the record's schema check ties verdict to dispute.
        assert record["claim"] is not None
    elif record["attack_succeeded"] and attack_cls.changes_task:
        # Transfer learning is decided on the owner-head evidence, as the seed paper does.
        assert not record["attacked"]["owner_head_evidence"]["verified"]
    elif record["attack_succeeded"]:
        assert not record["attacked"]["evidence"]["verified"]
        drop = record["marked"]["test_acc"] - record["attacked"]["test_acc"]
        assert drop <= get_protocol("smoke").delta


# --- what a plugin author gets told, not left to find out (issue 15, point 6) -------------


def test_a_misspelled_threat_model_is_refused():
    from arena.util.errors import ArenaError

    with pytest.raises(ArenaError, match="data='atacker-split' is not one of"):
        ThreatModel(data="atacker-split", labels="true")
    with pytest.raises(ArenaError, match="labels='victim-top-1' is not one of"):
        ThreatModel(data="attacker-split", labels="victim-top-1")
    with pytest.raises(ArenaError, match="epochs must be an integer >= 0"):
        ThreatModel(data="attacker-split", labels="true", epochs=-1)


@pytest.mark.parametrize(
    "images, message",
    [
        ("float", "float32 images; it must return uint8 pixels \\(scale"),
        ("list", "a list, not a numpy array"),
        ("3d", r"shape \(4, 16, 16\); it must be \(N, C, H, W\)"),
        ("identical", "4 identical images"),
    ],
)
def test_trigger_images_a_defense_returns_are_checked_before_they_are_committed(images, message):
    import numpy as np

    from arena.util.errors import ArenaError

    base = defenses.get("backdoor-wm")
    rng = np.random.default_rng(0)
    made = {
        "float": rng.random((4, 1, 16, 16), dtype=np.float32),
        "list": [np.zeros((1, 16, 16), np.uint8)] * 4,
        "3d": rng.integers(0, 256, (4, 16, 16), dtype=np.uint8),
        "identical": np.zeros((4, 1, 16, 16), np.uint8),
    }[images]

    class Careless(base):
        def sample_triggers(self, ctx):
            return made, np.arange(4) % ctx.num_classes

    with pytest.raises(ArenaError, match=message):
        Careless().keygen(Context(protocol=get_protocol("smoke"), seed=0))


def _smallest_budgets(plugin_cls: type) -> dict[str, int]:
    """Every budget field of the plugin (epochs, steps) at the smallest value its
    parameters accept, 0 or 1."""
    import dataclasses

    from arena.util.errors import ArenaError

    budgets = {}
    for field in dataclasses.fields(plugin_cls.Params):
        if "epoch" not in field.name and "steps" not in field.name:
            continue
        for value in (0, 1):
            try:
                plugin_cls({**budgets, field.name: value})
            except ArenaError:
                continue
            budgets[field.name] = value
            break
    return budgets


BUDGETED = [name for name in attacks.names() if _smallest_budgets(attacks.get(name))]


@pytest.mark.parametrize("name", BUDGETED)
def test_attack_contract_at_its_smallest_budget(name, shared):
    """Default parameters alone would not catch an attack that breaks on a budget of 1."""
    store, cache = shared
    params = _smallest_budgets(attacks.get(name))
    defense = _opponent(attacks.get(name))
    spec = MatchSpec(defense=defense, attack=name, protocol="smoke", attack_params=params)
    record = run_match(spec, store=store, cache=cache)
    check_record(record)
    assert record["attack_params"] == {**record["attack_params"], **params}


BUDGETED_DEFENSES = [name for name in defenses.names() if _smallest_budgets(defenses.get(name))]


@pytest.mark.parametrize("name", BUDGETED_DEFENSES)
def test_defense_contract_at_its_smallest_budget(name, shared):
    store, cache = shared
    params = _smallest_budgets(defenses.get(name))
    attack = "distill" if defenses.get(name).serves else "none"
    spec = MatchSpec(defense=name, attack=attack, protocol="smoke", defense_params=params)
    record = run_match(spec, store=store, cache=cache)
    check_record(record)
    assert record["defense_params"] == {**record["defense_params"], **params}
