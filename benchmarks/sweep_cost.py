"""The sweep cost model (``arena/eval/cost.py``) against measured sweeps of two sizes.

A pilot sweep measures the unit costs: every chosen defense against the ``none`` attack
and the first defense against every chosen attack, seed 0 (each clean and marked model and
each attack once). Then two sweeps of the whole defense x attack matrix, of two sizes
(one seed, then two more), are each estimated from the matches stored so far and run;
the table compares estimate and wall time. Everything runs in a fresh temporary
``ARENA_HOME``, from an empty cache.

    python benchmarks/sweep_cost.py --protocol smoke
    python benchmarks/sweep_cost.py --protocol mnist5k --defense backdoor-wm --defense uchida \\
        --attack ftll --attack rtal
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from arena.core.protocols import PROTOCOLS
from arena.eval.sweep import estimate_sweep, plan, sweep
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore

DEFENSES = ["backdoor-wm", "content", "uchida", "frontier-stitching"]
ATTACKS = ["none", "ftll", "ftal", "rtal", "fine-prune", "distill"]


def run(protocol: str, defenses: list[str], attacks: list[str], home: Path) -> list[dict]:
    store, cache = ResultStore(home / "results.sqlite"), ArtifactCache(home / "cache")
    pilot = plan(protocol, defenses, ["none"], [0])
    pilot += [spec for spec in plan(protocol, defenses[:1], attacks, [0]) if spec not in pilot]
    sizes = {"pilot": pilot}
    sizes["matrix, seed 1"] = plan(protocol, defenses, attacks, [1])
    sizes["matrix, seeds 2-3"] = plan(protocol, defenses, attacks, [2, 3])
    rows = []
    for name, specs in sizes.items():
        costs, predicted = estimate_sweep(specs, store)
        start = time.perf_counter()
        report = sweep(specs, store=store, cache=cache)
        seconds = time.perf_counter() - start
        if report.failed:
            raise SystemExit(f"{name}: {len(report.failed)} matches failed: {report.failed[0]}")
        rows.append(
            {
                "sweep": name,
                "matches": len(specs),
                "trained": dict(report.trained),
                "estimate": None if name == "pilot" else predicted.seconds,
                "unknown": predicted.unknown if name != "pilot" else [],
                "measured": seconds,
                "costs": costs.describe(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="smoke", choices=sorted(PROTOCOLS))
    parser.add_argument("--defense", action="append", help=f"repeatable [default: {DEFENSES}]")
    parser.add_argument("--attack", action="append", help=f"repeatable [default: {ATTACKS}]")
    args = parser.parse_args()
    defenses, attacks = args.defense or DEFENSES, args.attack or ATTACKS
    with tempfile.TemporaryDirectory(prefix="arena-sweep-cost-") as home:
        rows = run(args.protocol, defenses, attacks, Path(home))
    print(f"{args.protocol}: {len(defenses)} defenses x {len(attacks)} attacks")
    print(
        "| sweep | matches | models trained | estimate (s) | measured (s) | measured / estimate |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        trained = ", ".join(f"{n} {phase}" for phase, n in sorted(row["trained"].items()))
        estimate = row["estimate"]
        ratio = "" if not estimate else f"{row['measured'] / estimate:.2f}"
        shown = "" if estimate is None else f"{estimate:.1f}"
        print(
            f"| {row['sweep']} | {row['matches']} | {trained} | {shown} | "
            f"{row['measured']:.1f} | {ratio} |"
        )
        if row["unknown"]:
            print(f"  not estimated: {', '.join(row['unknown'])}")


if __name__ == "__main__":
    main()
