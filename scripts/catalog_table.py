"""Print the README's result tables from the results database, over every stored seed.

    python scripts/catalog_table.py [--protocol mnist5k] [--db PATH] [--threat removal]
    python scripts/catalog_table.py --stability

The table: one row per attack of a threat, one column per defense. A cell is the seeds
the attack won out of the seeds played, then the evidence left on those seeds (the
smallest and largest count; for a task-changing attack the owner-head evidence, which
decides there; for forgery and piracy the attacker's own claim on the attacked model);
**bold** where the attack won every seed, a dagger where the seeds disagree, "no
verdict" for a scheme whose null is not sound. ``--stability`` lists every cell whose
seeds disagree and counts the cells that agree. Cells come from the newest stored match
of each (defense, attack, seed), as the leaderboard aggregates them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arena.core.protocols import get_protocol
from arena.eval.leaderboard import Leaderboard, MatchRow, build, deciding_evidence
from arena.storage.results import ResultStore

DEFENSES = (
    "backdoor-wm",
    "backdoor-wm-pretrained",
    "unrelated",
    "frontier-stitching",
    "uchida",
    "deepsigns",
    "content",
    "noise",
    "none",
)


def evidence_range(match: MatchRow) -> str:
    """``7-14/100``: the smallest and largest evidence left over the seeds."""
    kind, found = deciding_evidence(match)
    if not found:
        return "no claim" if kind == "attacker claim" else "n/a"
    prefix = {"attacker claim": "claim ", "owner head": "head "}.get(kind, "")
    counts = sorted(e.successes for e in found)
    span = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    return f"{prefix}{span}/{found[0].trials}"


def cell(match: MatchRow) -> str:
    evidence = evidence_range(match)
    if match.unsound_null:
        return f"no verdict ({evidence})"
    won, seeds = match.attack_succeeded, len(match.seeds)
    verdict = f"{won}/{seeds}"
    if won == seeds:
        verdict = f"**{verdict}**"
    elif match.flips:
        verdict += " †"
    return f"{verdict} ({evidence})"


def table(board: Leaderboard, threat: str) -> list[str]:
    cells = {(m.defense, m.attack): m for m in board.matches if m.threat == threat}
    attacks = sorted({attack for _, attack in cells})
    shown = [d for d in DEFENSES if any((d, a) in cells for a in attacks)]
    shown += sorted({d for d, _ in cells} - set(shown))
    lines = ["| attack | " + " | ".join(f"`{d}`" for d in shown) + " |"]
    lines.append("|---|" + "---|" * len(shown))
    for attack in attacks:
        row = [f"`{attack}`"] + [
            cell(cells[(d, attack)]) if (d, attack) in cells else "not run" for d in shown
        ]
        lines.append("| " + " | ".join(row) + " |")
    seeds = sorted({len(m.seeds) for m in cells.values()})
    lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}."]
    return lines


def stability(board: Leaderboard) -> list[str]:
    # The "none" defense (no mark: a control) and the sanity column decide nothing.
    decided = [
        m
        for m in board.matches
        if not m.unsound_null and m.threat != "none" and m.defense != "none"
    ]
    flips = [m for m in decided if m.flips]
    always = [m for m in decided if m.attack_succeeded == len(m.seeds)]
    lines = [
        f"{len(decided)} cells with a verdict: {len(decided) - len(flips)} agree on every "
        f"seed ({len(always)} won by the attack on every seed, "
        f"{len(decided) - len(flips) - len(always)} never), {len(flips)} disagree:",
        "",
    ]
    for m in sorted(flips, key=lambda m: (m.defense, m.threat, m.attack)):
        won = [s.seed for s in m.per_seed if s.attack_succeeded]
        lines.append(
            f"- `{m.defense}` x `{m.attack}` ({m.threat}): won {m.attack_succeeded} of "
            f"{len(m.seeds)} seeds (seeds {', '.join(map(str, won))}), evidence left "
            f"{evidence_range(m)}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mnist5k")
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--threat", default="removal", help="removal, forgery, piracy, evasion")
    parser.add_argument("--stability", action="store_true", help="list the cells that flip")
    args = parser.parse_args()
    board = build(ResultStore(args.db), get_protocol(args.protocol))
    print("\n".join(stability(board) if args.stability else table(board, args.threat)))


if __name__ == "__main__":
    main()
