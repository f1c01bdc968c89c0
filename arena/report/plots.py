"""The site's pictures, drawn with matplotlib (Agg: no display, no network) and Pillow.

Every picture is drawn from the leaderboard's numbers (``arena.eval.leaderboard``) or a
calibration record, which the site also writes as data, so anyone can redraw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arena.core.stats import beta_parameters, min_successes

# Colours of the heatmap: the share of seeds the mark was lost on, from "kept on every
# seed" (pale) to "lost on every seed" (dark red); one hue whose lightness alone carries
# the share, so it reads without telling red from green.
COLORMAP = "YlOrRd"
NO_VERDICT = "#d9d9d9"


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure of its own (no pyplot, so a caller's backend is left alone)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def share_colour(share: float) -> str:
    """The heatmap colour of a share in [0, 1] of seeds won, as ``#rrggbb``."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return str(to_hex(colormaps[COLORMAP](0.05 + 0.85 * min(1.0, max(0.0, share)))))


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (``#rrggbb``)."""
    red, green, blue = (int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "#ffffff"


@dataclass(frozen=True)
class CostPoint:
    """One seed of one attack: the accuracy it cost (points) and the evidence it left,
    as a share of the successes the decision needs (1 = the threshold); ``marked``: the
    mark was verified before the attack (a seed where it was not is drawn hollow: there
    was nothing to remove)."""

    attack: str
    seed: int
    cost: float
    evidence: float
    marked: bool


def robustness_cost(
    points: Sequence[CostPoint], delta_points: float, title: str, path: Path
) -> None:
    """Accuracy cost (x) against the evidence left (y), the threshold drawn and the region
    where an attack wins (the mark is gone and the accuracy cost stays within delta)
    shaded; each attack's mean over seeds is named."""
    figure = _figure(7.2, 4.6)
    axes = figure.subplots()
    costs = [p.cost for p in points]
    evidences = [p.evidence for p in points]
    left = min([-1.0, *costs]) - 0.5
    right = max([delta_points * 1.6, *costs]) + 0.5
    top = max([1.6, *evidences]) * 1.05
    axes.axhspan(
        0,
        1,
        xmin=0,
        xmax=(delta_points - left) / (right - left),
        color="#f4a3a3",
        alpha=0.45,
        lw=0,
        label="the attack wins here",
    )
    axes.axhline(1.0, color="#333333", lw=1.0, ls="--", label="decision threshold")
    axes.axvline(
        delta_points, color="#777777", lw=0.8, ls=":", label=f"delta ({delta_points:g} pts)"
    )
    means = _draw_attacks(axes, points)
    # Attacks whose means lie within a label's size of each other share one label.
    for names, x, y in _clusters(means, (right - left) / 14, top / 22):
        axes.annotate(
            ", ".join(names),
            (x, y),
            fontsize=6.5,
            color="#222222",
            xytext=(3, 2),
            textcoords="offset points",
        )
    axes.set_xlim(left, right)
    axes.set_ylim(0, top)
    axes.set_xlabel("test accuracy the attack cost (points; marked minus attacked)")
    axes.set_ylabel("evidence left (successes / successes needed)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.25, lw=0.5)
    if not all(p.marked for p in points):
        axes.scatter(
            [],
            [],
            s=14,
            facecolors="none",
            edgecolors="#555555",
            label="mark not verified before the attack",
        )
    axes.legend(loc="upper right", fontsize=7, frameon=False)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _draw_attacks(axes: Any, points: Sequence[CostPoint]) -> list[tuple[str, float, float]]:
    """Every seed as a point in its attack's colour (hollow where the mark never
    verified); returns each attack's mean point."""
    from matplotlib import colormaps

    attacks = sorted({p.attack for p in points})
    palette = colormaps["tab20"].resampled(max(1, len(attacks)))
    means = []
    for index, attack in enumerate(attacks):
        mine = [p for p in points if p.attack == attack]
        for marked in (True, False):
            drawn = [p for p in mine if p.marked == marked]
            if not drawn:
                continue
            axes.scatter(
                [p.cost for p in drawn],
                [p.evidence for p in drawn],
                s=14,
                facecolors=palette(index) if marked else "none",
                edgecolors=palette(index),
                alpha=0.8,
                linewidths=0 if marked else 0.9,
            )
        cost, evidence = np.mean([p.cost for p in mine]), np.mean([p.evidence for p in mine])
        means.append((attack, float(cost), float(evidence)))
    return means


def _clusters(
    means: list[tuple[str, float, float]], dx: float, dy: float
) -> list[tuple[list[str], float, float]]:
    """Greedy clusters of named points closer than (``dx``, ``dy``): names and centre."""
    clusters: list[list[tuple[str, float, float]]] = []
    for point in sorted(means, key=lambda m: (m[1], m[2])):
        for cluster in clusters:
            if any(abs(point[1] - o[1]) < dx and abs(point[2] - o[2]) < dy for o in cluster):
                cluster.append(point)
                break
        else:
            clusters.append([point])
    return [
        (
            sorted(m[0] for m in c),
            float(np.mean([m[1] for m in c])),
            float(np.mean([m[2] for m in c])),
        )
        for c in clusters
    ]


def null_histogram(record: dict[str, Any], alpha: float, title: str, path: Path) -> bool:
    """The per-(model, key) agreement counts of a calibration: fit keys on the reference
    models as bars, claim keys on foreign models as a line, the null's probabilities over
    them and the count that verifies at ``alpha``. False when the record kept no counts."""
    fit = [c for row in record["models"] for c in row.get("counts", [])]
    if not fit:
        return False
    foreign = [
        c
        for row in record.get("claims", [])
        if row["role"] == "foreign"
        for c in row.get("counts", [])
    ]
    null = record["null"]
    trials = int(null["trials_per_key"])
    mean = float(null.get("mean", null["nominal"]))
    dispersion = float(null.get("dispersion", 0.0))
    figure = _figure(7.2, 4.2)
    axes = figure.subplots()
    top = max([*fit, *foreign, min_successes(trials, mean, alpha, dispersion) or trials]) + 2
    top = min(trials, top)
    edges = np.arange(-0.5, top + 1.5)
    axes.hist(
        fit,
        bins=edges,
        density=True,
        color="#6baed6",
        alpha=0.8,
        label=f"reference models, fit keys ({len(fit):,})",
    )
    if foreign:
        axes.hist(
            foreign,
            bins=edges,
            density=True,
            histtype="step",
            color="#d94801",
            lw=1.4,
            label=f"foreign models, claim keys ({len(foreign):,})",
        )
    support = np.arange(0, top + 1)
    axes.plot(
        support,
        _null_pmf(support, trials, mean, dispersion),
        "k.-",
        lw=0.8,
        ms=3,
        label=("exact null " if dispersion == 0 else "fitted null ")
        + f"(mean {mean:.3g}, ICC {dispersion:.3g})",
    )
    needed = min_successes(trials, mean, alpha, dispersion)
    if needed is not None and needed <= top:
        axes.axvline(
            needed - 0.5,
            color="#a50f15",
            ls="--",
            lw=1,
            label=f"{needed} of {trials} verify (alpha {alpha:g})",
        )
    axes.set_xlabel(f"agreement of one key with one clean model (of {trials})")
    axes.set_ylabel("share of (model, key) pairs")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, frameon=False)
    axes.grid(alpha=0.25, lw=0.5)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


def _null_pmf(support: np.ndarray, trials: int, mean: float, dispersion: float) -> np.ndarray:
    from scipy import stats

    if dispersion <= 0:
        return stats.binom.pmf(support, trials, mean)
    a, b = beta_parameters(mean, dispersion)
    return stats.betabinom.pmf(support, trials, a, b)


def grid_shape(count: int, columns: int = 10) -> tuple[int, int]:
    """The (columns, rows) ``image_grid`` tiles ``count`` images in."""
    columns = max(1, min(columns, count))
    return columns, math.ceil(count / columns)


def image_grid(
    images: np.ndarray, path: Path, columns: int = 10, scale: int = 2
) -> tuple[int, int]:
    """``images`` (uint8, (n, C, H, W)) tiled row by row, ``scale`` times their size with
    a one-pixel gap, as a PNG; returns the (columns, rows) of the tiling. Labels are the
    page's text, laid over the same grid."""
    from PIL import Image

    count, channels, height, width = images.shape
    columns, rows = grid_shape(count, columns)
    cell_h, cell_w = height * scale + 1, width * scale + 1
    canvas = np.full((rows * cell_h + 1, columns * cell_w + 1, channels), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        pixels = np.kron(image.transpose(1, 2, 0), np.ones((scale, scale, 1), dtype=np.uint8))
        top, left = row * cell_h + 1, column * cell_w + 1
        canvas[top : top + height * scale, left : left + width * scale] = pixels
    picture = canvas[:, :, 0] if channels == 1 else canvas
    Image.fromarray(picture, mode="L" if channels == 1 else "RGB").save(path, optimize=True)
    return columns, rows
