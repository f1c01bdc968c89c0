"""A paper table played again (``arena.eval.paper``) as Markdown: the paper's numbers and
the arena's side by side."""

from __future__ import annotations

from arena.eval.paper import PaperTable, RowResult
from arena.report.text import k_of_n, pct
from arena.storage.record import Interval


def paper_markdown(table: PaperTable) -> str:
    spec = table.spec
    seeds = table.seeds
    count = len(seeds)
    lines = [
        f"# {spec.title}",
        "",
        f"The seed paper ({spec.source}) beside `arena reproduce {spec.name}` on protocol "
        f"`{table.protocol}` ({table.model}), {count} seed{'s' if count != 1 else ''} "
        f"({', '.join(map(str, seeds))}). Ours: the mean over the seeds with its 95% "
        "t-interval" + (" (none from one seed)" if count == 1 else "") + ".",
        "",
        "| model | paper: test acc. (%) | ours: test acc. (%) | paper: trigger acc. (%) "
        "| ours: trigger acc. (%) | triggers, all seeds | verified seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(result, count) for result in table.rows]
    notes = [
        f"Verified: the trigger evidence passes the exact binomial test at alpha "
        f"{table.alpha:g} (seeds where it did, of {count}).",
        *(f"{result.row.label}: test accuracy on {result.row.test_set}." for result in table.rows),
        *spec.notes,
    ]
    for note in notes:  # a paragraph each
        lines += ["", note]
    lines += [
        "",
        "Per seed:",
        "",
        "| model | seed | test acc. (%) | triggers | verified |",
        "|---|---|---|---|---|",
    ]
    for result in table.rows:
        for seed in result.seeds:
            lines.append(
                f"| {result.row.label} | {seed.seed} | {pct(seed.test_acc)} | "
                f"{k_of_n(seed.trigger_successes, seed.trigger_trials)} | "
                f"{'yes' if seed.verified else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def _row(result: RowResult, count: int) -> str:
    successes = sum(seed.trigger_successes for seed in result.seeds)
    trials = sum(seed.trigger_trials for seed in result.seeds)
    cells = [
        result.row.label,
        pct(result.row.paper_test_acc),
        _with_interval(result.test_acc, result.test_acc_ci95),
        f"{100 * result.row.paper_trigger_acc:.1f}",
        _with_interval(result.trigger_acc, result.trigger_acc_ci95),
        k_of_n(successes, trials),
        k_of_n(result.verified_seeds, count),
    ]
    return "| " + " | ".join(cells) + " |"


def _with_interval(value: float, interval: Interval | None) -> str:
    if interval is None:
        return pct(value)
    low, high = interval
    return f"{pct(value)} [{pct(max(0.0, low))}, {pct(min(1.0, high))}]"
