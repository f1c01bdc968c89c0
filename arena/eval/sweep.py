"""``arena sweep``: every defense against every attack, for a protocol and seeds.

Matches run defense by defense, so each marked model is trained once and every attack
against it loads it from the artifact cache. A finished match is a cache hit, and each
match is stored as soon as it ends, so an interrupted sweep loses at most the match in
progress: running it again finishes the rest. A match that fails (a plugin's error) is
reported and the sweep goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from arena.core.context import check_seed
from arena.core.protocols import get_protocol
from arena.core.registry import Registry, attacks, defenses
from arena.eval.cost import Estimate, UnitCosts, estimate, unit_costs
from arena.eval.match import MatchSpec, play_match
from arena.storage.artifacts import ArtifactCache
from arena.storage.record import MatchRecord
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from arena.util.progress import Reporter, silent


@dataclass
class SweepReport:
    """What a sweep did: matches run, replayed and failed, and the models it trained."""

    planned: int = 0
    run: int = 0
    replayed: int = 0
    failed: list[tuple[MatchSpec, str]] = field(default_factory=list)
    trained: Counter = field(default_factory=Counter)  # phase -> models trained
    seconds: float = 0.0

    def summary(self) -> str:
        trained = ", ".join(f"{n} {phase}" for phase, n in sorted(self.trained.items()))
        return (
            f"{self.planned} matches: {self.run} run, {self.replayed} already finished, "
            f"{len(self.failed)} failed; models trained: {trained or 'none'}; "
            f"{self.seconds:.0f} s"
        )


def expand(names: Iterable[str], registry: Registry) -> list[str]:
    """Plugin names with ``all`` expanded, each checked against the registry."""
    expanded: list[str] = []
    for name in names:
        for resolved in registry.names() if name == "all" else [name]:
            registry.get(resolved)  # unknown names fail here, before any training
            if resolved not in expanded:
                expanded.append(resolved)
    return expanded


def plan(
    protocol: str,
    defense_names: Iterable[str],
    attack_names: Iterable[str],
    seeds: Iterable[int],
    skipped: list[tuple[str, str, str]] | None = None,
) -> list[MatchSpec]:
    """Every match of the sweep, in the order that trains each marked model once.

    A pair whose attack does not apply to the defense (``Attack.applies_to``) is left
    out and, when ``skipped`` is given, listed there as (defense, attack, reason).
    """
    get_protocol(protocol)
    seeds = list(seeds)
    for seed in seeds:  # refused here, before the first match, not by each match
        check_seed(seed)
    chosen_defenses = expand(defense_names, defenses)
    chosen_attacks = expand(attack_names, attacks)
    pairs = []
    for defense in chosen_defenses:
        for attack in chosen_attacks:
            reason = attacks.get(attack)().applies_to(defenses.get(defense)())
            if reason is None:
                pairs.append((defense, attack))
            elif skipped is not None:
                skipped.append((defense, attack, reason))
    return [
        MatchSpec(defense=defense, attack=attack, protocol=protocol, seed=seed)
        for seed in seeds
        for defense, attack in pairs
    ]


def sweep(
    specs: list[MatchSpec],
    *,
    store: ResultStore | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
    on_match: Callable[[int, MatchSpec, MatchRecord | None, str], None] | None = None,
) -> SweepReport:
    """Run ``specs`` in order; ``on_match(index, spec, record, note)`` after each one."""
    store = store or ResultStore()
    cache = cache or ArtifactCache()
    report = SweepReport(planned=len(specs))
    started = time.perf_counter()
    try:
        for index, spec in enumerate(specs):
            try:
                record = play_match(
                    spec, store=store, cache=cache, progress=progress, device=device
                )
            except ArenaError as error:
                report.failed.append((spec, str(error)))
                if on_match:
                    on_match(index, spec, None, f"failed: {error}")
                continue
            if record.replay_seconds is not None:
                report.replayed += 1
                note = "already finished"
            else:
                report.run += 1
                trained = [p for p, hit in record.cached.items() if not hit and p != "key"]
                report.trained.update(trained)
                note = f"trained: {', '.join(trained)}" if trained else "all models cached"
            if on_match:
                on_match(index, spec, record, note)
    finally:
        report.seconds = time.perf_counter() - started
    return report


def estimate_sweep(specs: list[MatchSpec], store: ResultStore) -> tuple[UnitCosts, Estimate]:
    """The cost model (``arena.eval.cost``) applied to ``specs``, with unit costs from the
    matches ``store`` holds of each protocol's current version. A stored match means its
    clean and marked models are in the cache (unless the cache was emptied since)."""
    records = []
    for name in sorted({spec.protocol for spec in specs}):
        protocol = get_protocol(name)
        records += [
            record
            for record in store.matches(name, protocol.version)
            if record.model == protocol.model and _default_params(record)
        ]
    finished = {(r.defense, r.attack, r.seed) for r in records}
    trained = {(r.defense, r.seed) for r in records} | {("clean", r.seed) for r in records}
    costs = unit_costs(records)
    return costs, estimate(specs, costs, finished, trained)


def _default_params(record: MatchRecord) -> bool:
    """Whether ``record`` is a match a sweep plays: both plugins at their defaults."""
    try:
        defense = defenses.get(record.defense)().params_dict()
        attack = attacks.get(record.attack)().params_dict()
    except ArenaError:  # a plugin no longer installed
        return False
    return dict(record.defense_params) == defense and dict(record.attack_params) == attack
