"""Print the README's calibration tables from the newest calibration of every scheme.

    python scripts/calibration_table.py [--protocol mnist5k] [--db PATH]

Reads the calibration records `arena calibrate` stored in the results database (default
$ARENA_HOME/results.sqlite): the clean models with their test accuracy, then per scheme
the null, its smallest p-value, and the false claims on foreign and reference models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.storage.calibrations import RECORD_FORMAT, CalibrationStore, refutation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mnist5k")
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    protocol = get_protocol(args.protocol)
    store = CalibrationStore(args.db)
    records = [store.latest(protocol, name) for name in defenses.names()]
    records = [r for r in records if r and r.get("format") == RECORD_FORMAT]
    if not records:
        raise SystemExit(f"no calibration of {protocol.label} in {store.path}")
    widest = max(records, key=lambda r: len(r.get("claims", [])))
    print("| clean model | role | seed | test acc |")
    print("|---|---|---|---|")
    for row in widest.get("claims", widest["models"]):
        print(
            f"| {row['architecture']} @ {row['recipe']} | {row['role']} | {row['seed']} | "
            f"{row['test_acc']:.3f} |"
        )
    print()
    print(
        "| scheme | null | smallest p-value | false claims, foreign models | "
        "false claims, reference models | most triggers a foreign model gave one key |"
    )
    print("|---|---|---|---|---|---|")
    for record in records:
        null = record["null"]
        if null["kind"] == "exact":
            described = f"exact, Binomial(n, {null['nominal']:g})"
        else:
            described = (
                f"beta-binomial, mean {null['mean']:.3g}, dispersion {null['dispersion']:.3g}"
            )
            if refutation(record):
                described += " (**refuted**: no verdicts)"
        reach = "" if null["reaches_alpha"] else " (cannot reach alpha)"
        claims = record.get("false_claims", {})
        cells = []
        for role in ("foreign", "reference"):
            rate = claims.get(role)
            if rate is None:
                cells.append("not measured")
                continue
            low, high = rate["ci95"]
            cells.append(
                f"{rate['claimed']} / {rate['pairs']:,} (95% CI {100 * low:.2f}-{100 * high:.2f}%)"
            )
        foreign = [row for row in record.get("claims", []) if row["role"] == "foreign"]
        most = max((row["max_agreement"] for row in foreign), default=None)
        trials = null["trials_per_key"]
        print(
            f"| `{record['defense']}` | {described} | {null['smallest_p_value']:.2g}{reach} | "
            f"{cells[0]} | {cells[1]} | "
            + (f"{most} of {trials}" if most is not None else "n/a")
            + " |"
        )
    print()
    positions = ", ".join(str(r["position"]) for r in records)
    print(f"alpha = {protocol.alpha:g}; calibrations {positions}.")


if __name__ == "__main__":
    main()
