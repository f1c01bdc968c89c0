"""The leaderboard as text: Markdown tables, terminal tables and the files written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.table import Table
from rich.text import Text

from arena.eval.leaderboard import (
    SECTIONS,
    DefenseRow,
    FalseClaims,
    Leaderboard,
    MatchRow,
    NullUsed,
    RemovalCost,
)
from arena.report.text import evidence_text, k_of_n, pct, plugin_label
from arena.util.errors import ArenaError
from arena.util.jsonio import write_json_atomic


def defense_cells(row: DefenseRow) -> list[str]:
    unsound = row.evidence_null.unsound
    return [
        f"{row.rank}=" if row.tied else str(row.rank),
        plugin_label(row.defense, row.defense_package),
        row.access,
        str(row.seeds),
        worst_text(row),
        pct(row.clean_acc),
        pct(row.marked_acc),
        f"{100 * row.preservation:+.2f}",
        evidence_text(row.marked_evidence, unsound),
        evidence_text(row.clean_evidence, unsound),
        null_text(row.null),
        false_claims_text(row.false_claims),
        k_of_n(row.survived, row.attacks) if row.survived is not None else "no verdict",
    ]


def worst_text(row: DefenseRow) -> str:
    """``rtal: 2/5 seeds lost (CI95 5-85%)``: the strongest attack, the seeds the mark did
    not survive it on."""
    worst = row.worst
    if worst is None:
        return "no verdict" if row.survived is None else "none run"
    return f"{worst.attack}: {_seeds_rate(worst.lost, worst.seeds, worst.ci95, 'lost')}"


def _seeds_rate(count: int, seeds: int, ci95: tuple[float, float] | None, what: str = "") -> str:
    text = f"{k_of_n(count, seeds)} seeds" + (f" {what}" if what else "")
    if ci95 is not None:
        text += f" (CI95 {100 * ci95[0]:.0f}-{100 * ci95[1]:.0f}%)"
    return text


def mean_text(value: float | None, ci95: tuple[float, float] | None) -> str:
    """``98.54 ±0.21``: a mean over seeds and the half-width of its 95% t-interval."""
    if value is None:
        return "n/a"
    if ci95 is None:
        return pct(value)
    return f"{pct(value)} ±{100 * (ci95[1] - ci95[0]) / 2:.2f}"


def succeeded_text(row: MatchRow) -> str:
    """``2/5 seeds (CI95 5-85%), flips``: the seeds the attack won, and whether the
    seeds disagree."""
    text = _seeds_rate(row.attack_succeeded, len(row.seeds), row.succeeded_ci95)
    return text + (", flips" if row.flips else "")


def per_seed_text(row: MatchRow) -> str:
    """The evidence after the attack on every seed: ``s0 20/100, s1 34/100``."""
    return ", ".join(f"s{seed} {k_of_n(k, n)}" for seed, k, n in row.attacked_per_seed)


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
    "seeds",
    "strongest attack (seeds the mark lost)",
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
    "evidence after attack, per seed",
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
        mean_text(row.marked_acc, row.marked_acc_ci95),
        mean_text(row.attacked_acc, row.attacked_acc_ci95),
        judged("owner"),
        judged("attacker"),
        on_clean,
        _verdict(row, succeeded_text(row)),
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
            mean_text(row.marked_acc, row.marked_acc_ci95),
            f"{task}: {pct(row.task_acc)}" if row.task_acc is not None else f"{task}: n/a",
            "n/a (another task)",
            "n/a",
            "n/a",
            f"{owner_head_text(row)}, decides",
            succeeded_text(row),
            f"{row.attack_seconds:.1f}",
            notes(row),
            row.outcome,
        ]
    evidence = row.attacked_evidence
    return [
        *_names(row),
        str(total),
        mean_text(row.marked_acc, row.marked_acc_ci95),
        mean_text(row.attacked_acc, row.attacked_acc_ci95),
        per_seed_text(row) or k_of_n(evidence.successes, evidence.trials),
        f"{row.attacked_p_value:.1e}",
        _verdict(row, k_of_n(row.attacked_verified, total)),
        owner_head_text(row),
        _verdict(row, succeeded_text(row)),
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


def versions_line(board: Leaderboard) -> str:
    """The package versions and settings the shown matches ran with: what all share once,
    then each setting that differs with the matches and seeds of every value."""
    if not board.versions:
        return "Versions: not recorded."
    runs = [
        (seed, {k: v for k, v in versions.to_dict().items() if k not in PLUGIN_VERSION_KEYS})
        for seed, versions in board.versions
    ]
    names = sorted({name for _, settings in runs for name in settings})
    shared, differing = [], []
    for name in names:
        values: dict[str, list[int]] = {}
        for seed, settings in runs:
            values.setdefault(str(settings.get(name, "not recorded")), []).append(seed)
        if len(values) == 1:
            shared.append(f"{name} {next(iter(values))}")
            continue
        described = [
            f"{value} ({len(seeds):,} match{'' if len(seeds) == 1 else 'es'}, "
            f"{seed_list(sorted(set(seeds)))})"
            for value, seeds in sorted(values.items())
        ]
        differing.append(f"{name} " + " or ".join(described))
    line = "Versions of the matches shown: " + ", ".join(shared)
    if differing:
        line += "; differing between matches: " + "; ".join(differing)
    return line + "."


def seed_list(seeds: list[int]) -> str:
    """``seeds 0-3, 7``: sorted seeds with consecutive runs joined."""
    parts: list[str] = []
    start = previous = seeds[0]
    for seed in [*seeds[1:], None]:
        if seed is not None and seed == previous + 1:
            previous = seed
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if seed is not None:
            start = previous = seed
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(parts)


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
        f"Seeds: {seed_counts(board)}. Accuracies are means over a cell's seeds with the "
        "half-width of their 95% t-interval; an attack's success is the seeds it won, with "
        "their 95% Clopper-Pearson interval, and `flips` marks a cell whose seeds disagree "
        "on the verdict. The defenses are ranked by their worst case: the share of seeds "
        "whose mark the strongest attack against each removed, or that never verified "
        "(fewer is better). Defenses whose worst-case intervals overlap share a rank "
        "(`1=`): the seeds do not separate them. The order is by that share, then attacks "
        "survived on every seed, then marked agreement.",
        "",
        versions_line(board),
        "",
        "## Defenses",
        "",
        _md_table(DEFENSE_HEADER, [defense_cells(row) for row in board.defenses]),
    ]
    for section in _sections(board):
        rows = [m for m in board.matches if m.section == section]
        header, cells = section_table(rows[0].threat)
        title = section_title(section)
        lines += ["", f"## {title}", "", _md_table(header, [cells(m) for m in rows])]
    if board.removal_costs:
        lines += [
            "",
            "## Removal cost",
            "",
            "Attacks played over their declared budget grid (`arena sweep --budget-curve`): "
            "the cheapest budget that removed the mark on every seed played at it, and the "
            "test accuracy that cost (marked - attacked, points, mean ± half the 95% "
            "interval). A mark that only falls to budgets costing the model dearly is a "
            "strong mark.",
            "",
            _md_table(COST_HEADER, [cost_cells(row) for row in board.removal_costs]),
        ]
    if board.not_played:
        lines += [
            "",
            "## Not played",
            "",
            "Pairs a sweep skips because the attack does not apply to the scheme.",
            "",
            _md_table(
                ["defense", "attacks", "why"],
                [[r.defense, ", ".join(r.attacks), r.reason] for r in board.not_played],
            ),
        ]
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


def seed_counts(board: Leaderboard) -> str:
    """``5 per cell`` or ``1-5 per cell``: how many seeds the cells rest on."""
    counts = sorted({len(row.seeds) for row in board.matches})
    if not counts:
        return "none"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} per cell"


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
    for section in _sections(board):
        matches = [row for row in board.matches if row.section == section]
        header, cells = section_table(matches[0].threat)
        rows = [cells(row) for row in matches]
        tables.append(_rich_table(f"{board.protocol.label}: {section}", header, rows))
    if board.removal_costs:
        rows = [cost_cells(row) for row in board.removal_costs]
        tables.append(_rich_table(f"{board.protocol.label}: removal cost", COST_HEADER, rows))
    return tables


COST_HEADER = [
    "defense",
    "attack",
    "budget",
    "cheapest that removes the mark",
    "test accuracy it cost",
    "cheapest that wins (within delta)",
    "removed per budget (seeds)",
]


def cost_cells(row: RemovalCost) -> list[str]:
    """A removal-cost curve's row: the cheapest removing budget and the whole curve."""
    win = "none" if row.cheapest_win is None else f"{row.parameter}={row.cheapest_win}"
    if row.unsound_null:
        cheapest, cost, win = f"no verdict (null {row.unsound_null})", "", ""
    elif row.cheapest is None:
        cheapest, cost = "not removed within the grid", ""
    else:
        cheapest = f"{row.parameter}={row.cheapest}"
        cost = (
            "n/a (another task)"
            if row.cheapest_acc_cost is None
            else mean_text(row.cheapest_acc_cost, row.cheapest_acc_cost_ci95)
        )
    curve = ", ".join(
        f"{point.value}: {k_of_n(point.removed, len(point.seeds))}" for point in row.points
    )
    return [row.defense, row.attack, row.parameter, cheapest, cost, win, curve]


def _rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=Text(title), title_justify="left")
    for column in header:
        table.add_column(Text(column), overflow="fold")
    for cells in rows:
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _sections(board: Leaderboard) -> list[str]:
    """The sections present (threats, then their chains), in the fixed order, unknown
    ones last."""
    present = {m.section for m in board.matches}
    known = [section for section in SECTIONS if section in present]
    return known + sorted(present - set(SECTIONS))


def section_title(section: str) -> str:
    if section == "none":
        return "No attack (sanity column)"
    if section.endswith(" chains"):
        threat = section.removesuffix(" chains")
        return f"{threat.capitalize()} chains (combined attacks, run in order)"
    return f"{section.capitalize()} attacks"


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
