"""Combined attacks (``--attack a+b``): the parts run in order with their own parameters,
the threat model is their union, a chain applies where every part does, and a sweep and
the leaderboard take chains as attacks of a section of their own."""

from __future__ import annotations

import json

import pytest
import torch

from arena.core.chain import Chain
from arena.core.context import Context
from arena.core.models import clone_model
from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.eval import sweep as sweeping
from arena.eval.leaderboard import build
from arena.report.leaderboard import to_markdown
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError, UnknownNameError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(protocol=SMOKE, seed=0, device=torch.device("cpu"))


def test_a_chain_is_an_attack_named_by_its_parts():
    chain = attacks.get("fine-prune+distill")
    assert issubclass(chain, Chain) and chain is attacks.get("fine-prune+distill")
    assert chain.name == "fine-prune+distill" and chain.threat == "removal"
    assert [part.name for part in chain.parts] == ["fine-prune", "distill"]
    assert chain.version == f"{chain.parts[0].version}+{chain.parts[1].version}"
    assert attacks.info("fine-prune+distill").source == attacks.info("distill").source
    # The last part decides the threat when it ends the chain: evasion, a claim.
    assert attacks.get("ftal+jpeg").threat == "evasion"
    assert attacks.get("ftal+piracy").threat == "piracy"
    assert attacks.get("rtal+transfer").changes_task


def test_each_part_takes_its_own_parameters_and_gives_them_back_the_same_way():
    chain = attacks.get("fine-prune+distill")({"fine-prune.fraction": 0.8, "distill.epochs": 2})
    assert chain.steps[0].params.fraction == 0.8 and chain.steps[1].params.epochs == 2
    stored = chain.params_dict()
    assert stored["fine-prune.fraction"] == 0.8 and stored["distill.epochs"] == 2
    assert set(stored) == {
        f"{step.name}.{field}" for step in chain.steps for field in step.params_dict()
    }
    assert attacks.get("fine-prune+distill")(stored).params_dict() == stored
    with pytest.raises(ArenaError, match="names no part of the chain; write part.parameter"):
        attacks.get("fine-prune+distill")({"fraction": 0.8})
    with pytest.raises(UnknownNameError, match="parameter of attack 'distill'"):
        attacks.get("fine-prune+distill")({"distill.fraction": 0.8})


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("ftal+ftal", "names ftal twice"),
        ("jpeg+ftal", "jpeg serves the model behind a query-time filter"),
        ("piracy+ftal", "piracy claims ownership of the model as it stands"),
        ("transfer+ftal", "transfer moves the model to another task"),
        ("ftal+", "unknown attack ''"),
        ("ftal+rtla", "did you mean 'rtal'"),
    ],
)
def test_chains_that_cannot_run_are_refused_by_name(name, refusal):
    with pytest.raises(ArenaError, match=refusal):
        attacks.get(name)


def test_the_threat_model_is_the_union_of_the_parts(ctx):
    parts = [attacks.get(name)() for name in ("fine-prune", "distill")]
    chain = attacks.get("fine-prune+distill")()
    models = [part.threat_model(ctx) for part in parts]
    union = chain.threat_model(ctx)
    assert (union.data, union.labels) == ("attacker-split", "true")
    assert union.epochs == sum(model.epochs for model in models)
    assert union.query_budget == models[1].query_budget  # fine-prune queries nothing


def test_a_chain_applies_where_every_part_applies_and_only_its_first_part_meets_the_victim():
    dawn, uchida = defenses.get("dawn")(), defenses.get("uchida")()
    # dawn's model never leaves the owner's API: extract through it, then fine-tune the
    # copy; not the other way round.
    assert attacks.get("distill+ftal")().applies_to(dawn) is None
    assert "outside its threat model" in attacks.get("ftal+distill")().applies_to(dawn)
    refusal = attacks.get("ftal+evade-detector")().applies_to(uchida)
    assert refusal.startswith("its part evade-detector does not apply")
    skipped: list[tuple[str, str, str]] = []
    specs = sweeping.plan("smoke", ["uchida"], ["ftal+evade-detector", "ftal+prune"], [0], skipped)
    assert [s.attack for s in specs] == ["ftal+prune"]
    assert skipped[0][:2] == ("uchida", "ftal+evade-detector")


def test_the_parts_run_in_order_as_they_run_alone(ctx):
    """A chain's result is, bit for bit, its first part's result attacked by its second:
    each part keeps its own random streams and parameters."""
    model = ctx.new_model()
    chain = attacks.get("ftal+prune")({"ftal.epochs": 1, "prune.sparsity": 0.5})
    by_chain = chain.run(clone_model(model), ctx)
    fine_tuned = attacks.get("ftal")({"epochs": 1}).run(clone_model(model), ctx)
    by_hand = attacks.get("prune")({"sparsity": 0.5}).run(fine_tuned.model, ctx)
    chained, alone = by_chain.model.state_dict(), by_hand.model.state_dict()
    assert chained.keys() == alone.keys()
    assert all(torch.equal(chained[name], alone[name]) for name in chained)
    assert not torch.equal(chained["fc.weight"], model.state_dict()["fc.weight"])
    parts = by_chain.info["parts"]
    assert [part["attack"] for part in parts] == ["ftal", "prune"]
    assert all(part["seconds"] > 0 for part in parts)
    assert parts[0]["threat_model"]["epochs"] == 1


def test_rtal_then_anything_keeps_the_replaced_head_for_the_owner_head_evidence(ctx):
    outcome = attacks.get("rtal+prune")({"rtal.epochs": 1}).run(ctx.new_model(), ctx)
    assert outcome.replaced_head
    assert [part["replaced_head"] for part in outcome.info["parts"]] == [True, False]


def test_a_swept_chain_is_stored_and_has_its_own_section_on_the_board(tmp_path):
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    specs = sweeping.plan("smoke", ["backdoor-wm"], ["ftll", "ftll+prune"], [0])
    report = sweeping.sweep(specs, store=store, cache=cache)
    assert (report.run, report.failed) == (2, [])
    assert report.trained == {"clean": 1, "marked": 1, "attacked": 2}
    record = {r.attack: r for r in store.matches("smoke")}["ftll+prune"]
    assert record.attack_params["prune.sparsity"] == attacks.get("prune")().params.sparsity
    assert [part["attack"] for part in record.attack_info["parts"]] == ["ftll", "prune"]
    board = build(store, SMOKE)
    assert {row.attack: row.section for row in board.matches} == {
        "ftll": "removal",
        "ftll+prune": "removal chains",
    }
    text = to_markdown(board)
    assert text.index("## Removal attacks") < text.index("## Removal chains (combined")
    assert "| backdoor-wm | ftll+prune |" in text.split("## Removal chains")[1]
    data = json.loads(json.dumps(board.to_dict()))
    assert {m["attack"]: m["section"] for m in data["matches"]}["ftll+prune"] == "removal chains"


def test_the_cli_runs_a_chain_with_dotted_parameters_and_refuses_a_bad_one_in_one_line(tmp_path):
    ok = run_arena(
        "run", "--protocol", "smoke", "--attack", "ftll+prune", "-A", "prune.sparsity=0.3",
        "--json", home=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    record = json.loads(ok.stdout)
    assert record["attack"] == "ftll+prune" and record["attack_params"]["prune.sparsity"] == 0.3
    for args, said in (
        (["--attack", "jpeg+ftal"], "jpeg serves the model behind a query-time filter"),
        (["--attack", "ftll+prune", "-A", "sparsity=0.3"], "names no part of the chain"),
    ):
        bad = run_arena("run", "--protocol", "smoke", *args, home=tmp_path / "bad")
        assert bad.returncode == 2 and said in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad" / "cache").exists() or not any(
            (tmp_path / "bad" / "cache").rglob("*.safetensors")
        )
