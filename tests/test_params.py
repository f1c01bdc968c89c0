"""Strict parsing of declared plugin parameters in arena.params."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from arena.errors import ArenaError, UnknownNameError
from arena.params import NoParams, describe_params, params_to_dict, parse_params
from arena.registry import attacks, defenses


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
    assert describe_params(ExampleParams) == (
        "lr=0.1 epochs=2 nesterov=False budget=5 optimizer='sgd' name='x'"
    )


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
