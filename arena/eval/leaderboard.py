"""Aggregate stored matches per protocol and rank the defenses: the leaderboard's numbers.

A cell (defense, attack, model) aggregates its seeds: accuracies as means with a 95%
t-interval over the seeds, the mark's evidence per seed, and attack success as k of n
seeds with its Clopper-Pearson interval; a cell whose seeds disagree on the verdict is
flagged (``flips``). A defense is ranked by its worst case: the attack its mark did not
survive on the largest share of seeds (the strongest attack against it, a min-max; a
seed whose mark never verified is lost), and defenses
whose worst-case intervals overlap share a rank (``tied``), so no order claims more than
the seeds support. Within a tie, and between schemes the worst case does not separate,
the order is the attacks survived (still verified on every seed, or the attack cost more
accuracy than delta), their share, the marked agreement, functionality preservation and
the name. A scheme whose null is not sound (uncalibrated, or refuted by its
calibration's false claims) decides nothing and ranks last. A later
run of the same match and seed supersedes the earlier; a run with parameters set away
from a plugin's defaults is its own variant row, e.g. ``ftal [lr=0.05]``, and so is a
plugin of the same name from another package. The rows hold numbers; ``arena.report``
turns them into text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from statistics import mean, stdev
from typing import Any

from arena.core.plugin import ThreatModel
from arena.core.protocols import PROTOCOLS, Protocol
from arena.core.registry import CHAIN_SEPARATOR, Registry, attacks, defenses
from arena.core.stats import clopper_pearson
from arena.core.verify import UNSOUND_NULLS
from arena.storage.calibrations import RECORD_FORMAT, CalibrationStore
from arena.storage.record import (
    CertificateCheckRecord,
    CertificateRecord,
    DetectorRecord,
    DisputeRecord,
    EvidenceRecord,
    Interval,
    MatchRecord,
    NullRecord,
    Versions,
    WeightChangeRecord,
)
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError

THREAT_SECTIONS = ("none", "removal", "forgery", "piracy", "evasion")
# Combined attacks (``a+b``) are sections of their own, one per threat, after the rest.
SECTIONS = (*THREAT_SECTIONS, *(f"{threat} chains" for threat in THREAT_SECTIONS[1:]))


def section_of(threat: str, attack: str) -> str:
    """The board's section of a cell: its threat, or that threat's chains."""
    return f"{threat} chains" if CHAIN_SEPARATOR in attack else threat


# The shape of the leaderboard's JSON file: 2 holds numbers where 1 held display text;
# 3 adds the intervals over seeds, the per-seed evidence, the flip flag, each defense's
# worst case and shared ranks (``tied``); 4 adds every seed's record in brief
# (``per_seed``) and the cell's parameters: the data behind the site's pages and plots;
# 5 adds to every seed the attack's weight change, the certificate read at it and its
# check, and the key's evidence on another user's copy (each None where not measured).
# 6 adds each match's section (chains have their own) and the removal-cost curves.
LEADERBOARD_FORMAT = 6


@dataclass(frozen=True)
class NullUsed:
    """The null a match's evidence was tested against: its kind (exact, beta-binomial,
    uncalibrated, refuted; pooled or nominal in old records), mean and dispersion."""

    kind: str
    p: float
    dispersion: float

    @property
    def unsound(self) -> str | None:
        """The kind, when this null decides no verdict; else None."""
        return self.kind if self.kind in UNSOUND_NULLS else None

    @classmethod
    def of(cls, record: MatchRecord) -> NullUsed:
        evidence = record.attacked.evidence
        return cls(record.null.kind, evidence.null_p, evidence.null_dispersion)


@dataclass(frozen=True)
class FalseClaims:
    """A scheme's fresh keys claimed on clean models its calibration never saw."""

    claimed: int
    pairs: int
    ci95: Interval  # 95% Clopper-Pearson
    models: str  # "foreign", or "reference" for white-box keys that fit no foreign model


@dataclass(frozen=True)
class SeedResult:
    """One seed of a cell, as its record has it: what a match page shows of it and what
    the robustness-cost plot draws."""

    seed: int
    clean_acc: float
    clean_acc_ci95: Interval  # over the test split (Clopper-Pearson)
    marked_acc: float
    marked_acc_ci95: Interval
    attacked_acc: float
    attacked_acc_ci95: Interval
    clean_evidence: EvidenceRecord  # the key on the clean model
    marked_evidence: EvidenceRecord
    attacked_evidence: EvidenceRecord
    owner_head: EvidenceRecord | None
    # Forgery and piracy: the attacker's claim on the attacked model, as judged.
    attacker_claim: EvidenceRecord | None
    attacker_claim_passed: bool | None
    null: NullRecord
    attack_succeeded: bool
    outcome: str
    task_acc: float | None  # a task-changing attack's accuracy on its new task
    seconds: dict[str, float]  # per phase; near zero for a phase taken from the cache
    cached: dict[str, bool]
    versions: dict[str, Any]
    weight_change: WeightChangeRecord | None = None  # from the marked model's weights
    certificate: CertificateRecord | None = None  # the marked model's
    # Key inputs that certificate promises at the attack's weight change (None: outside
    # it, where BatchNorm statistics moved or no weights could be compared).
    certified: int | None = None
    certificate_check: CertificateCheckRecord | None = None
    other_user: EvidenceRecord | None = None  # the key on another user's copy

    @classmethod
    def of(cls, record: MatchRecord) -> SeedResult:
        claim = record.claim.claim("attacker", "attacked") if record.claim else None
        return cls(
            seed=record.seed,
            clean_acc=record.clean.test_acc,
            clean_acc_ci95=record.clean.test_acc_ci95,
            marked_acc=record.marked.test_acc,
            marked_acc_ci95=record.marked.test_acc_ci95,
            attacked_acc=record.attacked.test_acc,
            attacked_acc_ci95=record.attacked.test_acc_ci95,
            clean_evidence=record.clean.evidence,
            marked_evidence=record.marked.evidence,
            attacked_evidence=record.attacked.evidence,
            owner_head=record.attacked.owner_head_evidence,
            attacker_claim=None if claim is None else claim.evidence,
            attacker_claim_passed=None if claim is None else claim.verified,
            null=record.null,
            attack_succeeded=record.attack_succeeded,
            outcome=record.outcome,
            task_acc=record.attack_info.get("task_test_acc"),
            seconds=dict(record.seconds),
            cached=dict(record.cached),
            versions=record.versions.to_dict(),
            weight_change=record.attacked.weight_change,
            certificate=record.certificate,
            certified=_certified(record),
            certificate_check=record.attacked.certificate_check,
            other_user=record.other_user,
        )


def _certified(record: MatchRecord) -> int | None:
    """The key inputs the marked model's certificate promises at the attack's weight
    change, where both were measured and only parameters moved."""
    change, certificate = record.attacked.weight_change, record.certificate
    if change is None or certificate is None or change.buffers_changed:
        return None
    return certificate.certified(change.l2)


@dataclass(frozen=True)
class MatchRow:
    """One (defense, attack, model) cell, aggregated over seeds."""

    defense: str  # the plugin name, with the parameters set away from its defaults
    attack: str
    model: str
    threat: str
    seeds: list[int]
    access: str
    clean_acc: float  # means over seeds
    marked_acc: float
    attacked_acc: float
    marked_agreement: float
    marked_verified: int  # seeds
    marked_evidence: EvidenceRecord  # of the first seed
    clean_evidence: EvidenceRecord  # the same key on the clean model, of the first seed
    null: NullUsed  # of the first seed
    attacked_evidence: EvidenceRecord  # of the first seed
    attacked_agreement: float
    attacked_p_value: float  # the largest over seeds: the weakest evidence
    attacked_verified: int
    owner_head: EvidenceRecord | None  # of the first seed
    owner_head_verified: int  # seeds whose owner-head evidence verified
    attack_succeeded: int
    attack_seconds: float
    outcome: str  # the reason, of the first seed
    threat_model: ThreatModel
    # A task-changing attack (transfer learning): its black-box evidence is not evidence,
    # the owner-head evidence decides, and its accuracy is the new task's.
    evidence_applicable: bool = True
    task: str | None = None
    task_acc: float | None = None  # mean over seeds, on the new task's test split
    summary: str = ""  # the attack's own one-line summary, of the first seed
    detector: DetectorRecord | None = None  # a query filter's counts, of the first seed
    claim: DisputeRecord | None = None  # forgery and piracy: the judged claims, first seed
    # The kind of null a seed was decided against when it was not a sound one
    # (uncalibrated, refuted): its evidence is shown, its verdicts are not.
    unsound_null: str | None = None
    # The distributions that provided the plugins (without version).
    defense_package: str | None = None
    attack_package: str | None = None
    # Over the seeds: 95% t-intervals of the mean accuracies (None with one seed), the
    # attacked evidence of every seed as (seed, successes, trials), the Clopper-Pearson
    # interval of the share of seeds the attack succeeded on, and whether the seeds
    # disagree on that verdict.
    clean_acc_ci95: Interval | None = None
    marked_acc_ci95: Interval | None = None
    attacked_acc_ci95: Interval | None = None
    attacked_per_seed: list[tuple[int, int, int]] = field(default_factory=list)
    succeeded_ci95: Interval | None = None
    flips: bool = False
    # Every seed in brief, and the parameters the cell ran with (its first seed's, in
    # full: defaults too).
    per_seed: list[SeedResult] = field(default_factory=list)
    defense_plugin: str = ""  # the plugin's name, without the parameters of the label
    attack_plugin: str = ""
    defense_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)

    @property
    def section(self) -> str:
        return section_of(self.threat, self.attack_plugin or self.attack)


@dataclass(frozen=True)
class WorstCase:
    """The strongest attack against a defense: the one its mark did not survive on the
    largest share of seeds (then the higher interval, then the name). A seed is lost when
    the attack succeeded or the mark was not verified to begin with: a mark that never
    verified survived nothing."""

    attack: str
    lost: int  # seeds
    seeds: int
    ci95: Interval  # Clopper-Pearson of lost / seeds

    @property
    def rate(self) -> float:
        return self.lost / self.seeds


@dataclass(frozen=True)
class DefenseRow:
    rank: int
    defense: str
    access: str
    clean_acc: float
    marked_acc: float
    preservation: float
    marked_agreement: float
    marked_evidence: EvidenceRecord  # of its first match, first seed
    clean_evidence: EvidenceRecord
    evidence_null: NullUsed  # the null those two were tested against
    null: NullUsed  # the null that decided, or (when one did not) the one that could not
    attacks: int
    survived: int | None  # None: no verdict, the scheme's null is not sound
    # Fresh keys of the scheme on clean models of architectures its calibration never saw
    # (the newest calibration); None: not measured.
    false_claims: FalseClaims | None = None
    defense_package: str | None = None
    seeds: int = 0  # the fewest seeds of any of its cells
    worst: WorstCase | None = None  # None: no attack decided (no sound null, or none run)
    tied: bool = False  # its rank is shared: the worst-case intervals overlap


@dataclass(frozen=True)
class NotPlayed:
    """Attacks of the board that a defense never meets, and why (``Attack.applies_to``):
    outside the scheme's threat model, or needing a key the scheme does not have."""

    defense: str
    attacks: list[str]
    reason: str


@dataclass(frozen=True)
class BudgetPoint:
    """One budget of an attack against one defense, over the seeds played at it."""

    value: Any
    seeds: list[int]
    marked_verified: int  # seeds whose mark was verified before the attack
    removed: int  # seeds whose verified mark was not verified after it (owner head for transfer)
    succeeded: int  # seeds the attack won: removed, with test accuracy within delta
    acc_cost: float | None  # marked - attacked test accuracy, mean over seeds (None: another task)
    acc_cost_ci95: Interval | None


@dataclass(frozen=True)
class RemovalCost:
    """An attack's removal-cost curve against a defense (``arena sweep --budget-curve``):
    its declared budget grid, cheapest first, and the cheapest budget that removed the
    mark on every seed played at it, with what that cost in test accuracy. ``cheapest``
    None: not removed within the grid, or (``unsound_null``) no verdict."""

    defense: str
    attack: str
    model: str
    threat: str
    parameter: str
    points: list[BudgetPoint]
    cheapest: Any | None
    cheapest_acc_cost: float | None
    cheapest_acc_cost_ci95: Interval | None
    unsound_null: str | None = None
    # The cheapest budget the attack won on every seed (removed within delta of the marked
    # model's accuracy), None: none.
    cheapest_win: Any | None = None

    @property
    def removed(self) -> bool:
        return self.cheapest is not None


@dataclass(frozen=True)
class Leaderboard:
    protocol: Protocol
    defenses: list[DefenseRow]
    matches: list[MatchRow]
    older_versions: int  # records of earlier protocol versions left out
    superseded: int = 0  # records replaced by a later run of the same cell and seed
    versions: list[tuple[int, Versions]] = field(default_factory=list)  # (seed, ...) per record
    not_played: list[NotPlayed] = field(default_factory=list)
    removal_costs: list[RemovalCost] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEADERBOARD_FORMAT,
            "protocol": self.protocol.name,
            "version": self.protocol.version,
            "fingerprint": self.protocol.fingerprint,
            "generated_by": f"arena leaderboard --protocol {self.protocol.name}",
            "defenses": [asdict(row) for row in self.defenses],
            "matches": [{**asdict(row), "section": row.section} for row in self.matches],
            "not_played": [asdict(row) for row in self.not_played],
            "removal_costs": [asdict(row) for row in self.removal_costs],
        }


Cell = tuple[str, str | None, str, str | None, str]  # defense, its package, attack, ..., model


def build(store: ResultStore, protocol: Protocol) -> Leaderboard:
    records = store.matches(protocol.name)  # oldest first
    current = [r for r in records if r.protocol_version == protocol.version]
    # One record per (variant, package, model, seed): a later run of the same cell (a
    # newer plugin version, a new calibration, a renamed parameter) supersedes the earlier.
    latest: dict[tuple[Cell, int], MatchRecord] = {}
    for record in current:
        latest[(_cell(record), record.seed)] = record
    groups: dict[Cell, list[MatchRecord]] = defaultdict(list)
    for (cell, _seed), record in latest.items():
        if _curve_point(record, only=True) is None:  # a curve's own points are its rows
            groups[cell].append(record)
    matches = sorted(
        (_match_row(cell, rows) for cell, rows in groups.items()),
        key=lambda row: (
            SECTIONS.index(row.section) if row.section in SECTIONS else len(SECTIONS),
            row.defense,
            row.attack,
            row.model,
            row.defense_package or "",
            row.attack_package or "",
        ),
    )
    return Leaderboard(
        protocol,
        _rank(matches, _false_claims(store, protocol, matches)),
        matches,
        older_versions=len(records) - len(current),
        superseded=len(current) - len(latest),
        versions=[(record.seed, record.versions) for record in latest.values()],
        not_played=_not_played(
            {record.defense for record in latest.values()},
            {record.attack for record in latest.values()},
        ),
        removal_costs=_removal_costs(list(latest.values())),
    )


def _curve_point(record: MatchRecord, only: bool = False) -> tuple[str, Any] | None:
    """(parameter, value) when ``record`` is a point of its attack's removal-cost curve:
    its parameters are the defaults but for the attack's budget, whose value is on the
    grid. ``only``: a point that is not also the attack at its defaults (those stay
    cells of the board)."""
    try:
        attack = attacks.get(record.attack)
        defaults = attack().params_dict()
    except ArenaError:  # a plugin no longer installed
        return None
    budget = attack.budget_curve
    if budget is None:
        return None
    params = dict(record.attack_params)
    moved = {
        name for name in params.keys() | defaults.keys() if params.get(name) != defaults.get(name)
    }
    value = params.get(budget.parameter)
    if moved - {budget.parameter} or value not in budget.grid:
        return None
    if only and not moved:
        return None
    return budget.parameter, value


def _removal_costs(records: list[MatchRecord]) -> list[RemovalCost]:
    """Every curve the records hold a point of, with the points played; attacks played
    at one budget only (their defaults) are the board's cells, not a curve."""
    curves: dict[tuple, dict[Any, list[MatchRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        point = _curve_point(record)
        if point is None:
            continue
        cell = (
            labelled(defenses, record.defense, dict(record.defense_params)),
            record.attack,
            record.model,
            record.threat,
            point[0],
        )
        curves[cell][point[1]].append(record)
    rows = []
    for (defense, attack, model, threat, parameter), by_value in sorted(
        curves.items(), key=lambda item: item[0][:3]
    ):
        if len(by_value) < 2:
            continue
        grid = attacks.get(attack).budget_curve.grid
        points = [_budget_point(value, by_value[value]) for value in grid if value in by_value]
        unsound = next(
            (r.unsound_null for rs in by_value.values() for r in rs if r.unsound_null), None
        )
        cheapest = win = None
        if unsound is None:
            cheapest = next((p for p in points if p.removed == len(p.seeds)), None)
            win = next((p for p in points if p.succeeded == len(p.seeds)), None)
        rows.append(
            RemovalCost(
                defense=defense,
                attack=attack,
                model=model,
                threat=threat,
                parameter=parameter,
                points=points,
                cheapest=cheapest.value if cheapest else None,
                cheapest_acc_cost=cheapest.acc_cost if cheapest else None,
                cheapest_acc_cost_ci95=cheapest.acc_cost_ci95 if cheapest else None,
                unsound_null=unsound,
                cheapest_win=win.value if win else None,
            )
        )
    return rows


def _budget_point(value: Any, records: list[MatchRecord]) -> BudgetPoint:
    records = sorted(records, key=lambda r: r.seed)

    def removed(record: MatchRecord) -> bool:
        if not record.marked.evidence.verified:
            return False
        if not record.attacked.evidence.applicable:  # another task: the owner head decides
            head = record.attacked.owner_head_evidence
            return head is not None and not head.verified
        return not record.attacked.evidence.verified

    same_task = all(r.attacked.evidence.applicable for r in records)
    costs = [r.marked.test_acc - r.attacked.test_acc for r in records]
    return BudgetPoint(
        value=value,
        seeds=[r.seed for r in records],
        marked_verified=sum(r.marked.evidence.verified for r in records),
        removed=sum(removed(r) for r in records),
        succeeded=sum(r.attack_succeeded for r in records),
        acc_cost=mean(costs) if same_task else None,
        acc_cost_ci95=mean_interval(costs) if same_task else None,
    )


def _not_played(defense_names: set[str], attack_names: set[str]) -> list[NotPlayed]:
    """For each defense, the board's attacks that do not apply to it, grouped by reason
    (plugins no longer installed are left out)."""
    rows = []
    for defense_name in sorted(defense_names):
        try:
            defense = defenses.get(defense_name)()
        except ArenaError:
            continue
        reasons: dict[str, list[str]] = defaultdict(list)
        for attack_name in sorted(attack_names):
            try:
                reason = attacks.get(attack_name)().applies_to(defense)
            except ArenaError:
                continue
            if reason is not None:
                reasons[reason].append(attack_name)
        rows += [NotPlayed(defense_name, names, reason) for reason, names in reasons.items()]
    return rows


def labelled(registry: Registry, name: str, params: dict[str, Any]) -> str:
    """``name``, with the parameters a match set away from the plugin's defaults.

    A variant (``deepsigns [strength=0.1]``) is its own row; parameters the plugin no
    longer declares, or set to their default, do not make one.
    """
    try:
        defaults = registry.get(name)().params_dict()
    except ArenaError:  # a plugin no longer installed: every set parameter shows
        defaults = {}
    changed = [
        f"{field}={value}"
        for field, value in sorted(params.items())
        if value is not None and field in (defaults or params) and value != defaults.get(field)
    ]
    return f"{name} [{', '.join(changed)}]" if changed else name


def package(registry: Registry, name: str, source: str | None) -> str | None:
    """The distribution (without version) a record's plugin came from.

    A record from before packages were recorded is taken to measure the plugin that
    provides ``name`` now (two packages providing one name are refused); None when no
    installed package provides it.
    """
    if source is None:
        try:
            source = registry.info(name).source
        except ArenaError:
            return None
    return source.split(" ")[0]


def _cell(record: MatchRecord) -> Cell:
    return (
        labelled(defenses, record.defense, dict(record.defense_params)),
        package(defenses, record.defense, record.versions.defense_package),
        labelled(attacks, record.attack, dict(record.attack_params)),
        package(attacks, record.attack, record.versions.attack_package),
        record.model,
    )


def _match_row(cell: Cell, records: list[MatchRecord]) -> MatchRow:
    defense, defense_package, attack, attack_package, model = cell
    records = sorted(records, key=lambda r: r.seed)
    first = records[0]
    owner_heads = [r.attacked.owner_head_evidence for r in records]
    applicable = first.attacked.evidence.applicable
    task_accs = [r.attack_info.get("task_test_acc") for r in records]
    succeeded = sum(r.attack_succeeded for r in records)
    return MatchRow(
        defense=defense,
        attack=attack,
        model=model,
        threat=first.threat,
        seeds=[r.seed for r in records],
        access=first.defense_access,
        clean_acc=mean(r.clean.test_acc for r in records),
        marked_acc=mean(r.marked.test_acc for r in records),
        attacked_acc=mean(r.attacked.test_acc for r in records),
        marked_agreement=mean(r.marked.evidence.agreement for r in records),
        marked_verified=sum(r.marked.evidence.verified for r in records),
        marked_evidence=first.marked.evidence,
        clean_evidence=first.clean.evidence,
        null=NullUsed.of(first),
        attacked_evidence=first.attacked.evidence,
        attacked_agreement=mean(r.attacked.evidence.agreement for r in records),
        attacked_p_value=max(r.attacked.evidence.p_value for r in records),
        attacked_verified=sum(r.attacked.evidence.verified for r in records),
        owner_head=owner_heads[0],
        owner_head_verified=sum(bool(head and head.verified) for head in owner_heads),
        attack_succeeded=succeeded,
        attack_seconds=mean(r.attack_seconds for r in records),
        outcome=first.outcome,
        threat_model=first.threat_model,
        evidence_applicable=applicable,
        task=None if applicable else first.attack_info.get("task"),
        task_acc=None if applicable or None in task_accs else mean(task_accs),
        summary=str(first.attack_info.get("summary", "")),
        detector=first.attacked.detector,
        claim=first.claim,
        unsound_null=next((kind for r in records if (kind := r.unsound_null)), None),
        defense_package=defense_package,
        attack_package=attack_package,
        clean_acc_ci95=mean_interval([r.clean.test_acc for r in records]),
        marked_acc_ci95=mean_interval([r.marked.test_acc for r in records]),
        attacked_acc_ci95=mean_interval([r.attacked.test_acc for r in records]),
        attacked_per_seed=[
            (r.seed, r.attacked.evidence.successes, r.attacked.evidence.trials) for r in records
        ],
        succeeded_ci95=clopper_pearson(succeeded, len(records)),
        flips=0 < succeeded < len(records),
        per_seed=[SeedResult.of(r) for r in records],
        defense_plugin=first.defense,
        attack_plugin=first.attack,
        defense_params=dict(first.defense_params),
        attack_params=dict(first.attack_params),
    )


def mean_interval(values: list[float], confidence: float = 0.95) -> Interval | None:
    """The t-interval of the mean of ``values`` (seeds: independent runs); None for one."""
    from scipy import special

    if len(values) < 2:
        return None
    center = mean(values)
    half = special.stdtrit(len(values) - 1, (1 + confidence) / 2) * stdev(values)
    half /= math.sqrt(len(values))
    return (center - half, center + half)


def _false_claims(
    store: ResultStore, protocol: Protocol, matches: list[MatchRow]
) -> dict[str, FalseClaims]:
    """Per defense row (a scheme with its parameters), the false-claim rate the newest
    calibration of those parameters measured on foreign models."""
    calibrations = CalibrationStore(store.path)
    rates = {}
    for row in matches:
        if row.defense in rates:
            continue
        try:
            record = calibrations.latest(protocol, row.defense_plugin, row.defense_params)
        except ArenaError:  # a plugin no longer installed, or parameters it no longer takes
            continue
        if record is None or record.get("format") != RECORD_FORMAT:
            continue
        claims = record.get("false_claims", {})
        # White-box keys fit no foreign architecture: their rate is the reference models'.
        role = "foreign" if "foreign" in claims else "reference"
        rate = claims.get(role)
        if rate:
            low, high = rate["ci95"]
            rates[row.defense] = FalseClaims(rate["claimed"], rate["pairs"], (low, high), role)
    return rates


def _rank(matches: list[MatchRow], false_claims: dict[str, FalseClaims]) -> list[DefenseRow]:
    by_defense: dict[tuple[str, str | None], list[MatchRow]] = defaultdict(list)
    for row in matches:
        by_defense[(row.defense, row.defense_package)].append(row)
    rows = []
    for (defense, defense_package), cells in by_defense.items():
        attacked = [c for c in cells if c.threat != "none"]
        # A mark survives an attack when it was verified to begin with and no seed lost it;
        # against a null that is not sound nothing was decided, so nothing is counted.
        survived = worst = None
        if not any(c.unsound_null for c in cells):
            survived = sum(
                1 for c in attacked if c.marked_verified == len(c.seeds) and c.attack_succeeded == 0
            )
            worst = _worst_case(attacked)
        rows.append(
            dict(
                defense=defense,
                access=cells[0].access,
                clean_acc=mean(c.clean_acc for c in cells),
                marked_acc=mean(c.marked_acc for c in cells),
                preservation=mean(c.marked_acc - c.clean_acc for c in cells),
                marked_agreement=mean(c.marked_agreement for c in cells),
                marked_evidence=cells[0].marked_evidence,
                clean_evidence=cells[0].clean_evidence,
                evidence_null=cells[0].null,
                null=next((c.null for c in cells if c.unsound_null), cells[0].null),
                attacks=len(attacked),
                survived=survived,
                false_claims=false_claims.get(defense),
                defense_package=defense_package,
                seeds=min(len(c.seeds) for c in cells),
                worst=worst,
            )
        )
    # The worst case first (the smallest share of seeds lost to the strongest attack);
    # then attacks survived, counted not as a share. A variant run against fewer attacks
    # is ranked on the attacks it met. After the ranked schemes come those no attack was
    # run against, then those without a sound null: they decided nothing.
    rows.sort(
        key=lambda r: (
            r["survived"] is None,
            r["worst"] is None,
            r["worst"].rate if r["worst"] else 0.0,
            -(r["survived"] or 0),
            -((r["survived"] or 0) / r["attacks"] if r["attacks"] else 0),
            -r["marked_agreement"],
            -r["preservation"],
            r["defense"],
            r["defense_package"] or "",
        )
    )
    ranks = _shared_ranks([row["worst"] if row["survived"] is not None else None for row in rows])
    return [
        DefenseRow(rank=rank, tied=tied, **row)
        for row, (rank, tied) in zip(rows, ranks, strict=True)
    ]


def seeds_lost(cell: MatchRow) -> int:
    """The seeds a cell's mark was lost on: those whose mark was not verified before the
    attack, and those the attack won (it can only win where the mark was verified):
    disjoint."""
    return len(cell.seeds) - cell.marked_verified + cell.attack_succeeded


def deciding_evidence(cell: MatchRow) -> tuple[str, list[EvidenceRecord]]:
    """The evidence each seed's verdict rests on, and what it is: the attacked model's
    (``attacked``), the owner-head evidence of a task-changing attack (``owner head``),
    or, for forgery and piracy, the attacker's own claim on the attacked model
    (``attacker claim``; a seed whose attacker could make no claim has none)."""
    if cell.threat in ("forgery", "piracy"):
        claims = [s.attacker_claim for s in cell.per_seed if s.attacker_claim is not None]
        return "attacker claim", claims
    if not cell.evidence_applicable:
        heads = [s.owner_head for s in cell.per_seed if s.owner_head is not None]
        return "owner head", heads
    return "attacked", [s.attacked_evidence for s in cell.per_seed]


def _worst_case(cells: list[MatchRow]) -> WorstCase | None:
    """The attack whose cell lost the mark on the largest share of seeds (``WorstCase``)."""
    cases = []
    for cell in cells:
        seeds, lost = len(cell.seeds), seeds_lost(cell)
        cases.append(WorstCase(cell.attack, lost, seeds, clopper_pearson(lost, seeds)))
    if not cases:
        return None
    return min(cases, key=lambda case: (-case.rate, -case.ci95[1], case.attack))


def _shared_ranks(worst: list[WorstCase | None]) -> list[tuple[int, bool]]:
    """Ranks in the sorted order, shared along runs of overlapping worst-case intervals.

    A defense ties with the one ranked just above it when their worst cases' intervals
    overlap (or neither has one); a tie joins the whole run, so each rank is the first
    place of its run.
    """
    ranks: list[tuple[int, bool]] = []
    for index, case in enumerate(worst):
        if index and _same_place(case, worst[index - 1]):
            rank = ranks[-1][0]
            ranks[-1] = (rank, True)
            ranks.append((rank, True))
        else:
            ranks.append((index + 1, False))
    return ranks


def _same_place(case: WorstCase | None, above: WorstCase | None) -> bool:
    if case is None or above is None:
        return case is None and above is None
    return _overlap(case.ci95, above.ci95)


def _overlap(first: Interval, second: Interval) -> bool:
    return first[0] <= second[1] and second[0] <= first[1]


def protocols_in(store: ResultStore) -> list[Protocol]:
    names = {record["protocol"] for record in store.records()}
    return [PROTOCOLS[name] for name in sorted(names) if name in PROTOCOLS]
