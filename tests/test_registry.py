"""Plugin registries in arena.registry. Anything that mutates uses a fresh Registry."""

from __future__ import annotations

import pytest

from arena.core.plugin import Attack, AttackOutcome, Defense, RemovalAttack, ThreatModel
from arena.core.registry import DISTRIBUTION, Registry, attacks, defenses, registry_for
from arena.util.errors import ArenaError, UnknownNameError
from arena.util.version import __version__


class Stub(RemovalAttack):
    """A complete attack that does nothing, for registries under test."""

    def threat_model(self, ctx):
        return ThreatModel(data="none", labels="none")

    def remove(self, model, ctx):
        return AttackOutcome(model=model)


def fresh_registry() -> Registry:
    # No entry point is installed in this group, and the built-in modules register
    # themselves on the global registries, so this one starts empty.
    return Registry("attack", "arena.test.none", "attacks")


def test_builtin_defenses_are_registered() -> None:
    names = defenses.names()
    for name in ("backdoor-wm", "backdoor-wm-pretrained", "none"):
        assert name in names
        assert issubclass(defenses.get(name), Defense)
        assert defenses.get(name).name == name


def test_builtin_attacks_are_registered() -> None:
    names = attacks.names()
    for name in ("none", "ftll", "ftal", "rtll", "rtal"):
        assert name in names
        assert issubclass(attacks.get(name), Attack)
        assert attacks.get(name).name == name


def test_no_builtin_plugin_is_broken() -> None:
    assert defenses.broken() == []
    assert attacks.broken() == []


def test_builtin_source_is_this_distribution() -> None:
    info = attacks.info("rtal")
    assert info.kind == "attack"
    assert info.cls is attacks.get("rtal")
    assert "watermark-arena" in info.source
    assert __version__ in info.source
    assert "watermark-arena" in defenses.info("backdoor-wm").source


def test_builtin_summaries_come_from_docstrings() -> None:
    for info in defenses.entries() + attacks.entries():
        assert info.summary, f"{info.kind} {info.name!r} has no docstring summary"
        assert "\n" not in info.summary


def test_unknown_attack_suggests_the_closest_name() -> None:
    with pytest.raises(UnknownNameError) as raised:
        attacks.get("rtla")
    message = str(raised.value)
    assert "unknown attack 'rtla'" in message
    assert "did you mean 'rtal'?" in message
    assert "arena list attacks" in message


def test_unknown_defense_mentions_the_listing() -> None:
    with pytest.raises(UnknownNameError, match="arena list defenses") as raised:
        defenses.get("backdor-wm")
    assert "did you mean 'backdoor-wm'?" in str(raised.value)


def test_fresh_registry_registers_and_gets() -> None:
    registry = fresh_registry()
    assert registry.names() == []
    assert registry.broken() == []

    @registry.register("mine")
    class Mine(Stub):
        """My attack, first line.

        More detail.
        """

    assert Mine.name == "mine"
    assert registry.get("mine") is Mine
    assert registry.names() == ["mine"]
    info = registry.info("mine")
    assert info.source == f"{DISTRIBUTION} {__version__}"
    assert info.summary == "My attack, first line."
    # The global registry knows nothing of it.
    with pytest.raises(UnknownNameError):
        attacks.get("mine")


def test_registering_the_same_class_twice_is_harmless() -> None:
    registry = fresh_registry()

    class Mine(Stub):
        """Mine."""

    registry.register("mine")(Mine)
    registry.register("mine")(Mine)
    assert registry.names() == ["mine"]


def test_a_second_class_under_a_taken_name_is_refused() -> None:
    registry = fresh_registry()

    @registry.register("mine")
    class First(Stub):
        """First."""

    class Second(Stub):
        """Second."""

    with pytest.raises(ArenaError, match="registered twice"):
        registry.register("mine")(Second)
    assert registry.get("mine") is First


def test_fresh_registry_unknown_name_hint() -> None:
    registry = fresh_registry()

    @registry.register("alpha-attack")
    class AlphaAttack(Stub):
        """Alpha."""

    with pytest.raises(UnknownNameError) as raised:
        registry.get("alpha-atack")
    assert "did you mean 'alpha-attack'?" in str(raised.value)
    assert "arena list attacks" in str(raised.value)


def test_registry_for_kinds() -> None:
    assert registry_for("attack") is attacks
    assert registry_for("attacks") is attacks
    assert registry_for("defense") is defenses
    assert registry_for("defenses") is defenses
    with pytest.raises(UnknownNameError, match="did you mean 'attacks'"):
        registry_for("atacks")


@pytest.mark.parametrize(("typo", "meant"), [("rtla", "rtal"), ("ftla", "ftal"), ("ftlll", "ftll")])
def test_swapped_letters_suggest_the_intended_name(typo: str, meant: str) -> None:
    error = UnknownNameError("attack", typo, ["none", "ftll", "ftal", "rtll", "rtal"])
    assert f"did you mean {meant!r}?" in str(error)


class _Dist:
    def __init__(self, name: str) -> None:
        self.name, self.version = name, "1.0"


class _EntryPoint:
    """What importlib.metadata gives for one installed entry point."""

    def __init__(self, name: str, dist: str, cls: type) -> None:
        self.name, self.value, self.dist, self._cls = name, f"{dist}:X", _Dist(dist), cls

    def load(self) -> type:
        return self._cls


def test_a_name_two_packages_provide_is_reported_and_refused(monkeypatch) -> None:
    from arena.core import registry as registry_module

    class One(Stub):
        pass

    class Two(Stub):
        pass

    installed = [_EntryPoint("noisy", "pkg-a", One), _EntryPoint("noisy", "pkg-b", Two)]

    def entry_points(group: str, name: str | None = None):
        return [ep for ep in installed if name is None or ep.name == name]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    registry = fresh_registry()
    assert registry.providers("noisy") == ["pkg-a 1.0", "pkg-b 1.0"]
    with pytest.raises(ArenaError, match="'noisy' is provided by pkg-a 1.0 and by pkg-b 1.0"):
        registry.get("noisy")
    assert "noisy" not in registry.names()
    assert [b.error for b in registry.broken()] == [
        "provided by pkg-a 1.0 and by pkg-b 1.0; uninstall all but one"
    ]


def test_a_third_party_plugin_shadowing_a_builtin_is_refused(monkeypatch) -> None:
    from arena.core import registry as registry_module

    class Impostor(Stub):
        pass

    installed = [_EntryPoint("rtal", "pkg-c", Impostor)]

    def entry_points(group: str, name: str | None = None):
        return [ep for ep in installed if name is None or ep.name == name]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    # The global registry: the built-in modules registered there when first imported.
    with pytest.raises(ArenaError, match=f"'rtal' is provided by {DISTRIBUTION} .* and by pkg-c"):
        attacks.get("rtal")


def test_an_entry_point_named_otherwise_than_its_class_registers_is_refused(monkeypatch) -> None:
    """Two names for one plugin would store its results under either: refused, by name."""
    from arena.core import registry as registry_module

    registry = fresh_registry()

    class Tuned(Stub):
        pass

    class Decorated(_EntryPoint):
        def load(self) -> type:  # the module's @register_attack("norm-tune") runs on import
            return registry.register("norm-tune")(self._cls)

    installed = [Decorated("mismatch-name", "pkg-d", Tuned)]

    def entry_points(group: str, name: str | None = None):
        return [ep for ep in installed if name is None or ep.name == name]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    with pytest.raises(ArenaError, match="named 'mismatch-name' but its class registers as"):
        registry.get("mismatch-name")
    assert [b.name for b in registry.broken()] == ["mismatch-name"]
