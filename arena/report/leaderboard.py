"""The leaderboard as text: Markdown tables, terminal tables and the files written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.table import Table
from rich.text import Text

from arena.eval.leaderboard import (
    THREAT_SECTIONS,
    DefenseRow,
    FalseClaims,
    Leaderboard,
    MatchRow,
    NullUsed,
)
from arena.report.text import evidence_text, k_of_n, pct, plugin_label
from arena.util.errors import ArenaError
from arena.util.jsonio import write_json_atomic


def defense_cells(row: DefenseRow) -> list[str]:
    unsound = row.evidence_null.unsound
    return [
        str(row.rank),
        plugin_label(row.defense, row.defense_package),
        row.access,
        pct(row.clean_acc),
        pct(row.marked_acc),
        f"{100 * row.preservation:+.2f}",
        evidence_text(row.marked_evidence, unsound),
        evidence_text(row.clean_evidence, unsound),
        null_text(row.null),
        false_claims_text(row.false_claims),
        k_of_n(row.survived, row.attacks) if row.survived is not None else "no verdict",
    ]


def null_text(null: NullUsed) -> str:
    """The null a match was decided against: exact, fitted (beta-binomial) or uncalibrated."""
    p, kind = null.p, null.kind
    if kind == "beta-binomial":
        return f"{p:.3g}, dispersion {null.dispersion:.2g} (beta-binomial)"
    if kind in ("exact", "uncalibrated"):
        return f"{p:.3g} ({kind})"
    if kind == "refuted":
        return (
            f"{p:.3g}, dispersion {null.dispersion:.2g} (beta-binomial, "
            "REFUTED by false claims: no verdicts)"
        )
    # Records from before the per-scheme null (a pooled calibration or the nominal p).
    if kind == "pooled":
        return f"{p:.3g} (pooled, superseded)"
    return f"{p:.3g} (nominal)"


def false_claims_text(rate: FalseClaims | None) -> str:
    if rate is None:
        return "not measured"
    low, high = rate.ci95
    return f"{k_of_n(rate.claimed, rate.pairs)} (95% CI {100 * low:.2f}-{100 * high:.2f}%)" + (
        "" if rate.models == "foreign" else f", {rate.models} models"
    )


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


def _rate(what: str, count: int, total: int, ci95: tuple[float, float] | None) -> str:
    """``3/20 verified (CI95 5-36%)``: a count of models with its Clopper-Pearson interval."""
    text = f"{k_of_n(count, total)} {what}"
    if ci95:
        text += f" (CI95 {100 * ci95[0]:.0f}-{100 * ci95[1]:.0f}%)"
    return text


def claim_cells(row: MatchRow) -> list[str]:
    """A forgery or piracy cell: both parties' claims and the dispute's verdict."""

    def judged(party: str) -> str:
        claim = row.claim.claim(party, "attacked") if row.claim else None
        if claim is None:
            return "n/a"
        verdict = "passes" if claim.verified else "fails"
        return f"{k_of_n(claim.evidence.successes, claim.evidence.trials)}, {verdict}"

    clean = row.claim.clean_models if row.claim else None
    on_clean = "n/a"
    if clean:
        on_clean = _rate(
            "verified",
            clean.verified_without_label_check,
            clean.models,
            clean.verified_without_label_check_ci95,
        )
        if clean.label_check_applies:
            on_clean += ", " + _rate(
                "with label check",
                clean.claimed_with_label_check,
                clean.models,
                clean.claimed_with_label_check_ci95,
            )
    total = len(row.seeds)
    return [
        *_names(row),
        str(total),
        pct(row.marked_acc),
        pct(row.attacked_acc),
        judged("owner"),
        judged("attacker"),
        on_clean,
        _verdict(row, k_of_n(row.attack_succeeded, total)),
        f"{row.attack_seconds:.1f}",
        notes(row),
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
            *_names(row),
            str(total),
            pct(row.marked_acc),
            f"{task}: {pct(row.task_acc)}" if row.task_acc is not None else f"{task}: n/a",
            "n/a (another task)",
            "n/a",
            "n/a",
            f"{owner_head_text(row)}, decides",
            k_of_n(row.attack_succeeded, total),
            f"{row.attack_seconds:.1f}",
            notes(row),
            row.outcome,
        ]
    evidence = row.attacked_evidence
    return [
        *_names(row),
        str(total),
        pct(row.marked_acc),
        pct(row.attacked_acc),
        k_of_n(evidence.successes, evidence.trials),
        f"{row.attacked_p_value:.1e}",
        _verdict(row, k_of_n(row.attacked_verified, total)),
        owner_head_text(row),
        _verdict(row, k_of_n(row.attack_succeeded, total)),
        f"{row.attack_seconds:.1f}",
        notes(row),
        row.outcome,
    ]


def _names(row: MatchRow) -> list[str]:
    return [
        plugin_label(row.defense, row.defense_package),
        plugin_label(row.attack, row.attack_package),
    ]


def owner_head_text(row: MatchRow) -> str:
    """``85/100 (1/1 verified)``: the first seed's owner-head evidence, seeds verified."""
    head = row.owner_head
    if head is None:
        return "n/a"
    verified = k_of_n(row.owner_head_verified, len(row.seeds))
    return f"{k_of_n(head.successes, head.trials)} ({verified} verified)"


def notes(row: MatchRow) -> str:
    """The attack's own summary line, and a query filter's rates when it served one."""
    parts = [row.summary]
    detector = row.detector
    if detector:
        parts.append(
            f"filter flagged {100 * detector.test_flagged_rate:.1f}% of test queries, "
            f"{100 * detector.verification_flagged_rate:.1f}% of verification queries"
        )
    return "; ".join(part for part in parts if part)


def _verdict(row: MatchRow, counted: str) -> str:
    """A count of verdicts, or why there are none."""
    return f"no verdict (null {row.unsound_null})" if row.unsound_null else counted


# Per-plugin versions, not the environment the matches ran in: left out of the line.
PLUGIN_VERSION_KEYS = ("arena", "defense", "attack", "defense_package", "attack_package")


def _versions_line(board: Leaderboard) -> str:
    """The package versions and settings the shown matches ran with (all of them)."""
    seen = sorted({json.dumps(v.to_dict(), sort_keys=True) for v in board.versions})
    if not seen:
        return "Versions: not recorded."
    described: list[str] = []
    for text in seen:
        v = json.loads(text)
        line = ", ".join(f"{k} {v[k]}" for k in sorted(v) if k not in PLUGIN_VERSION_KEYS)
        if line not in described:  # records that differ only in plugin versions
            described.append(line)
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
    """The defenses' ranking, then one table per threat section.

    Cells are plain text, never console markup: ``ftal [lr=0.05]`` read as markup would
    lose its ``[lr=0.05]`` and look like ``ftal``. A cell too long for its column folds
    onto more lines instead of being cut short with an ellipsis.
    """
    rows = [defense_cells(row) for row in board.defenses]
    tables = [_rich_table(f"{board.protocol.label}: defenses", DEFENSE_HEADER, rows)]
    for threat in _sections(board):
        header, cells = section_table(threat)
        rows = [cells(row) for row in board.matches if row.threat == threat]
        tables.append(_rich_table(f"{board.protocol.label}: {threat}", header, rows))
    return tables


def _rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=Text(title), title_justify="left")
    for column in header:
        table.add_column(Text(column), overflow="fold")
    for cells in rows:
        table.add_row(*(Text(cell) for cell in cells))
    return table


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
