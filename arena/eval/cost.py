"""What a sweep costs: unit costs measured on earlier matches, and a sweep's estimate.

The cost model. A sweep of defenses D, attacks A and seeds S on one protocol trains the
clean model once per seed, each marked model once per defense and seed, and plays each
applicable (defense, attack) pair once per seed:

    T = |S| * ( c + sum_d m_d + sum_(d,a) (t_a + o) )

``c`` is the clean model's training, ``m_d`` defense d's marking, ``t_a`` attack a's own
work and ``o`` what every match adds to it (loading cached models, evaluating the test
set and the key, storing the record). ``c`` and the ``m_d`` of the defenses that mark from
scratch grow with the protocol's epochs times its owner images; ``t_a`` with the attack's
own budget (the protocol's attack epochs times the attacker's images for fine-tuning
attacks), ``o`` with the test and key sizes. All of them scale with the device's speed
(images per second), so unit costs are measured per protocol on the machine that will run
the sweep: ``unit_costs`` reads them from the matches stored there, and ``estimate``
applies the model to a planned sweep. Matches already finished cost nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from arena.eval.match import MatchSpec
from arena.storage.record import MatchRecord


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of work, each the median over the matches that did that work."""

    clean: float | None  # training the clean model (per seed)
    mark: dict[str, float]  # per defense: marking (per seed)
    attack: dict[str, float]  # per attack: the attack's own work (per match)
    match: float | None  # per match: everything besides training
    matches: int  # the records measured

    def describe(self) -> str:
        def seconds(value: float | None) -> str:
            return "unknown" if value is None else f"{value:.1f} s"

        return (
            f"clean {seconds(self.clean)}, marks of {len(self.mark)} defenses, "
            f"{len(self.attack)} attacks, {seconds(self.match)} per match besides training "
            f"(from {self.matches} matches)"
        )


def unit_costs(records: Iterable[MatchRecord]) -> UnitCosts:
    """The unit costs of the matches in ``records`` (one protocol, one machine): a phase's
    seconds where its model was trained, not loaded from the cache."""
    clean: list[float] = []
    mark: dict[str, list[float]] = {}
    attack: dict[str, list[float]] = {}
    rest: list[float] = []
    count = 0
    for record in records:
        count += 1
        seconds, cached = record.seconds, record.cached
        trained = 0.0
        if not cached.get("clean", True):
            clean.append(seconds["clean"])
            trained += seconds["clean"]
        if not cached.get("marked", True):
            mark.setdefault(record.defense, []).append(seconds["mark"])
            trained += seconds["mark"]
        if not cached.get("attacked", True):
            # An attack that reused a model another attack had trained (retrain and the
            # ensemble in a sweep) is costed as if it trained it: what it costs alone.
            reused = float(record.attack_info.get("reused_seconds", 0.0))
            attack.setdefault(record.attack, []).append(seconds["attack"] + reused)
            trained += seconds["attack"]
            rest.append(max(0.0, seconds["total"] - trained))
    return UnitCosts(
        clean=_median(clean),
        mark={name: _median(values) for name, values in mark.items()},
        attack={name: _median(values) for name, values in attack.items()},
        match=_median(rest),
        matches=count,
    )


@dataclass
class Estimate:
    """A planned sweep's predicted seconds, and the work no stored match has measured."""

    seconds: float = 0.0
    matches: int = 0  # to run (not finished)
    cleans: int = 0  # clean models to train
    marks: int = 0  # marked models to train
    unknown: list[str] = field(default_factory=list)  # what is not counted, by name

    def describe(self) -> str:
        text = (
            f"estimate: {self.matches} matches to run, {self.cleans} clean and {self.marks} "
            f"marked models to train: "
        )
        if not self.unknown:
            return text + f"{self.seconds / 60:.1f} min"
        if self.seconds == 0:  # nothing of it measured: no figure rather than a zero
            return text + "unknown, no stored match of the protocol has measured its parts"
        shown = ", ".join(sorted(self.unknown)[:8])
        more = len(self.unknown) - 8
        return (
            text + f"{self.seconds / 60:.1f} min, not counting {shown}"
            f"{f' and {more} more' if more > 0 else ''} (no stored match has measured them)"
        )


def estimate(
    specs: Iterable[MatchSpec],
    costs: UnitCosts,
    finished: set[tuple[str, str, int]] = frozenset(),  # type: ignore[assignment]
    trained: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
) -> Estimate:
    """The cost model applied to ``specs``: ``finished`` (defense, attack, seed) matches
    at their defaults cost nothing, and ``trained`` ("clean" or a defense, seed) models
    are in the cache. A spec with parameters of its own (a point of a removal-cost curve)
    is costed as its attack at the defaults."""
    result = Estimate()
    unknown: set[str] = set()
    needed: set[tuple[str, int]] = set()
    for spec in specs:
        defaults = not spec.attack_params and not spec.defense_params
        if defaults and (spec.defense, spec.attack, spec.seed) in finished:
            continue
        result.matches += 1
        for model in ("clean", spec.defense):
            if (model, spec.seed) not in trained:
                needed.add((model, spec.seed))
        result.seconds += _known(costs.attack.get(spec.attack), f"attack {spec.attack}", unknown)
        result.seconds += _known(costs.match, "the per-match work", unknown)
    for model, _ in needed:
        if model == "clean":
            result.cleans += 1
            result.seconds += _known(costs.clean, "the clean model", unknown)
        else:
            result.marks += 1
            result.seconds += _known(costs.mark.get(model), f"marking {model}", unknown)
    result.unknown = sorted(unknown)
    return result


def _known(value: float | None, name: str, unknown: set[str]) -> float:
    if value is None:
        unknown.add(name)
        return 0.0
    return value


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
