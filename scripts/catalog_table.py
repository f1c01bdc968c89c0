"""Print the README's removal-catalog table from the results database.

    python scripts/catalog_table.py [--protocol mnist5k] [--db PATH]

One row per removal or input-transformation attack, one column per defense: the evidence
after the attack (for a task-changing attack, the owner-head evidence, which decides),
**bold** where the attack succeeded, "no verdict" for a scheme whose null is not sound.
Cells come from the newest stored match of each (defense, attack), seed by seed as the
leaderboard aggregates them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arena.core.protocols import get_protocol
from arena.eval.leaderboard import build
from arena.report.text import k_of_n
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
ATTACKS = (
    "prune",
    "fine-prune",
    "quantize",
    "weight-shift",
    "label-smooth",
    "overwrite",
    "neural-cleanse",
    "adv-train",
    "distill",
    "knockoff",
    "retrain",
    "transfer",
    "jpeg",
    "smooth",
    "squeeze",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mnist5k")
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    board = build(ResultStore(args.db), get_protocol(args.protocol))
    cells = {(row.defense, row.attack): row for row in board.matches}
    shown = [d for d in DEFENSES if any((d, a) in cells for a in ATTACKS)]
    print("| attack | " + " | ".join(f"`{d}`" for d in shown) + " |")
    print("|---|" + "---|" * len(shown))
    seeds = set()
    for attack in ATTACKS:
        row = [f"`{attack}`"]
        for defense in shown:
            match = cells.get((defense, attack))
            if match is None:
                row.append("not run")
                continue
            seeds.add(len(match.seeds))
            evidence = k_of_n(match.attacked_evidence.successes, match.attacked_evidence.trials)
            if not match.evidence_applicable:
                head = match.owner_head
                evidence = (
                    k_of_n(head.successes, head.trials) if head else "n/a"
                ) + " (owner head)"
            if match.unsound_null:
                evidence += " (no verdict)"
            elif match.attack_succeeded:
                evidence = f"**{evidence}**"
            row.append(evidence)
        print("| " + " | ".join(row) + " |")
    print()
    print(f"Seeds per cell: {', '.join(map(str, sorted(seeds)))}.")


if __name__ == "__main__":
    main()
