"""``arena sweep``: every defense against every attack, for a protocol and seeds.

A sweep is a task graph (``task_graph``): the first match of each seed trains its clean
model, the first match of each (defense, seed) then trains that defense's marked model,
and every other match against that marked model waits for it and loads it from the
artifact cache. So each clean model is trained once per seed and each marked model once
per defense and seed, however many workers play the matches. Two executors run the
graph: ``local`` (the default) plays the matches one after another in this process, in
the graph's order; ``ray`` (``RaySweep``) plays them as Ray tasks on a local or existing
cluster, each started once the match it waits for has ended.

Either way one process writes the results database (the driver, here): a match is stored
as soon as it ends, so an interrupted sweep loses at most the matches in progress, and
running it again skips the finished ones. A match that fails (a plugin's error) is
reported and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from arena.core.chain import STUDY_CHAINS
from arena.core.context import check_seed
from arena.core.data import load_raw
from arena.core.environment import apply_deterministic_defaults
from arena.core.protocols import Protocol, get_protocol
from arena.core.registry import Registry, attacks, defenses
from arena.eval.cost import Estimate, UnitCosts, estimate, unit_costs
from arena.eval.match import MatchSpec, play_unsaved
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationSnapshot, CalibrationStore
from arena.storage.record import MatchRecord
from arena.storage.results import ResultSnapshot, ResultStore
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
    """Plugin names with ``all`` expanded (and, for attacks, ``chains``: the study's
    chains, ``arena.core.chain.STUDY_CHAINS``), each checked against the registry."""
    expanded: list[str] = []
    for name in names:
        if name == "all":
            resolved_names = registry.names()
        elif name == "chains" and registry.chains:
            resolved_names = list(STUDY_CHAINS)
        else:
            resolved_names = [name]
        for resolved in resolved_names:
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
    budget_curve: bool = False,
) -> list[MatchSpec]:
    """Every match of the sweep, in the order that trains each marked model once.

    A pair whose attack does not apply to the defense (``Attack.applies_to``) is left
    out and, when ``skipped`` is given, listed there as (defense, attack, reason).
    ``budget_curve``: an attack that declares a budget (``Attack.budget_curve``) is
    played at every value of its grid instead of its defaults, the points of its
    removal-cost curve; the others at their defaults.
    """
    get_protocol(protocol)
    seeds = list(dict.fromkeys(seeds))  # a seed given twice is one set of matches
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
        MatchSpec(
            defense=defense, attack=attack, protocol=protocol, seed=seed, attack_params=params
        )
        for seed in seeds
        for defense, attack in pairs
        for params in (_budget_points(attack) if budget_curve else [{}])
    ]


def _budget_points(attack: str) -> list[dict[str, Any]]:
    """The attack parameters of each point of ``attack``'s removal-cost curve, cheapest
    first; its defaults alone when it declares no budget."""
    budget = attacks.get(attack).budget_curve
    if budget is None:
        return [{}]
    return [{budget.parameter: value} for value in budget.grid]


def task_graph(specs: list[MatchSpec]) -> list[tuple[int, ...]]:
    """What each match waits for (indices into ``specs``, which must be in ``plan``'s
    order or any order that lists a match's predecessors first).

    The first match of a seed waits for nothing: it trains the seed's clean model. The
    first match of every other (defense, seed) waits for it, since marking a trained
    model starts from the clean one, and trains the defense's marked model. Every other
    match waits for the first match of its (defense, seed), whose marked model it loads.
    """
    first_of_seed: dict[tuple, int] = {}
    first_of_mark: dict[tuple, int] = {}
    graph: list[tuple[int, ...]] = []
    for index, spec in enumerate(specs):
        seed_key = (spec.protocol, spec.model, spec.seed)
        mark_key = (*seed_key, spec.defense, _frozen(spec.defense_params))
        if mark_key in first_of_mark:
            graph.append((first_of_mark[mark_key],))
        elif seed_key in first_of_seed:
            first_of_mark[mark_key] = index
            graph.append((first_of_seed[seed_key],))
        else:
            first_of_seed[seed_key] = first_of_mark[mark_key] = index
            graph.append(())
    return graph


def _snapshots(
    specs: list[MatchSpec], store: ResultStore
) -> tuple[ResultSnapshot, CalibrationSnapshot]:
    """The stored matches and the calibrations ``specs`` need, read now, for workers that
    never open the database. A match looks its null up under the protocol and its
    scheme's own parameters, its claims' reference models under the protocol with the
    match's model and the scheme's defaults."""
    pairs = {
        (protocol, spec.defense, variant)
        for spec in specs
        for protocol in _protocols_of(spec)
        for variant in (_frozen(spec.defense_params), _frozen({}))
    }
    calibrations = CalibrationStore(store.path).snapshot(
        (protocol, defense, json.loads(params)) for protocol, defense, params in pairs
    )
    return store.snapshot(sorted({spec.protocol for spec in specs})), calibrations


def _frozen(params: Any) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


@dataclass(frozen=True)
class Played:
    """What one match task hands back to the driver: the record to store, or why not."""

    spec: MatchSpec
    match_id: str | None = None
    record: MatchRecord | None = None
    replayed: bool = False
    error: str | None = None


def play_task(
    spec: MatchSpec,
    stored: ResultSnapshot,
    calibrations: CalibrationSnapshot,
    cache_root: str,
    device: str | None = None,
    threads: int | None = None,
    discard_attacked: bool = False,
) -> Played:
    """One match, played without storing it (the driver stores it): what a worker runs.

    ``stored`` and ``calibrations``: the driver's snapshots of the stored matches and
    calibrations, so the worker never opens the results database (the driver is its one
    reader and writer, and no node needs file locks that work). ``threads``: the thread
    count to train with (``apply_deterministic_defaults``), set in a worker process of
    its own; None keeps the caller's. A plugin's error (an ``ArenaError``) is handed
    back, not raised: the match failed, not the worker.
    """
    if threads is not None:
        apply_deterministic_defaults(threads)
    try:
        match_id, record, replayed = play_unsaved(
            spec,
            store=stored,
            calibrations=calibrations,
            cache=ArtifactCache(cache_root),
            device=torch.device(device) if device else None,
            discard_attacked=discard_attacked,
        )
    except ArenaError as error:
        return Played(spec, error=str(error))
    return Played(spec, match_id, record, replayed)


def sweep(
    specs: list[MatchSpec],
    *,
    store: ResultStore | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
    on_match: Callable[[int, MatchSpec, MatchRecord | None, str], None] | None = None,
    executor: RaySweep | None = None,
    discard_attacked: bool = False,
) -> SweepReport:
    """Run ``specs`` (``plan``'s order) on ``executor`` (None: one after another in this
    process); ``on_match(index, spec, record, note)`` after each one, in the order they
    end. The records are stored here, by this process alone. ``discard_attacked``: keep
    no attacked model once its match is measured (``play_unsaved``)."""
    store = store or ResultStore()
    store.check_writable()  # every record is written here: refuse now, not after training
    cache = cache or ArtifactCache()
    report = SweepReport(planned=len(specs))
    started = time.perf_counter()

    def finish(index: int, played: Played) -> None:
        spec = played.spec
        if played.error is not None:
            report.failed.append((spec, played.error))
            if on_match:
                on_match(index, spec, None, f"failed: {played.error}")
            return
        record = played.record
        if played.replayed:
            report.replayed += 1
            note = "already finished"
        else:
            store.save(played.match_id, record)
            report.run += 1
            trained = [p for p, hit in record.cached.items() if not hit and p != "key"]
            report.trained.update(trained)
            note = f"trained: {', '.join(trained)}" if trained else "all models cached"
        if on_match:
            on_match(index, spec, record, note)

    try:
        if executor is None:
            for index, spec in enumerate(specs):
                try:
                    match_id, record, replayed = play_unsaved(
                        spec,
                        store=store,
                        cache=cache,
                        progress=progress,
                        device=device,
                        discard_attacked=discard_attacked,
                    )
                except ArenaError as error:
                    finish(index, Played(spec, error=str(error)))
                    continue
                finish(index, Played(spec, match_id, record, replayed))
        else:
            executor.run(specs, task_graph(specs), store, cache, device, finish, discard_attacked)
    finally:
        report.seconds = time.perf_counter() - started
    return report


class RaySweep:
    """The sweep's matches as Ray tasks (``arena sweep --executor ray``).

    ``address`` joins an existing cluster (``ray start --head`` on one machine, ``ray
    start --address ...`` on the others); None starts a local one of ``workers`` CPUs
    for the sweep and stops it after. Each match is a task of ``threads`` CPUs (and one
    GPU where the cluster has GPUs), submitted once the match it waits for
    (``task_graph``) has ended, and retried up to ``retries`` times if its worker dies;
    a plugin's error is not retried. The results database is written here only; the
    artifact cache and the database must be at paths every node can read and write
    (one machine, or a shared filesystem mounted at the same path on every node).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads: int = 1,
        retries: int = 2,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ArenaError(
                "the ray executor needs Ray: pip install 'watermark-arena[ray]'"
            ) from None
        if workers is not None and workers < 1:
            raise ArenaError(f"workers must be >= 1, got {workers}")
        if workers is not None and address is not None:
            raise ArenaError(
                "--workers sizes a local cluster; a joined one (--address) has its own"
            )
        if threads < 1:
            raise ArenaError(f"threads must be >= 1, got {threads}")
        self.address, self.workers, self.threads, self.retries = address, workers, threads, retries
        self.start_seconds: float | None = None  # starting (or joining) the cluster

    def run(
        self,
        specs: list[MatchSpec],
        graph: list[tuple[int, ...]],
        store: ResultStore,
        cache: ArtifactCache,
        device: torch.device | None,
        finish: Callable[[int, Played], None],
        discard_attacked: bool = False,
    ) -> None:
        import ray

        for name in sorted({spec.protocol for spec in specs}):
            # Each data set read once, here: a missing one is an error before any worker starts.
            load_raw(get_protocol(name).dataset)
        started = time.perf_counter()
        started_here = not ray.is_initialized()
        if started_here:
            local = self.address is None  # "local": a new cluster, never one found lying around
            with _workers_at_our_priority(local):
                ray.init(
                    address=self.address or "local",
                    num_cpus=(self.workers or os.cpu_count() or 1) * self.threads
                    if local
                    else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": _arena_environment()},
                )
        self.start_seconds = time.perf_counter() - started
        try:
            task = ray.remote(play_task).options(
                num_cpus=self.threads,
                num_gpus=self._gpu_share(ray, device),
                max_retries=self.retries,
            )
            # What the workers read of the database, read once here and shared.
            stored, calibrations = _snapshots(specs, store)
            stored, calibrations = ray.put(stored), ray.put(calibrations)
            cache_root = str(Path(cache.root).resolve())
            where = (stored, calibrations, cache_root, str(device) if device else None)
            waiting = [set(before) for before in graph]
            dependents: dict[int, list[int]] = {}
            for index, before in enumerate(graph):
                for upstream in before:
                    dependents.setdefault(upstream, []).append(index)
            running: dict[Any, int] = {}

            def submit(index: int) -> None:
                running[task.remote(specs[index], *where, self.threads, discard_attacked)] = index

            for index, before in enumerate(waiting):
                if not before:
                    submit(index)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                index = running.pop(done[0])
                try:
                    played = ray.get(done[0])
                except Exception as error:  # the worker died past its retries, or a bug
                    played = Played(specs[index], error=_last_line(error))
                finish(index, played)
                for later in dependents.get(index, []):
                    waiting[later].discard(index)
                    if not waiting[later]:
                        submit(later)
        finally:
            if started_here:
                ray.shutdown()

    def _gpu_share(self, ray: Any, device: torch.device | None) -> float:
        """The GPU each task asks for: none on a CPU device or a cluster without GPUs;
        else the cluster's GPUs shared evenly by the tasks its CPUs can run at once. A
        request no node can meet is refused here, not left waiting forever."""
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if not any(node.get("CPU", 0) >= self.threads for node in nodes):
            raise ArenaError(
                f"no node of the Ray cluster has {self.threads} CPUs for a task "
                "(ARENA_THREADS); lower it"
            )
        gpus = sum(node.get("GPU", 0) for node in nodes)
        if gpus == 0 or (device is not None and device.type != "cuda"):
            return 0
        at_once = max(1, int(sum(node.get("CPU", 0) for node in nodes) // self.threads))
        return min(1.0, gpus / at_once)


def _protocols_of(spec: MatchSpec) -> tuple[Protocol, ...]:
    protocol = get_protocol(spec.protocol)
    return (protocol, protocol.with_model(spec.model)) if spec.model else (protocol,)


@contextlib.contextmanager
def _workers_at_our_priority(local: bool) -> Iterator[None]:
    """A local cluster's workers at this process's scheduling priority. Ray starts its
    workers at nice 15 (``RAY_worker_niceness``), so beside any other work on the machine
    (a test run, a second sweep) the matches got a few percent of a core: a smoke matrix
    that takes 49 s on an idle machine took 919 s beside one busy test worker. A joined
    cluster's workers keep what ``ray start`` gave them (README, "Sweeps on Ray")."""
    variable = "RAY_worker_niceness"
    before = os.environ.get(variable)
    if local and before is None:
        os.environ[variable] = str(os.nice(0))
    try:
        yield
    finally:
        if local and before is None:
            os.environ.pop(variable, None)


def _arena_environment() -> dict[str, str]:
    """The arena's settings (``ARENA_*``) for the workers of any node, folder paths made
    absolute (a worker's working directory is not the driver's)."""
    paths = ("ARENA_HOME", "ARENA_DATA")
    return {
        name: os.path.abspath(value) if name in paths and value else value
        for name, value in os.environ.items()
        if name.startswith("ARENA_")
    }


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


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
