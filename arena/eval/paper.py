"""The seed paper's tables played again: Adi et al., USENIX Security 2018, Table 1 (CIFAR-10
on ResNet-18: test and trigger-set accuracy without a mark, marked from scratch, marked
after pre-training) and Table 2 (transfer from CIFAR-10 to STL-10).

Each table row is a set of matches, one per seed, played (or read from the cache) like
``arena run``'s and stored in the results database; the row's figures are means over the
seeds with 95% t-intervals (none from one seed), beside the paper's own numbers. Records
hold numbers only; ``arena.report.paper`` writes the Markdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean

from arena.core.protocols import get_protocol
from arena.eval.leaderboard import mean_interval
from arena.eval.match import MatchSpec, play_match
from arena.storage.artifacts import ArtifactCache
from arena.storage.record import EvidenceRecord, Interval, MatchRecord
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError, UnknownNameError
from arena.util.progress import Reporter, silent

# Where the paper's figures come from. Table 2's are in the project's text of the paper
# (shared/paper); Table 1's body is not, and is quoted from the published paper's Table 1.
TABLE1_SOURCE = "Adi et al. 2018, Table 1 (CIFAR-10, ResNet-18)"
TABLE2_SOURCE = "Adi et al. 2018, Table 2 (CIFAR-10 -> STL-10)"


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper's table and the match that measures it: ``part`` says which
    model of the match the row reads (``clean``, ``marked``, or ``transferred``: the
    attacked model, its new task's accuracy and its owner-head evidence)."""

    label: str
    defense: str
    attack: str
    part: str
    paper_test_acc: float  # in [0, 1]
    paper_trigger_acc: float
    attack_params: dict[str, str] = field(default_factory=dict)
    test_set: str = "the protocol's test split"


@dataclass(frozen=True)
class PaperTableSpec:
    name: str
    title: str
    source: str
    rows: tuple[PaperRow, ...]
    notes: tuple[str, ...] = ()


TABLES: dict[str, PaperTableSpec] = {
    spec.name: spec
    for spec in (
        PaperTableSpec(
            name="table1",
            title="Table 1: test and trigger-set accuracy on CIFAR-10",
            source=TABLE1_SOURCE,
            rows=(
                PaperRow("NO-WM", "backdoor-wm", "none", "clean", 0.9342, 0.07),
                PaperRow("FROMSCRATCH", "backdoor-wm", "none", "marked", 0.9381, 1.0),
                PaperRow("PRE-TRAINED", "backdoor-wm-pretrained", "none", "marked", 0.9365, 1.0),
            ),
            notes=(
                "NO-WM is the owner's clean model measured on FROMSCRATCH's key; FROMSCRATCH "
                "is `backdoor-wm`, PRE-TRAINED `backdoor-wm-pretrained`, each with attack "
                "`none`.",
                "The paper's figures are quoted from its published Table 1: the project's "
                "text of the paper does not hold the table's body.",
            ),
        ),
        PaperTableSpec(
            name="table2",
            title="Table 2: transfer learning from CIFAR-10 to STL-10",
            source=TABLE2_SOURCE,
            rows=(
                PaperRow(
                    "CIFAR10 -> STL10",
                    "backdoor-wm",
                    "transfer",
                    "transferred",
                    0.8187,
                    0.72,
                    attack_params={"task": "stl10"},
                    test_set="STL-10's test images of the 9 classes shared with CIFAR-10",
                ),
            ),
            notes=(
                "The model is `backdoor-wm` (FROMSCRATCH) after attack `transfer` with "
                "`task=stl10`; its trigger accuracy is measured with the owner's output "
                "layer put back, as the paper does. The paper's text does not say whether its "
                "transferred model was marked from scratch or after pre-training.",
            ),
        ),
    )
}


@dataclass(frozen=True)
class SeedFigures:
    seed: int
    test_acc: float
    trigger_successes: int
    trigger_trials: int
    verified: bool

    @property
    def trigger_acc(self) -> float:
        return self.trigger_successes / self.trigger_trials


@dataclass(frozen=True)
class RowResult:
    row: PaperRow
    seeds: tuple[SeedFigures, ...]

    @property
    def test_acc(self) -> float:
        return mean(seed.test_acc for seed in self.seeds)

    @property
    def test_acc_ci95(self) -> Interval | None:
        return mean_interval([seed.test_acc for seed in self.seeds])

    @property
    def trigger_acc(self) -> float:
        return mean(seed.trigger_acc for seed in self.seeds)

    @property
    def trigger_acc_ci95(self) -> Interval | None:
        return mean_interval([seed.trigger_acc for seed in self.seeds])

    @property
    def verified_seeds(self) -> int:
        return sum(seed.verified for seed in self.seeds)


@dataclass(frozen=True)
class PaperTable:
    spec: PaperTableSpec
    protocol: str  # label: name and version
    model: str
    alpha: float
    rows: tuple[RowResult, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(seed.seed for seed in self.rows[0].seeds)


def get_table(name: str) -> PaperTableSpec:
    if name not in TABLES:
        raise UnknownNameError("paper table", name, TABLES, hint="table1 or table2")
    return TABLES[name]


def reproduce(
    name: str,
    protocol: str,
    seeds: list[int],
    store: ResultStore | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    on_match: Callable[[MatchRecord], None] | None = None,
) -> PaperTable:
    """Play every match of the table on ``protocol`` for ``seeds`` and gather the rows.

    The protocol is looked up first, and each match checks its plugins, parameters and
    data (the protocol's data set, STL-10 for the transfer) before it trains: bad input is
    one error before any training."""
    spec = get_table(name)
    if not seeds:
        raise ArenaError("a paper table needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ArenaError(f"seeds repeat: {', '.join(map(str, seeds))}")
    chosen = get_protocol(protocol)
    specs = {
        (row.defense, row.attack, seed): MatchSpec(
            defense=row.defense,
            attack=row.attack,
            protocol=protocol,
            seed=seed,
            attack_params=row.attack_params,
        )
        for row in spec.rows
        for seed in seeds
    }
    store = store or ResultStore()
    cache = cache or ArtifactCache()
    records: dict[tuple[str, str, int], MatchRecord] = {}
    for key, match in specs.items():
        record = play_match(match, store=store, cache=cache, progress=progress)
        records[key] = record
        if on_match is not None:
            on_match(record)
    rows = tuple(
        RowResult(row, tuple(_figures(row, records[(row.defense, row.attack, s)]) for s in seeds))
        for row in spec.rows
    )
    return PaperTable(spec, chosen.label, chosen.model, chosen.alpha, rows)


def _figures(row: PaperRow, record: MatchRecord) -> SeedFigures:
    if row.part == "transferred":
        evidence = record.attacked.owner_head_evidence
        test_acc = float(record.attack_info["task_test_acc"])
    else:
        part = getattr(record, row.part)
        evidence, test_acc = part.evidence, part.test_acc
    if not isinstance(evidence, EvidenceRecord):
        raise ArenaError(f"the match of {row.label} recorded no trigger evidence")
    return SeedFigures(
        seed=record.seed,
        test_acc=test_acc,
        trigger_successes=evidence.successes,
        trigger_trials=evidence.trials,
        verified=evidence.verified,
    )
