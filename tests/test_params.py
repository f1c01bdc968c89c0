"""Strict parsing of declared plugin parameters in arena.core.params, the constraints
``param`` declares, and how ``arena list`` shows them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import pytest

from arena.core.params import (
    NoParams,
    ParamDoc,
    document_params,
    param,
    params_to_dict,
    parse_params,
)
from arena.core.registry import DISTRIBUTION, attacks, defenses
from arena.util.errors import ArenaError, UnknownNameError


@dataclass(frozen=True)
class ExampleParams:
    lr: float = 0.1
    epochs: int = 2
    nesterov: bool = False
    budget: int | None = 5
    optimizer: Literal["sgd", "adam"] = "sgd"
    name: str = "x"

    def check(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


OWNER = "attack 'example'"


def parse(raw: dict) -> ExampleParams:
    return parse_params(ExampleParams, raw, owner=OWNER)


def test_defaults_when_nothing_is_given() -> None:
    assert parse({}) == ExampleParams()
    assert parse_params(ExampleParams, None, owner=OWNER) == ExampleParams()


def test_strings_are_converted_to_the_declared_types() -> None:
    params = parse(
        {
            "lr": "0.01",
            "epochs": "3",
            "nesterov": "true",
            "budget": "none",
            "optimizer": "adam",
            "name": "y",
        }
    )
    assert params.lr == 0.01 and type(params.lr) is float
    assert params.epochs == 3 and type(params.epochs) is int
    assert params.nesterov is True
    assert params.budget is None
    assert params.optimizer == "adam"
    assert params.name == "y"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("True", True),
        ("yes", True),
        ("1", True),
        ("false", False),
        ("NO", False),
        ("0", False),
        (True, True),
        (False, False),
    ],
)
def test_booleans(raw: object, expected: bool) -> None:
    assert parse({"nesterov": raw}).nesterov is expected


def test_optional_accepts_a_value_null_and_none() -> None:
    assert parse({"budget": "7"}).budget == 7
    assert parse({"budget": 9}).budget == 9
    assert parse({"budget": "null"}).budget is None
    assert parse({"budget": None}).budget is None


def test_ints_become_floats_for_float_parameters() -> None:
    params = parse({"lr": 1})
    assert params.lr == 1.0 and type(params.lr) is float


def test_literal_choices_are_enforced() -> None:
    with pytest.raises(ArenaError, match="optimizer") as raised:
        parse({"optimizer": "rmsprop"})
    assert "'sgd'" in str(raised.value) and "'adam'" in str(raised.value)


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError) as raised:
        parse({"epoch": 3})
    message = str(raised.value)
    assert "'epoch'" in message
    assert "did you mean 'epochs'?" in message
    assert OWNER in message


def test_unknown_name_far_from_all_lists_the_parameters() -> None:
    with pytest.raises(UnknownNameError) as raised:
        parse({"zzzzzzzz": 3})
    message = str(raised.value)
    for name in ("lr", "epochs", "nesterov", "budget", "optimizer"):
        assert name in message


def test_no_params_refuses_everything() -> None:
    assert parse_params(NoParams, {}, owner=OWNER) == NoParams()
    with pytest.raises(UnknownNameError, match="none"):
        parse_params(NoParams, {"lr": "0.1"}, owner=OWNER)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", "abc"),
        ("epochs", True),
        ("epochs", 2.5),
        ("epochs", "2.5"),
        ("lr", "fast"),
        ("lr", False),
        ("nesterov", "maybe"),
        ("nesterov", 2),
        ("budget", "lots"),
        ("name", 3),
    ],
)
def test_ill_typed_values_name_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ArenaError) as raised:
        parse({name: value})
    assert not isinstance(raised.value, UnknownNameError)
    message = str(raised.value)
    assert f"parameter {name!r}" in message
    assert OWNER in message


def test_check_value_error_becomes_arena_error() -> None:
    with pytest.raises(ArenaError, match="lr must be > 0") as raised:
        parse({"lr": "-1"})
    assert OWNER in str(raised.value)


def test_dict_and_description() -> None:
    params = parse({"epochs": "4"})
    assert params_to_dict(params)["epochs"] == 4
    assert params_to_dict(params)["budget"] == 5


def test_attack_plugin_rejects_a_negative_learning_rate() -> None:
    with pytest.raises(ArenaError, match="lr") as raised:
        attacks.get("rtal")({"lr": "-1"})
    assert "rtal" in str(raised.value)


def test_attack_plugin_rejects_an_unknown_parameter() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'epochs'"):
        attacks.get("rtal")({"epoch": "2"})


def test_defense_plugin_converts_its_parameters() -> None:
    defense = defenses.get("backdoor-wm")({"trigger_size": "50"})
    assert defense.params.trigger_size == 50
    assert type(defense.params.trigger_size) is int
    assert defenses.get("backdoor-wm")({}).params.trigger_size is None
    with pytest.raises(ArenaError, match="trigger_size"):
        defenses.get("backdoor-wm")({"trigger_size": "0"})


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    """float() takes them; a NaN learning rate would train a NaN model that is stored
    and ranked like any other."""
    with pytest.raises(ArenaError, match="expected a finite number") as raised:
        parse({"lr": value})
    assert "parameter 'lr'" in str(raised.value)
    with pytest.raises(ArenaError, match="expected a finite number"):
        parse({"lr": float(value)})


def test_an_optional_float_refuses_nan_too() -> None:
    with pytest.raises(ArenaError, match="expected a finite number"):
        defenses.get("backdoor-wm")({"lr": "nan"})
    assert defenses.get("backdoor-wm")({"lr": "0.05"}).params.lr == 0.05


@dataclass(frozen=True)
class DeclaredParams:
    rate: float = param(0.1, help="a share of something", above=0, max=1)
    margin: float = param(0.0, help="a margin", min=0, below=1)
    count: int | None = param(None, help="how many; None: all", min=1, max=10_000)
    steps: int = param(3, help="steps", min=1)
    mode: str = param("a", help="how", choices=("a", "b"))
    optimizer: Literal["sgd", "adam"] = param("sgd", help="the optimizer")
    plain: int = 7

    def check(self) -> None:
        if self.steps > 5 and self.mode == "b":
            raise ValueError(f"steps must be <= 5 in mode 'b', got {self.steps}")


def parse_declared(raw: dict) -> DeclaredParams:
    return parse_params(DeclaredParams, raw, owner=OWNER)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rate": "0"}, "rate must lie in (0, 1], got 0.0"),
        ({"rate": 1.5}, "rate must lie in (0, 1], got 1.5"),
        ({"margin": "-0.1"}, "margin must lie in [0, 1), got -0.1"),
        ({"margin": 1}, "margin must lie in [0, 1), got 1.0"),
        ({"count": "0"}, "count must lie in [1, 10,000] (or none), got 0"),
        ({"count": 10_001}, "count must lie in [1, 10,000] (or none), got 10001"),
        ({"steps": "0"}, "steps must be >= 1, got 0"),
        ({"mode": "c"}, "mode must be one of 'a', 'b', got 'c'"),
    ],
)
def test_declared_constraints_are_enforced_in_one_line(raw: dict, message: str) -> None:
    with pytest.raises(ArenaError) as raised:
        parse_declared(raw)
    assert not isinstance(raised.value, UnknownNameError)
    assert str(raised.value) == f"{OWNER}: {message}"


def test_values_on_an_inclusive_bound_and_none_pass() -> None:
    params = parse_declared({"rate": "1", "margin": "0", "count": "none", "steps": "1"})
    assert (params.rate, params.margin, params.count, params.steps) == (1.0, 0.0, None, 1)
    assert parse_declared({"count": "10000", "mode": "b"}).count == 10_000


def test_check_still_runs_after_the_declared_constraints() -> None:
    with pytest.raises(ArenaError, match="steps must be <= 5 in mode 'b', got 6"):
        parse_declared({"steps": "6", "mode": "b"})


def test_a_type_error_is_reported_before_any_constraint() -> None:
    with pytest.raises(ArenaError, match="parameter 'rate': expected a number, got 'x'"):
        parse_declared({"rate": "x"})


def test_param_refuses_contradictory_or_undocumented_declarations() -> None:
    with pytest.raises(TypeError, match="help"):
        param(1, help=" ")
    with pytest.raises(TypeError, match="not both"):
        param(1, help="x", min=0, above=0)
    with pytest.raises(TypeError, match="not both"):
        param(1, help="x", max=2, below=2)
    with pytest.raises(TypeError, match="not a number"):
        param(1, help="x", min="0")


def test_param_keeps_the_default_and_the_metadata() -> None:
    field = {field.name: field for field in dataclasses.fields(DeclaredParams)}["rate"]
    assert field.default == 0.1
    assert dict(field.metadata) == {"help": "a share of something", "above": 0, "max": 1}
    assert param(default_factory=list, help="names").default_factory is list


def test_document_params_gives_type_default_constraint_and_help() -> None:
    docs = {doc.name: doc for doc in document_params(DeclaredParams)}
    assert docs["rate"] == ParamDoc("rate", "float", "0.1", "(0, 1]", "a share of something")
    assert docs["margin"].constraint == "[0, 1)"
    assert docs["count"] == ParamDoc(
        "count", "int | None", "None", "[1, 10,000]", "how many; None: all"
    )
    assert docs["steps"].constraint == ">= 1"
    assert docs["mode"].constraint == "one of 'a', 'b'"
    assert docs["optimizer"].type == "str"
    assert docs["optimizer"].constraint == "one of 'sgd', 'adam'"
    assert docs["plain"] == ParamDoc("plain", "int", "7", "", "")


def _builtin_params() -> list[tuple[str, type]]:
    return [
        (f"{registry.kind} {info.name!r}", info.cls.Params)
        for registry in (defenses, attacks)
        for info in registry.entries()
        if info.source.startswith(DISTRIBUTION)
    ]


@pytest.mark.parametrize(("owner", "params_type"), _builtin_params())
def test_every_builtin_parameter_has_help_and_valid_defaults(owner: str, params_type: type) -> None:
    for doc in document_params(params_type):
        assert doc.help, f"{owner}: parameter {doc.name!r} has no help (declare it with param)"
    # The defaults satisfy the declared constraints and check().
    assert parse_params(params_type, {}, owner=owner) == params_type()


def _arena_list(home, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARENA_HOME": str(home), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-c", "from arena.cli import main; main()", "list", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_arena_list_fits_80_columns_and_shows_help_and_constraints(tmp_path) -> None:
    result = _arena_list(tmp_path)
    assert result.returncode == 0, result.stderr
    too_wide = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    # rtal's parameters: name, type, default and constraint on one line, the help below.
    lines = result.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("rtal "))
    block = lines[start : next(i for i in range(start + 1, len(lines)) if not lines[i])]
    assert "    lr: float = 0.01  > 0" in block
    assert "        the attacker's learning rate" in block
    assert "    epochs: int | None = None  in [0, 10,000]" in block
    assert "    optimizer: str = 'sgd'  one of 'sgd', 'adam'" in block
    for name in ("backdoor-wm", "trigger_size: int | None = None  in [1, 100,000]", "smoke"):
        assert name in result.stdout
    # Each plugin's summary (its docstring's first line) and every budget of a protocol.
    from arena.core.registry import attacks

    summary = attacks.info("rtal").summary
    assert summary in " ".join(line.strip() for line in block)
    assert "  triggers: 20, 5 per batch" in result.stdout
    assert "marking a trained model:" in result.stdout and "augment:" in result.stdout


def test_arena_list_names_threat_model_fields_as_they_are(tmp_path) -> None:
    result = _arena_list(tmp_path, "attacks")
    assert result.returncode == 0, result.stderr
    assert "query_budget: " in result.stdout
    assert "queries:" not in result.stdout
