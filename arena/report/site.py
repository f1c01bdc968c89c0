"""The leaderboard as a static site: what the Markdown has, plus what people would rather
see than read. No server and no network are needed to view it; the page's script and
style ship with it, and every picture is a file the pages reference.

``index.html`` ranks the defenses (sortable, filterable, intervals drawn as intervals),
draws one defense x attack heatmap per threat whose cells open a page per match, and one
robustness-cost plot per defense; ``match/<cell>.html`` shows a cell's threat model,
parameters, evidence and accuracies per seed, times, versions and the key itself (its
triggers with their committed labels, or its bits); ``calibration/<scheme>.html`` shows
a scheme's null over its reference models with its measured false claims. ``data.json``
holds the numbers behind every picture (the leaderboard's data and the calibrations).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from arena.core.keys import Key
from arena.core.protocols import Protocol
from arena.eval.leaderboard import THREAT_SECTIONS, DefenseRow, Leaderboard, MatchRow, build
from arena.eval.match import stored_key
from arena.report import plots
from arena.report.leaderboard import (
    mean_text,
    null_text,
    per_seed_text,
    succeeded_text,
    versions_line,
    worst_text,
)
from arena.report.text import evidence_text, plugin_label
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationStore, refutation
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from arena.util.paths import make_folder

# A file every site this writes holds: a folder without it is not overwritten.
MARKER = ".arena-site"
STATIC = ("site.css", "site.js")
# The threats drawn as heatmaps (the sanity column "none" is in the table and the data).
HEATMAP_THREATS = tuple(threat for threat in THREAT_SECTIONS if threat != "none")


@dataclass(frozen=True)
class Interval:
    """An interval drawn on a cell's scale: left and right ends and the point, in percent
    of the drawing's width, with its text."""

    low: float
    high: float
    point: float
    text: str


def write_site(
    board: Leaderboard,
    out_dir: Path,
    *,
    calibrations: dict[str, dict[str, Any]] | None = None,
    cache: ArtifactCache | None = None,
    links: dict[str, str] | None = None,
) -> Path:
    """Write the site of ``board`` to ``out_dir`` and return its index page.

    ``calibrations`` maps a scheme to its newest calibration record; ``cache`` holds the
    keys the matches were played with (keys no longer there are named, not drawn);
    ``links`` maps a label to a path relative to ``out_dir`` (e.g. the Markdown). The
    site is built beside ``out_dir`` and moved into place whole; an existing folder is
    replaced only if it is a site this wrote.
    """
    if not board.matches:
        raise ArenaError(
            f"no results for protocol {board.protocol.name!r} v{board.protocol.version}; "
            "run some matches first"
        )
    out_dir = Path(out_dir)
    check_site_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _Builder(board, building, calibrations or {}, cache or ArtifactCache(), links or {}).build()
        _replace(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir / "index.html"


def check_site_folder(out_dir: Path) -> None:
    """Make the folder the site goes in, or refuse in one line: a path that cannot be a
    folder, or a folder that holds anything but a site this wrote (it is never replaced)."""
    out_dir = Path(out_dir)
    make_folder(out_dir.parent, "the site")
    if out_dir.exists() and not (out_dir / MARKER).exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise ArenaError(
                f"{out_dir} exists and is not a site the arena wrote; name a new or empty folder"
            )


def publish(
    protocol: Protocol,
    html_dir: Path,
    *,
    db: Path | None = None,
    cache: ArtifactCache | None = None,
    markdown_dir: Path | None = None,
) -> Path:
    """The site of ``protocol``'s stored matches in ``html_dir/<protocol>``, with the newest
    calibration of every scheme on the board, linked to the Markdown and JSON in
    ``markdown_dir`` when given. Returns the index page."""
    store = ResultStore(db)
    board = build(store, protocol)
    calibrations = CalibrationStore(store.path)
    found = {
        row.defense: record
        for row in board.defenses
        if (record := calibrations.latest(protocol, row.defense)) is not None
    }
    site = Path(html_dir) / protocol.name
    links = {}
    if markdown_dir is not None:
        for label, suffix in (("Markdown", "md"), ("JSON", "json")):
            target = Path(markdown_dir) / f"{protocol.name}.{suffix}"
            links[label] = os.path.relpath(target, site)
    return write_site(board, site, calibrations=found, cache=cache, links=links)


def _replace(built: Path, out_dir: Path) -> None:
    """Move ``built`` to ``out_dir``; the old site goes only once the new one is there."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        built.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        built.rename(out_dir)


def slug(text: str) -> str:
    """A file name for ``text``: lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


class _Builder:
    def __init__(
        self,
        board: Leaderboard,
        root: Path,
        calibrations: dict[str, dict[str, Any]],
        cache: ArtifactCache,
        links: dict[str, str],
    ) -> None:
        self.board, self.root, self.cache, self.links = board, root, cache, links
        self.calibrations = calibrations
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("arena.report", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["heat"] = plots.share_colour
        self.env.filters["ink"] = plots.text_colour
        self.pages: dict[int, str] = {}  # id(row) -> match page, relative to the root
        used: set[str] = set()
        for row in board.matches:
            name = slug(
                f"{plugin_label(row.defense, row.defense_package)} "
                f"{plugin_label(row.attack, row.attack_package)} {row.model}"
            )
            if row.model == board.protocol.model:
                name = slug(
                    f"{plugin_label(row.defense, row.defense_package)} "
                    f"{plugin_label(row.attack, row.attack_package)}"
                )
            base, number = name, 2
            while name in used:
                name, number = f"{base}-{number}", number + 1
            used.add(name)
            self.pages[id(row)] = f"match/{name}.html"

    def build(self) -> None:
        for folder in ("match", "calibration", "img", "static"):
            (self.root / folder).mkdir()
        (self.root / MARKER).write_text("a site written by arena leaderboard --html\n")
        for name in STATIC:
            source = Path(__file__).with_name("templates") / name
            shutil.copyfile(source, self.root / "static" / name)
        calibration_pages = self._calibrations()
        key_pictures: dict[tuple[str, int], dict[str, Any]] = {}
        for row in self.board.matches:
            self._match_page(row, key_pictures)
        cost_plots = self._cost_plots()
        self._render(
            "index.html",
            "index.html.j2",
            board_versions=versions_line(self.board),
            defenses=[self._defense_row(row) for row in self.board.defenses],
            heatmaps=self._heatmaps(),
            cost_plots=cost_plots,
            calibrations=calibration_pages,
            seeds=_seed_span(self.board),
        )
        data = json.dumps(self._data(), separators=(",", ":"), sort_keys=True)
        (self.root / "data.json").write_text(data + "\n", encoding="utf-8")

    # --- pages ------------------------------------------------------------------------

    def _render(self, path: str, template: str, **context: Any) -> None:
        depth = path.count("/")
        page = self.env.get_template(template).render(
            protocol=self.board.protocol,
            up="../" * depth,
            links={label: "../" * depth + target for label, target in self.links.items()},
            **context,
        )
        (self.root / path).write_text(page, encoding="utf-8")

    def _defense_row(self, row: DefenseRow) -> dict[str, Any]:
        worst = row.worst
        claims = row.false_claims
        return {
            "row": row,
            "label": plugin_label(row.defense, row.defense_package),
            "rank": f"{row.rank}=" if row.tied else str(row.rank),
            "worst_text": worst_text(row),
            "worst": None
            if worst is None
            else _interval(worst.rate, worst.ci95, 0, 1, f"{worst.lost}/{worst.seeds}"),
            "worst_sort": 2.0 if worst is None else worst.rate,
            "clean": self._accuracy(row.defense, "clean"),
            "marked": self._accuracy(row.defense, "marked"),
            "evidence": evidence_text(row.marked_evidence, row.evidence_null.unsound),
            "clean_evidence": evidence_text(row.clean_evidence, row.evidence_null.unsound),
            "null": null_text(row.null),
            "claims": None
            if claims is None
            else _interval(
                claims.claimed / claims.pairs,
                claims.ci95,
                0,
                max(0.05, claims.ci95[1]),
                f"{claims.claimed}/{claims.pairs:,} ({claims.models})",
            ),
            "claims_sort": -1.0 if claims is None else claims.claimed / claims.pairs,
            "survived": "no verdict" if row.survived is None else f"{row.survived}/{row.attacks}",
            "survived_sort": -1 if row.survived is None else row.survived / max(1, row.attacks),
            "calibration": f"calibration/{slug(row.defense)}.html"
            if row.defense in self.calibrations
            else None,
        }

    def _accuracy(self, defense: str, which: str) -> Interval | None:
        """A defense's clean or marked accuracy over seeds (its no-attack cell's, else its
        first cell's), on a scale from 90% (or lower, if needed) to 100%."""
        cells = [m for m in self.board.matches if m.defense == defense]
        if not cells:
            return None
        cell = next((m for m in cells if m.attack == "none"), cells[0])
        value = cell.clean_acc if which == "clean" else cell.marked_acc
        ci = cell.clean_acc_ci95 if which == "clean" else cell.marked_acc_ci95
        return _interval(value, ci, self._acc_floor(), 1.0, mean_text(value, ci))

    def _acc_floor(self) -> float:
        lowest = min(
            [m.clean_acc for m in self.board.matches] + [m.marked_acc for m in self.board.matches]
        )
        return min(0.9, 0.05 * int(lowest / 0.05))

    def _heatmaps(self) -> list[dict[str, Any]]:
        ranked = [row.defense for row in self.board.defenses]
        maps = []
        for threat in HEATMAP_THREATS:
            cells = [m for m in self.board.matches if m.threat == threat]
            if not cells:
                continue
            attacks = sorted({m.attack for m in cells})
            defenses = [d for d in ranked if any(m.defense == d for m in cells)]
            defenses += sorted({m.defense for m in cells} - set(defenses))
            grid = {(m.defense, m.attack): m for m in cells}
            rows = [
                (defense, [self._heat_cell(grid.get((defense, attack))) for attack in attacks])
                for defense in defenses
            ]
            maps.append({"threat": threat, "attacks": attacks, "rows": rows})
        return maps

    def _heat_cell(self, row: MatchRow | None) -> dict[str, Any] | None:
        if row is None:
            return None
        seeds = len(row.seeds)
        evidence = _evidence_left(row)
        detail = row.outcome if row.threat in ("forgery", "piracy") else per_seed_text(row)
        tooltip = f"{row.defense} x {row.attack}: {succeeded_text(row)}; {detail}"
        if row.unsound_null:
            background = plots.NO_VERDICT
            tooltip = f"{row.defense} x {row.attack}: no verdict (null {row.unsound_null})"
        else:
            background = plots.share_colour(row.attack_succeeded / seeds)
        return {
            "href": self.pages[id(row)],
            "text": evidence,
            "won": None if row.unsound_null else f"{row.attack_succeeded}/{seeds}",
            "background": background,
            "colour": plots.text_colour(background),
            "title": tooltip,
        }

    def _cost_plots(self) -> list[dict[str, Any]]:
        delta = 100 * self.board.protocol.delta
        drawn = []
        for defense in self.board.defenses:
            points = [
                point
                for m in self.board.matches
                if m.defense == defense.defense
                and m.threat in ("removal", "evasion")
                and m.evidence_applicable
                and not m.unsound_null
                for point in _cost_points(m)
            ]
            if not points:
                continue
            name = f"img/cost-{slug(defense.defense)}.png"
            seeds = _seed_span(self.board)
            plots.robustness_cost(
                points,
                delta,
                f"{defense.defense}: removal and evasion attacks on {self.board.protocol.name} "
                f"({seeds})",
                self.root / name,
            )
            drawn.append({"defense": defense.defense, "src": name})
        return drawn

    def _calibrations(self) -> list[dict[str, Any]]:
        pages = []
        for scheme, record in sorted(self.calibrations.items()):
            name = slug(scheme)
            picture = f"img/calibration-{name}.png"
            drawn = plots.null_histogram(
                record,
                record["alpha"],
                f"{scheme} on {record['protocol']}: the null over clean models",
                self.root / picture,
            )
            claims = [
                {
                    "role": role,
                    **rate,
                    "models": sum(1 for r in record.get("claims", []) if r["role"] == role),
                }
                for role, rate in record.get("false_claims", {}).items()
            ]
            refuted = refutation(record) if record["null"]["kind"] != "exact" else None
            self._render(
                f"calibration/{name}.html",
                "calibration.html.j2",
                scheme=scheme,
                record=record,
                picture=f"../{picture}" if drawn else None,
                claims=claims,
                refuted=refuted,
            )
            pages.append({"scheme": scheme, "href": f"calibration/{name}.html"})
        return pages

    def _match_page(self, row: MatchRow, pictures: dict[tuple[str, int], dict[str, Any]]) -> None:
        first = row.per_seed[0] if row.per_seed else None
        key = None
        if first is not None:
            where = (row.defense_plugin, first.seed, str(sorted(row.defense_params.items())))
            if where not in pictures:
                pictures[where] = self._key_picture(row, first.seed, first.versions)
            key = pictures[where]
        versions = sorted({_versions_text(s.versions) for s in row.per_seed})
        seeds = [_seed_view(s, row) for s in row.per_seed]
        self._render(
            self.pages[id(row)],
            "match.html.j2",
            row=row,
            label=f"{plugin_label(row.defense, row.defense_package)} x "
            f"{plugin_label(row.attack, row.attack_package)}",
            succeeded=succeeded_text(row),
            accuracies={
                "clean": mean_text(row.clean_acc, row.clean_acc_ci95),
                "marked": mean_text(row.marked_acc, row.marked_acc_ci95),
                "attacked": mean_text(row.attacked_acc, row.attacked_acc_ci95),
            },
            threat_model=asdict(row.threat_model),
            seeds=seeds,
            nulls=sorted({s["null"] for s in seeds}),
            phases=sorted({phase for s in row.per_seed for phase in s.seconds}, key=_phase_order),
            versions=versions,
            key=key,
            calibration=f"../calibration/{slug(row.defense_plugin)}.html"
            if row.defense_plugin in self.calibrations
            else None,
        )

    def _key_picture(self, row: MatchRow, seed: int, versions: dict[str, Any]) -> dict[str, Any]:
        protocol = self.board.protocol.with_model(row.model)
        key: Key | None = stored_key(
            protocol, seed, row.defense_plugin, row.defense_params, versions, self.cache
        )
        view: dict[str, Any] = {"seed": seed, "found": key is not None, "grid": None, "bits": None}
        if key is None:
            return view
        shown = key.exhibit()
        view.update(
            label_kind=shown.label_kind,
            where=shown.where,
            fingerprint=key.fingerprint,
            controls=0 if shown.controls is None else len(shown.controls[0]),
        )
        if shown.images is not None:
            # Named by content: schemes that draw the same triggers share one picture.
            digest = hashlib.sha256(shown.images.tobytes()).hexdigest()[:16]
            name = f"img/key-{digest}.png"
            columns, rows = plots.image_grid(shown.images, self.root / name)
            height, width = shown.images.shape[2:]
            view["grid"] = {
                "src": f"../{name}",
                "columns": columns,
                "rows": rows,
                "cell_w": 2 * width + 1,
                "cell_h": 2 * height + 1,
                "labels": [int(label) for label in shown.labels]
                if shown.labels is not None
                else [],
                "count": len(shown.images),
            }
        if shown.bits is not None:
            bits = [int(bit) for bit in shown.bits]
            view["bits"] = {
                "values": bits,
                "columns": 16 if len(bits) >= 64 else 8,
                "hex": _hex(bits),
            }
        return view

    def _data(self) -> dict[str, Any]:
        """The numbers behind every picture: the leaderboard's data (or where its JSON
        lies, when the site links it), the calibrations, and which page shows which cell."""
        pages = {
            f"{m.defense} x {m.attack} ({m.model})": self.pages[id(m)] for m in self.board.matches
        }
        board = self.links.get("JSON") or self.board.to_dict()
        return {"leaderboard": board, "calibrations": self.calibrations, "pages": pages}


def _interval(
    value: float, ci: tuple[float, float] | None, low: float, high: float, text: str
) -> Interval:
    def at(x: float) -> float:
        return round(100 * min(1.0, max(0.0, (x - low) / (high - low))), 2)

    lo, hi = ci if ci is not None else (value, value)
    return Interval(at(lo), at(hi), at(value), text)


def _evidence_left(row: MatchRow) -> str:
    """What a heatmap cell says, as a mean over the seeds: the evidence after the attack;
    for a task-changing attack the owner-head evidence (marked *); for forgery and piracy
    the attacker's own claim on the attacked model (marked "claim")."""

    def mean_of(records: list[Any], mark: str = "") -> str:
        if not records:
            return "n/a"
        count = sum(r.successes for r in records) / len(records)
        return f"{mark}{count:.0f}/{records[0].trials}"

    if row.threat in ("forgery", "piracy"):
        claims = [s.attacker_claim for s in row.per_seed if s.attacker_claim is not None]
        return mean_of(claims, "claim ") if claims else "no claim"
    if not row.evidence_applicable:
        heads = [s.owner_head for s in row.per_seed if s.owner_head is not None]
        return mean_of(heads) + "*"
    return mean_of([s.attacked_evidence for s in row.per_seed])


def _cost_points(row: MatchRow) -> list[plots.CostPoint]:
    points = []
    for seed in row.per_seed:
        needed = seed.attacked_evidence.required_successes
        if not needed:
            continue
        points.append(
            plots.CostPoint(
                attack=row.attack,
                seed=seed.seed,
                cost=100 * (seed.marked_acc - seed.attacked_acc),
                evidence=seed.attacked_evidence.successes / needed,
                succeeded=seed.attack_succeeded,
            )
        )
    return points


def _seed_view(seed: Any, row: MatchRow) -> dict[str, Any]:
    def evidence(record: Any) -> str:
        return "n/a" if record is None else evidence_text(record, row.unsound_null)

    def acc(value: float, ci: tuple[float, float]) -> str:
        return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    return {
        "seed": seed.seed,
        "clean": acc(seed.clean_acc, seed.clean_acc_ci95),
        "marked": acc(seed.marked_acc, seed.marked_acc_ci95),
        "attacked": acc(seed.attacked_acc, seed.attacked_acc_ci95),
        "task": None if seed.task_acc is None else f"{100 * seed.task_acc:.1f}",
        "clean_evidence": evidence(seed.clean_evidence),
        "marked_evidence": evidence(seed.marked_evidence),
        "attacked_evidence": evidence(seed.attacked_evidence),
        "owner_head": evidence(seed.owner_head),
        "attacker_claim": _claim_text(seed.attacker_claim, seed.attacker_claim_passed),
        "null": seed.null.source
        if seed.null.source.startswith(seed.null.kind)
        else f"{seed.null.kind}: {seed.null.source}",
        "succeeded": "no verdict"
        if row.unsound_null
        else ("yes" if seed.attack_succeeded else "no"),
        "outcome": seed.outcome,
        "seconds": seed.seconds,
        "cached": sorted(phase for phase, hit in seed.cached.items() if hit),
        "threads": seed.versions.get("threads", "?"),
    }


def _claim_text(evidence: Any, passed: bool | None) -> str | None:
    """The attacker's claim: its evidence and whether the ownership protocol upheld it
    (a claim can fail on the label check or the ledger's order, not only on evidence)."""
    if evidence is None:
        return None
    verdict = "claim upheld" if passed else "claim rejected"
    return f"{evidence.successes}/{evidence.trials} (p {evidence.p_value:.1e}, {verdict})"


PHASES = ("data", "keygen", "clean", "mark", "verify", "attack", "total")


def _phase_order(phase: str) -> tuple[int, str]:
    return (PHASES.index(phase) if phase in PHASES else len(PHASES) - 1, phase)


def _versions_text(versions: dict[str, Any]) -> str:
    return ", ".join(f"{k} {versions[k]}" for k in sorted(versions))


def _hex(bits: list[int]) -> str:
    padded = bits + [0] * (-len(bits) % 4)
    return "".join(
        f"{int(''.join(map(str, padded[i : i + 4])), 2):x}" for i in range(0, len(padded), 4)
    )


def _seed_span(board: Leaderboard) -> str:
    counts = sorted({len(m.seeds) for m in board.matches})
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} seed{'' if span == '1' else 's'} per cell"
