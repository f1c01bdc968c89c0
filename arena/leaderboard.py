"""Aggregate stored matches per protocol, rank the defenses, render the tables.

A defense is ranked by how many attacks its mark survived (still verified, or the attack
cost more accuracy than delta), then by the share survived, the marked agreement and
functionality preservation; a scheme whose null is not sound (uncalibrated, or refuted
by its calibration's false claims) decides nothing and ranks last. Matches over several
seeds are aggregated: mean accuracies, and counts of seeds verified / succeeded. A later
run of the same match and seed supersedes the earlier; a run with parameters set away
from a plugin's defaults is its own variant row, e.g. ``ftal [lr=0.05]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from rich.table import Table

from arena.errors import ArenaError
from arena.keys import write_json_atomic
from arena.protocols import PROTOCOLS, Protocol
from arena.registry import Registry, attacks, defenses
from arena.store import ResultStore

THREAT_SECTIONS = ("none", "removal", "forgery", "piracy", "evasion")


@dataclass(frozen=True)
class MatchRow:
    """One (defense, attack, model) cell, aggregated over seeds."""

    defense: str
    attack: str
    model: str
    threat: str
    seeds: list[int]
    access: str
    clean_acc: float
    marked_acc: float
    attacked_acc: float
    marked_agreement: float
    marked_verified: int
    marked_evidence: str  # "k/n" of the first seed
    clean_evidence: str  # the same key on the clean model: "k/n" of the first seed
    null: str  # the null p tested against and its source, of the first seed
    attacked_successes: str  # "k/n" of the first seed
    attacked_agreement: float
    attacked_p_value: float  # the largest over seeds: the weakest evidence
    attacked_verified: int
    owner_head: str | None
    attack_succeeded: int
    attack_seconds: float
    outcome: str
    threat_model: dict[str, Any]
    # A task-changing attack (transfer learning): its black-box evidence is not evidence,
    # the owner-head evidence decides, and its accuracy is the new task's.
    evidence_applicable: bool = True
    task: str | None = None
    task_acc: float | None = None  # mean over seeds, on the new task's test split
    notes: str = ""  # the attack's own one-line summary, of the first seed
    claim: dict | None = None  # forgery and piracy: the judged claims, of the first seed
    # The kind of null a seed was decided against when it was not a sound one
    # (uncalibrated, refuted): its evidence is shown, its verdicts are not.
    unsound_null: str | None = None


@dataclass(frozen=True)
class DefenseRow:
    rank: int
    defense: str
    access: str
    clean_acc: float
    marked_acc: float
    preservation: float
    marked_agreement: float
    marked_evidence: str
    clean_evidence: str
    null: str
    attacks: int
    survived: int | None  # None: no verdict, the scheme's null is not sound
    # Fresh keys of the scheme on clean models of architectures its calibration never saw
    # (the newest calibration): claimed / pairs with the 95% Clopper-Pearson interval.
    false_claims: str = "not measured"


@dataclass(frozen=True)
class Leaderboard:
    protocol: Protocol
    defenses: list[DefenseRow]
    matches: list[MatchRow]
    older_versions: int  # records of earlier protocol versions left out
    superseded: int = 0  # records replaced by a later run of the same cell and seed
    versions: list[dict[str, Any]] = field(default_factory=list)  # per record shown

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.name,
            "version": self.protocol.version,
            "fingerprint": self.protocol.fingerprint,
            "generated_by": f"arena leaderboard --protocol {self.protocol.name}",
            "defenses": [asdict(row) for row in self.defenses],
            "matches": [asdict(row) for row in self.matches],
        }


def build(store: ResultStore, protocol: Protocol) -> Leaderboard:
    records = store.records(protocol.name)  # oldest first
    current = [r for r in records if r["protocol_version"] == protocol.version]
    # One record per (variant, model, seed): a later run of the same cell (a newer plugin
    # version, a new calibration, a renamed parameter) supersedes the earlier one.
    latest: dict[tuple[str, str, str, int], dict] = {}
    for record in current:
        defense = labelled(defenses, record["defense"], record["defense_params"])
        attack = labelled(attacks, record["attack"], record["attack_params"])
        latest[(defense, attack, record["model"], record["seed"])] = record
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for (defense, attack, model, _seed), record in latest.items():
        groups[(defense, attack, model)].append(record)
    matches = sorted(
        (_match_row(key, rows) for key, rows in groups.items()),
        key=lambda row: (
            THREAT_SECTIONS.index(row.threat)
            if row.threat in THREAT_SECTIONS
            else len(THREAT_SECTIONS),
            row.defense,
            row.attack,
            row.model,
        ),
    )
    return Leaderboard(
        protocol,
        _rank(matches, _false_claims(store, protocol)),
        matches,
        older_versions=len(records) - len(current),
        superseded=len(current) - len(latest),
        versions=[record.get("versions", {}) for record in latest.values()],
    )


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


def _match_row(key: tuple[str, str, str], records: list[dict]) -> MatchRow:
    defense, attack, model = key
    records = sorted(records, key=lambda r: r["seed"])
    first = records[0]
    owner_heads = [r["attacked"]["owner_head_evidence"] for r in records]
    owner_head = None
    if owner_heads[0] is not None:
        verified = sum(bool(h and h["verified"]) for h in owner_heads)
        first_head = owner_heads[0]
        owner_head = (
            f"{first_head['successes']}/{first_head['trials']} ({verified}/{len(records)} verified)"
        )
    applicable = first["attacked"]["evidence"].get("applicable", True)
    task_accs = [r.get("attack_info", {}).get("task_test_acc") for r in records]
    return MatchRow(
        defense=defense,
        attack=attack,
        model=model,
        threat=first.get("threat", "removal"),
        seeds=[r["seed"] for r in records],
        access=first.get("defense_access", "black-box"),
        clean_acc=mean(r["clean"]["test_acc"] for r in records),
        marked_acc=mean(r["marked"]["test_acc"] for r in records),
        attacked_acc=mean(r["attacked"]["test_acc"] for r in records),
        marked_agreement=mean(_agreement(r["marked"]["evidence"]) for r in records),
        marked_verified=sum(r["marked"]["evidence"]["verified"] for r in records),
        marked_evidence=_evidence_cell(first["marked"]["evidence"], _unsound(first)),
        clean_evidence=_evidence_cell(first["clean"]["evidence"], _unsound(first)),
        null=_null_cell(first),
        attacked_successes=f"{first['attacked']['evidence']['successes']}/{first['attacked']['evidence']['trials']}",
        attacked_agreement=mean(_agreement(r["attacked"]["evidence"]) for r in records),
        attacked_p_value=max(r["attacked"]["evidence"]["p_value"] for r in records),
        attacked_verified=sum(r["attacked"]["evidence"]["verified"] for r in records),
        owner_head=owner_head,
        attack_succeeded=sum(r["attack_succeeded"] for r in records),
        attack_seconds=mean(r.get("attack_seconds", r["seconds"]["attack"]) for r in records),
        outcome=first["outcome"],
        threat_model=first["threat_model"],
        evidence_applicable=applicable,
        task=None if applicable else first.get("attack_info", {}).get("task"),
        task_acc=None if applicable or None in task_accs else mean(task_accs),
        notes=_notes(first),
        claim=first.get("claim"),
        unsound_null=next((kind for r in records if (kind := _unsound(r))), None),
    )


def _unsound(record: dict) -> str | None:
    """The kind of the record's null when it decides no verdict, else None."""
    from arena.calibration import UNSOUND_NULLS

    kind = (record.get("null") or {}).get("kind")
    return kind if kind in UNSOUND_NULLS else None


def _notes(record: dict) -> str:
    """The attack's own summary line, and a query filter's rates when it served one."""
    notes = [str(record.get("attack_info", {}).get("summary", ""))]
    detector = record["attacked"].get("detector")
    if detector:
        notes.append(
            f"filter flagged {100 * detector['test_flagged_rate']:.1f}% of test queries, "
            f"{100 * detector['verification_flagged_rate']:.1f}% of verification queries"
        )
    return "; ".join(note for note in notes if note)


def _evidence_cell(evidence: dict, unsound_null: str | None = None) -> str:
    verdict = "verified" if evidence["verified"] else "not verified"
    if unsound_null:
        verdict = f"no verdict, null {unsound_null}"
    return f"{evidence['successes']}/{evidence['trials']} (p {evidence['p_value']:.1e}, {verdict})"


def _null_cell(record: dict) -> str:
    """The null a match was decided against: exact, fitted (beta-binomial) or uncalibrated."""
    evidence = record["attacked"]["evidence"]
    p = evidence["null_p"]
    null = record.get("null") or {}
    kind = null.get("kind")
    if kind == "beta-binomial":
        return f"{p:.3g}, dispersion {evidence.get('null_dispersion', 0.0):.2g} (beta-binomial)"
    if kind in ("exact", "uncalibrated"):
        return f"{p:.3g} ({kind})"
    if kind == "refuted":
        return (
            f"{p:.3g}, dispersion {evidence.get('null_dispersion', 0.0):.2g} (beta-binomial, "
            "REFUTED by false claims: no verdicts)"
        )
    # Records from before the per-scheme null (a pooled calibration or the nominal p).
    if null.get("p") is not None and null["p"] == p:
        return f"{p:.3g} (pooled, superseded)"
    return f"{p:.3g} (nominal)"


def _agreement(evidence: dict) -> float:
    return evidence["successes"] / evidence["trials"] if evidence["trials"] else 0.0


def _false_claims(store: ResultStore, protocol: Protocol) -> dict[str, str]:
    """Per scheme, the false-claim rate its newest calibration measured on foreign models."""
    from arena.calibration import RECORD_FORMAT, CalibrationStore

    calibrations = CalibrationStore(store.path)
    cells = {}
    for name in defenses.names():
        record = calibrations.latest(protocol, name)
        if record is None or record.get("format") != RECORD_FORMAT:
            continue
        claims = record.get("false_claims", {})
        # White-box keys fit no foreign architecture: their rate is the reference models'.
        role = "foreign" if "foreign" in claims else "reference"
        rate = claims.get(role)
        if rate:
            low, high = rate["ci95"]
            cells[name] = (
                f"{rate['claimed']}/{rate['pairs']} (95% CI {100 * low:.2f}-{100 * high:.2f}%)"
                + ("" if role == "foreign" else f", {role} models")
            )
    return cells


def _rank(matches: list[MatchRow], false_claims: dict[str, str]) -> list[DefenseRow]:
    by_defense: dict[str, list[MatchRow]] = defaultdict(list)
    for row in matches:
        by_defense[row.defense].append(row)
    rows = []
    for defense, cells in by_defense.items():
        attacked = [c for c in cells if c.threat != "none"]
        # A mark survives an attack when it was verified to begin with and no seed lost it;
        # against a null that is not sound nothing was decided, so nothing is counted.
        survived = None
        if not any(c.unsound_null for c in cells):
            survived = sum(
                1 for c in attacked if c.marked_verified == len(c.seeds) and c.attack_succeeded == 0
            )
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
                # The null that decided, or (when one did not) the one that could not.
                null=next((c.null for c in cells if c.unsound_null), cells[0].null),
                attacks=len(attacked),
                survived=survived,
                false_claims=false_claims.get(defense.split(" [")[0], "not measured"),
            )
        )
    # Attacks survived, counted not as a share: a variant run against fewer attacks
    # must not outrank a scheme that met them all.
    # Schemes without a sound null rank last: they decided nothing.
    rows.sort(
        key=lambda r: (
            r["survived"] is None,
            -(r["survived"] or 0),
            -((r["survived"] or 0) / r["attacks"] if r["attacks"] else 0),
            -r["marked_agreement"],
            -r["preservation"],
            r["defense"],
        )
    )
    return [DefenseRow(rank=index + 1, **row) for index, row in enumerate(rows)]


# --- rendering ------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _seeds(count: int, total: int) -> str:
    return f"{count}/{total}"


def defense_cells(row: DefenseRow) -> list[str]:
    return [
        str(row.rank),
        row.defense,
        row.access,
        _pct(row.clean_acc),
        _pct(row.marked_acc),
        f"{100 * row.preservation:+.2f}",
        row.marked_evidence,
        row.clean_evidence,
        row.null,
        row.false_claims,
        f"{row.survived}/{row.attacks}" if row.survived is not None else "no verdict",
    ]


DEFENSE_HEADER = [
    "rank",
    "defense",
    "access",
    "clean acc %",
    "marked acc %",
    "Δ acc (pts)",
    "marked evidence",
    "same key on clean",
    "null",
    "false claims (foreign clean models)",
    "attacks survived",
]

MATCH_HEADER = [
    "defense",
    "attack",
    "seeds",
    "marked acc %",
    "attacked acc %",
    "evidence after attack",
    "max p-value",
    "verified",
    "owner-head evidence",
    "attack succeeded",
    "attack s",
    "notes",
    "reason",
]

CLAIM_HEADER = [
    "defense",
    "attack",
    "seeds",
    "marked acc %",
    "attacked acc %",
    "owner's key on attacked model",
    "attacker's key on attacked model",
    "attacker's key on clean models",
    "attack succeeded",
    "attack s",
    "notes",
    "reason",
]


def _rate(what: str, count: int, total: int, ci95: list[float] | None) -> str:
    """``3/20 verified (CI95 5-36%)``: a count of models with its Clopper-Pearson interval."""
    text = f"{count}/{total} {what}"
    if ci95:
        text += f" (CI95 {100 * ci95[0]:.0f}-{100 * ci95[1]:.0f}%)"
    return text


def claim_cells(row: MatchRow) -> list[str]:
    """A forgery or piracy cell: both parties' claims and the dispute's verdict."""
    claims = {(c["party"], c["model"]): c for c in (row.claim or {}).get("claims", [])}

    def judged(party: str) -> str:
        claim = claims.get((party, "attacked"))
        if claim is None:
            return "n/a"
        evidence = claim["evidence"]
        verdict = "passes" if claim["verified"] else "fails"
        return f"{evidence['successes']}/{evidence['trials']}, {verdict}"

    clean = (row.claim or {}).get("clean_models")
    on_clean = "n/a"
    if clean:
        on_clean = _rate(
            "verified",
            clean["verified_without_label_check"],
            clean["models"],
            clean.get("verified_without_label_check_ci95"),
        )
        if clean.get("label_check_applies"):
            on_clean += ", " + _rate(
                "with label check",
                clean["claimed_with_label_check"],
                clean["models"],
                clean.get("claimed_with_label_check_ci95"),
            )
    total = len(row.seeds)
    return [
        row.defense,
        row.attack,
        str(total),
        _pct(row.marked_acc),
        _pct(row.attacked_acc),
        judged("owner"),
        judged("attacker"),
        on_clean,
        _verdict(row, _seeds(row.attack_succeeded, total)),
        f"{row.attack_seconds:.1f}",
        row.notes,
        row.outcome,
    ]


def section_table(threat: str) -> tuple[list[str], Callable[[MatchRow], list[str]]]:
    """The header and cell renderer of a threat's section."""
    if threat in ("forgery", "piracy"):
        return CLAIM_HEADER, claim_cells
    return MATCH_HEADER, match_cells


def match_cells(row: MatchRow) -> list[str]:
    total = len(row.seeds)
    if not row.evidence_applicable:
        # Transfer learning: the model answers another task, the owner's head decides.
        task = row.task or "another task"
        return [
            row.defense,
            row.attack,
            str(total),
            _pct(row.marked_acc),
            f"{task}: {_pct(row.task_acc)}" if row.task_acc is not None else f"{task}: n/a",
            "n/a (another task)",
            "n/a",
            "n/a",
            f"{row.owner_head or 'n/a'}, decides",
            _seeds(row.attack_succeeded, total),
            f"{row.attack_seconds:.1f}",
            row.notes,
            row.outcome,
        ]
    return [
        row.defense,
        row.attack,
        str(total),
        _pct(row.marked_acc),
        _pct(row.attacked_acc),
        row.attacked_successes,
        f"{row.attacked_p_value:.1e}",
        _verdict(row, _seeds(row.attacked_verified, total)),
        row.owner_head or "n/a",
        _verdict(row, _seeds(row.attack_succeeded, total)),
        f"{row.attack_seconds:.1f}",
        row.notes,
        row.outcome,
    ]


def _verdict(row: MatchRow, counted: str) -> str:
    """A count of verdicts, or why there are none."""
    return f"no verdict (null {row.unsound_null})" if row.unsound_null else counted


# Per-plugin versions, not the environment the matches ran in: left out of the line.
PLUGIN_VERSION_KEYS = ("arena", "defense", "attack", "defense_package", "attack_package")


def _versions_line(board: Leaderboard) -> str:
    """The package versions and settings the shown matches ran with (all of them)."""
    seen = sorted({json.dumps(v, sort_keys=True) for v in board.versions})
    if not seen:
        return "Versions: not recorded."
    described = []
    for text in seen:
        v = json.loads(text)
        described.append(
            ", ".join(f"{k} {v[k]}" for k in sorted(v) if k not in PLUGIN_VERSION_KEYS)
        )
    return "Versions of the matches shown: " + "; ".join(described) + "."


def to_markdown(board: Leaderboard) -> str:
    protocol = board.protocol
    lines = [
        f"# Leaderboard: {protocol.name} v{protocol.version}",
        "",
        f"{protocol.description}. Model `{protocol.model}`, {protocol.image_size}x"
        f"{protocol.image_size}x{protocol.channels}; owner / attacker / test split "
        f"{protocol.owner_size} / {protocol.attacker_size} / {protocol.test_size} "
        f"(seed {protocol.split_seed}); alpha = {protocol.alpha:g}, delta = "
        f"{100 * protocol.delta:g} points; protocol fingerprint `{protocol.fingerprint}`.",
        "",
        f"Generated by `arena leaderboard --protocol {protocol.name}` from the results "
        "database; every cell comes from `arena run`. An attack succeeds when the mark is "
        "not verified at alpha on the attacked model and its test accuracy is within delta "
        "of the marked model. The owner-head evidence (the seed paper's RTLL/RTAL "
        "verification with the owner's output layer put back) is shown beside the "
        "black-box evidence; the verdict is decided on the black-box evidence, except for "
        "task-changing attacks (transfer learning), whose model answers another task: "
        "there the owner-head evidence decides and the accuracy shown is the new task's, "
        "reported as information.",
        "",
        _versions_line(board),
        "",
        "## Defenses",
        "",
        _md_table(DEFENSE_HEADER, [defense_cells(row) for row in board.defenses]),
    ]
    for threat in _sections(board):
        rows = [m for m in board.matches if m.threat == threat]
        title = (
            "No attack (sanity column)" if threat == "none" else f"{threat.capitalize()} attacks"
        )
        header, cells = section_table(threat)
        lines += ["", f"## {title}", "", _md_table(header, [cells(m) for m in rows])]
    if board.older_versions:
        lines += [
            "",
            f"{board.older_versions} records of earlier versions of this protocol "
            "are in the database and left out.",
        ]
    if board.superseded:
        lines += [
            "",
            f"{board.superseded} records superseded by a later run of the same match "
            "(same variant and seed) are left out.",
        ]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(out)


def rich_tables(board: Leaderboard) -> list[Table]:
    """The defenses' ranking, then one table per threat section."""
    ranking = Table(title=f"{board.protocol.label}: defenses", title_justify="left")
    for column in DEFENSE_HEADER:
        ranking.add_column(column)
    for row in board.defenses:
        ranking.add_row(*defense_cells(row))
    tables = [ranking]
    for threat in _sections(board):
        header, cells = section_table(threat)
        table = Table(title=f"{board.protocol.label}: {threat}", title_justify="left")
        for column in header:
            table.add_column(column)
        for row in board.matches:
            if row.threat == threat:
                table.add_row(*cells(row))
        tables.append(table)
    return tables


def _sections(board: Leaderboard) -> list[str]:
    """The threats present, in the fixed order, unknown ones last."""
    present = {m.threat for m in board.matches}
    known = [threat for threat in THREAT_SECTIONS if threat in present]
    return known + sorted(present - set(THREAT_SECTIONS))


def write(board: Leaderboard, out_dir: Path) -> tuple[Path, Path]:
    """``<out>/<protocol>.md`` and ``<out>/<protocol>.json``, each written atomically."""
    if not board.matches:
        raise ArenaError(
            f"no results for protocol {board.protocol.name!r} v{board.protocol.version} in the "
            "database; run some matches first (arena run --protocol "
            f"{board.protocol.name} ...)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"{board.protocol.name}.md"
    temporary = out_dir / f".{markdown.name}.tmp"
    temporary.write_text(to_markdown(board))
    temporary.replace(markdown)
    data = out_dir / f"{board.protocol.name}.json"
    write_json_atomic(data, board.to_dict())
    return markdown, data


def protocols_in(store: ResultStore) -> list[Protocol]:
    names = {record["protocol"] for record in store.records()}
    return [PROTOCOLS[name] for name in sorted(names) if name in PROTOCOLS]
