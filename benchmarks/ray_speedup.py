"""One sweep three ways in one run: the local executor, then Ray with 1 and with 2 workers,
each from an empty ``ARENA_HOME``, every match at one thread; the speed-up of Ray over the
local executor and the fixed cost of starting Ray's local cluster.

The local executor plays the matches one after another in this process; Ray plays them as
tasks on a local cluster started for the sweep (``arena.eval.sweep.RaySweep``), each
worker one thread, the driver storing every record. The three runs must store the same
records (checked, timings aside).

    python benchmarks/ray_speedup.py                      # smoke, 4 defenses x 6 attacks x 2 seeds
    python benchmarks/ray_speedup.py --protocol mnist5k --defense backdoor-wm --attack ftll
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from arena.core.environment import apply_deterministic_defaults
from arena.core.protocols import PROTOCOLS
from arena.eval.sweep import RaySweep, plan, sweep
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from sweep_cost import ATTACKS, DEFENSES  # noqa: E402 (the cost model's benchmark matrix)

TIMINGS = ("seconds", "attack_seconds", "replay_seconds")


def run(
    protocol: str, defenses: list[str], attacks: list[str], seeds: list[int], root: Path
) -> list[dict[str, Any]]:
    apply_deterministic_defaults(1)  # the local side as each Ray worker runs: one thread
    specs = plan(protocol, defenses, attacks, seeds)
    rows, records = [], []
    for name, executor in (
        ("local", None),
        ("ray, 1 worker", RaySweep(workers=1, threads=1)),
        ("ray, 2 workers", RaySweep(workers=2, threads=1)),
    ):
        home = root / name.replace(", ", "-").replace(" ", "-")
        store = ResultStore(home / "results.sqlite")
        start = time.perf_counter()
        report = sweep(specs, store=store, cache=ArtifactCache(home / "cache"), executor=executor)
        wall = time.perf_counter() - start
        if report.failed:
            raise SystemExit(f"{name}: {len(report.failed)} matches failed: {report.failed[0]}")
        records.append(
            {
                (r["defense"], r["attack"], r["seed"]): {
                    k: v for k, v in r.items() if k not in TIMINGS
                }
                for r in store.records()
            }
        )
        rows.append(
            {
                "executor": name,
                "matches": report.run,
                "wall_s": wall,
                "ray_start_s": executor.start_seconds if executor else None,
            }
        )
    if any(other != records[0] for other in records[1:]):
        raise SystemExit("the executors stored different records")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="smoke", choices=sorted(PROTOCOLS))
    parser.add_argument("--defense", action="append", help=f"repeatable [default: {DEFENSES}]")
    parser.add_argument("--attack", action="append", help=f"repeatable [default: {ATTACKS}]")
    parser.add_argument("--seed", type=int, action="append", help="repeatable [default: 0, 1]")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    defenses, attacks = args.defense or DEFENSES, args.attack or ATTACKS
    seeds = args.seed or [0, 1]
    with tempfile.TemporaryDirectory() as root:
        rows = run(args.protocol, defenses, attacks, seeds, Path(root))
    local = rows[0]["wall_s"]
    print(
        f"{args.protocol}: {len(defenses)} defenses x {len(attacks)} attacks x {len(seeds)} "
        "seeds, one thread per match, the same records from every executor"
    )
    print("| executor | matches | wall (s) | speed-up over local | of which Ray's start (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        start = f"{row['ray_start_s']:.1f}" if row["ray_start_s"] is not None else ""
        print(
            f"| {row['executor']} | {row['matches']} | {row['wall_s']:.1f} | "
            f"{local / row['wall_s']:.2f} | {start} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
