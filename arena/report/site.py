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
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from arena.core.protocols import Protocol
from arena.eval.leaderboard import (
    SECTIONS,
    DefenseRow,
    Leaderboard,
    MatchRow,
    build,
    deciding_evidence,
    seeds_lost,
)
from arena.eval.match import stored_key
from arena.report import plots
from arena.report.leaderboard import (
    mean_text,
    null_text,
    per_seed_text,
    seed_counts,
    succeeded_text,
    versions_line,
    worst_text,
)
from arena.report.text import evidence_text, plugin_label
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import RECORD_FORMAT as CALIBRATION_FORMAT
from arena.storage.calibrations import CalibrationStore, refutation
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from arena.util.files import file_sha256
from arena.util.paths import make_folder

# A file every site this writes holds: a folder without it is not overwritten.
MARKER = ".arena-site"
STATIC = ("site.css", "site.js")
# The sections drawn as heatmaps, threats then their chains (the sanity column "none" is
# in the table and the data).
HEATMAP_SECTIONS = tuple(section for section in SECTIONS if section != "none")


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

    ``calibrations`` maps a scheme (the plugin's name) to its newest calibration record;
    ``cache`` holds the keys the matches were played with (a key no longer there is
    named, not drawn); ``links`` maps a label to a path relative to ``out_dir`` (the
    Markdown, and the JSON, which ``data.json`` then names instead of repeating). The
    site is built beside ``out_dir`` and moved into place whole; a folder is replaced
    only if it is a site this wrote, holding nothing it did not write.
    """
    if not board.matches:
        raise ArenaError(
            f"no results for protocol {board.protocol.name!r} v{board.protocol.version}; "
            "run some matches first"
        )
    out_dir = Path(out_dir)
    check_site_folder(out_dir)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _Builder(board, building, calibrations or {}, cache or ArtifactCache(), links or {}).build()
        umask = os.umask(0)
        os.umask(umask)
        building.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the site from a server
        _replace(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir / "index.html"


def check_site_folder(out_dir: Path) -> None:
    """Make the folder the site goes in, or refuse in one line: a path that cannot be a
    folder, a folder that is not a site this wrote, or one holding files it did not
    write (a page added by hand, a CNAME): nothing there is ever deleted unasked."""
    out_dir = Path(out_dir)
    make_folder(out_dir.parent, "the site")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ArenaError(f"{out_dir} is a file; name a folder for the site")
    marker = out_dir / MARKER
    if not marker.exists():
        if any(out_dir.iterdir()):
            raise ArenaError(
                f"{out_dir} exists and is not a site the arena wrote; name a new or empty folder"
            )
        return
    written = set(json.loads(marker.read_text(encoding="utf-8")).get("files", []))
    present = {
        path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file()
    }
    foreign = sorted(present - written - {MARKER})
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ArenaError(
            f"the site {out_dir} holds files the arena did not write ({', '.join(foreign[:3])}"
            f"{more}); move them away or name another folder"
        )


def publish(
    protocol: Protocol,
    html_dir: Path,
    *,
    db: Path | None = None,
    cache: ArtifactCache | None = None,
    markdown_dir: Path | None = None,
    board: Leaderboard | None = None,
) -> Path:
    """The site of ``protocol``'s stored matches (``board``, when already built from the
    same database) in ``html_dir/<protocol>``, with the newest calibration of every
    scheme on the board, linked to the Markdown and JSON in ``markdown_dir`` when given.
    Returns the index page."""
    store = ResultStore(db)
    board = board or build(store, protocol)
    calibrations = CalibrationStore(store.path)
    found = {}
    for plugin in sorted({row.defense_plugin for row in board.matches}):
        record = calibrations.latest(protocol, plugin)
        if record is not None and record.get("format") == CALIBRATION_FORMAT:
            found[plugin] = record
    site = Path(html_dir) / protocol.name
    links = {}
    if markdown_dir is not None:
        for label, suffix in (("Markdown", "md"), ("JSON", "json")):
            target = Path(markdown_dir) / f"{protocol.name}.{suffix}"
            links[label] = os.path.relpath(target, site)
    return write_site(board, site, calibrations=found, cache=cache, links=links)


def _replace(built: Path, out_dir: Path) -> None:
    """Move ``built`` to ``out_dir``; the old site goes only once the new one is there,
    and comes back if the new one cannot be put in its place."""
    if not out_dir.exists():
        built.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    try:
        built.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        self.used: set[str] = set()  # file names given out, so no two pictures share one
        self.pages = {
            id(row): self._unique("match", _cell_name(row, board)) for row in board.matches
        }
        self.calibration_pages = {
            scheme: self._unique("calibration", scheme) for scheme in sorted(calibrations)
        }

    def _unique(self, folder: str, text: str, suffix: str = ".html") -> str:
        """``folder/<slug of text><suffix>``, numbered when the slug is taken."""
        base = f"{folder}/{slug(text)}"
        name, number = base, 2
        while name + suffix in self.used:
            name, number = f"{base}-{number}", number + 1
        self.used.add(name + suffix)
        return name + suffix

    def build(self) -> None:
        for folder in ("match", "calibration", "img", "static"):
            (self.root / folder).mkdir()
        for name in STATIC:
            source = Path(__file__).with_name("templates") / name
            shutil.copyfile(source, self.root / "static" / name)
        calibration_pages = self._calibrations()
        key_pictures: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self.board.matches:
            self._match_page(row, key_pictures)
        self._render(
            "index.html",
            "index.html.j2",
            board_versions=versions_line(self.board),
            defenses=self._defense_rows(),
            heatmaps=self._heatmaps(),
            cost_plots=self._cost_plots(),
            calibrations=calibration_pages,
            seeds="seeds: " + seed_counts(self.board),
        )
        data = json.dumps(self._data(), separators=(",", ":"), sort_keys=True)
        (self.root / "data.json").write_text(data + "\n", encoding="utf-8")
        written = sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file()
        )
        manifest = {"written_by": "arena leaderboard --html", "files": written}
        (self.root / MARKER).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

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

    def _cells_of(self, row: DefenseRow) -> list[MatchRow]:
        return [
            m
            for m in self.board.matches
            if (m.defense, m.defense_package) == (row.defense, row.defense_package)
        ]

    def _defense_rows(self) -> list[dict[str, Any]]:
        rows = self.board.defenses
        measured = [r.false_claims for r in rows if r.false_claims is not None]
        # One scale for the column, so that the bars compare.
        claims_top = max([0.05, *(c.ci95[1] for c in measured)])
        floor = self._acc_floor()
        return [self._defense_row(row, claims_top, floor) for row in rows]

    def _defense_row(self, row: DefenseRow, claims_top: float, floor: float) -> dict[str, Any]:
        worst, claims = row.worst, row.false_claims
        cells = self._cells_of(row)
        # Accuracies as the no-attack cell has them (every cell of a defense shares its
        # clean and marked models), else the first cell's.
        cell = next((m for m in cells if m.attack == "none"), cells[0]) if cells else None
        plugin = cells[0].defense_plugin if cells else row.defense
        return {
            "row": row,
            "label": plugin_label(row.defense, row.defense_package),
            "rank": f"{row.rank}=" if row.tied else str(row.rank),
            "worst_text": worst_text(row),
            "worst": None
            if worst is None
            else _interval(worst.rate, worst.ci95, 0, 1, f"{worst.lost}/{worst.seeds}"),
            "worst_sort": "" if worst is None else worst.rate,
            "clean": None
            if cell is None
            else self._accuracy(cell.clean_acc, cell.clean_acc_ci95, floor),
            "clean_sort": "" if cell is None else cell.clean_acc,
            "marked": None
            if cell is None
            else self._accuracy(cell.marked_acc, cell.marked_acc_ci95, floor),
            "marked_sort": "" if cell is None else cell.marked_acc,
            "evidence": evidence_text(row.marked_evidence, row.evidence_null.unsound),
            "evidence_sort": row.marked_agreement,
            "clean_evidence": evidence_text(row.clean_evidence, row.evidence_null.unsound),
            "clean_evidence_sort": row.clean_evidence.successes / max(1, row.clean_evidence.trials),
            "null": null_text(row.null),
            "claims": None
            if claims is None
            else _interval(
                claims.claimed / claims.pairs,
                claims.ci95,
                0,
                claims_top,
                f"{claims.claimed}/{claims.pairs:,} ({claims.models})",
            ),
            "claims_sort": "" if claims is None else claims.claimed / claims.pairs,
            "survived": "no verdict" if row.survived is None else f"{row.survived}/{row.attacks}",
            "survived_sort": "" if row.survived is None else row.survived / max(1, row.attacks),
            "calibration": self.calibration_pages.get(plugin),
        }

    @staticmethod
    def _accuracy(value: float, ci: tuple[float, float] | None, floor: float) -> Interval:
        return _interval(value, ci, floor, 1.0, mean_text(value, ci))

    def _acc_floor(self) -> float:
        """The accuracy bars' left end: 90%, or the 5-point step below the lowest mean."""
        matches = self.board.matches
        lowest = min([m.clean_acc for m in matches] + [m.marked_acc for m in matches])
        return min(0.9, math.floor(round(lowest / 0.05, 9)) * 0.05)

    def _heatmaps(self) -> list[dict[str, Any]]:
        order = {
            plugin_label(row.defense, row.defense_package): index
            for index, row in enumerate(self.board.defenses)
        }
        maps = []
        for section in HEATMAP_SECTIONS:
            cells = [m for m in self.board.matches if m.section == section]
            if not cells:
                continue
            grid = {
                (_defense_name(m, self.board), plugin_label(m.attack, m.attack_package)): m
                for m in cells
            }
            attacks = sorted({attack for _, attack in grid})
            defenses = sorted(
                {defense for defense, _ in grid},
                key=lambda name: (order.get(name.split(" on ")[0], len(order)), name),
            )
            rows = [
                (defense, [self._heat_cell(grid.get((defense, attack))) for attack in attacks])
                for defense in defenses
            ]
            maps.append(
                {
                    "threat": section,
                    "anchor": section.replace(" ", "-"),
                    "attacks": attacks,
                    "rows": rows,
                }
            )
        return maps

    def _heat_cell(self, row: MatchRow | None) -> dict[str, Any] | None:
        if row is None:
            return None
        seeds = len(row.seeds)
        name = f"{row.defense} x {row.attack}"
        if row.unsound_null:
            return {
                "href": self.pages[id(row)],
                "text": _evidence_left(row),
                "won": "no verdict",
                "background": plots.NO_VERDICT,
                "colour": "#000000",
                "title": f"{name}: no verdict (the null is {row.unsound_null})",
            }
        lost, unmarked = seeds_lost(row), seeds - row.marked_verified
        won = f"{row.attack_succeeded}/{seeds} won"
        if unmarked:
            won += f", {unmarked} unmarked"
        detail = row.outcome if row.threat in ("forgery", "piracy") else per_seed_text(row)
        background = plots.share_colour(lost / seeds)
        return {
            "href": self.pages[id(row)],
            "text": _evidence_left(row),
            "won": won,
            "background": background,
            "colour": plots.text_colour(background),
            "title": f"{name}: {succeeded_text(row)}; {detail}",
        }

    def _cost_plots(self) -> list[dict[str, Any]]:
        delta = 100 * self.board.protocol.delta
        drawn = []
        for defense in self.board.defenses:
            cells = [
                m
                for m in self._cells_of(defense)
                if m.threat in ("removal", "evasion")
                and m.evidence_applicable
                and not m.unsound_null
            ]
            points = [point for m in cells for point in _cost_points(m)]
            if not points:
                continue
            label = plugin_label(defense.defense, defense.defense_package)
            name = self._unique("img", f"cost {label}", ".png")
            plots.robustness_cost(
                points,
                delta,
                f"{label}: removal and evasion attacks on {self.board.protocol.name} "
                f"(seeds: {seed_counts(self.board)})",
                self.root / name,
            )
            drawn.append({"defense": label, "src": name})
        return drawn

    def _calibrations(self) -> list[dict[str, Any]]:
        pages = []
        for scheme, record in sorted(self.calibrations.items()):
            page = self.calibration_pages[scheme]
            picture = self._unique("img", f"calibration {scheme}", ".png")
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
                page,
                "calibration.html.j2",
                scheme=scheme,
                record=record,
                picture=f"../{picture}" if drawn else None,
                claims=claims,
                refuted=refuted,
            )
            pages.append({"scheme": scheme, "href": page})
        return pages

    def _match_page(self, row: MatchRow, pictures: dict[tuple[Any, ...], dict[str, Any]]) -> None:
        first = row.per_seed[0] if row.per_seed else None
        key = None
        if first is not None:
            # Everything the key's cache name depends on, so two cells share a picture
            # only when they share the key.
            made_by = tuple(first.versions.get(k) for k in ("arena", "defense", "precision"))
            params = json.dumps(row.defense_params, sort_keys=True, default=str)
            where = (row.model, row.defense_plugin, first.seed, params, made_by)
            if where not in pictures:
                pictures[where] = self._key_picture(row, first.seed, first.versions)
            key = pictures[where]
        versions = sorted({_versions_text(s.versions) for s in row.per_seed})
        seeds = [_seed_view(s, row) for s in row.per_seed]
        calibration = self.calibration_pages.get(row.defense_plugin)
        self._render(
            self.pages[id(row)],
            "match.html.j2",
            row=row,
            label=_cell_name(row, self.board, " x "),
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
            calibration=f"../{calibration}" if calibration else None,
            other_user=any(s["other_user"] for s in seeds),
            certificates=any(seed.certificate is not None for seed in row.per_seed),
        )

    def _key_picture(self, row: MatchRow, seed: int, versions: dict[str, Any]) -> dict[str, Any]:
        view: dict[str, Any] = {"seed": seed, "found": False, "grid": None, "bits": None}
        protocol = self.board.protocol.with_model(row.model)
        try:
            key = stored_key(
                protocol, seed, row.defense_plugin, row.defense_params, versions, self.cache
            )
        except (ArenaError, OSError, KeyError, ValueError) as error:
            view["unreadable"] = str(error).splitlines()[0] if str(error) else type(error).__name__
            return view
        view["unreadable"] = None
        if key is None:
            return view
        shown = key.exhibit()
        view.update(
            found=True,
            label_kind=shown.label_kind,
            where=shown.where,
            fingerprint=key.fingerprint,
            controls=0 if shown.controls is None else len(shown.controls[0]),
        )
        if shown.images is not None:
            # Named by content: schemes that draw the same triggers share one picture.
            digest = hashlib.sha256(shown.images.tobytes()).hexdigest()[:16]
            name = f"img/key-{digest}.png"
            if name not in self.used:
                self.used.add(name)
                plots.image_grid(shown.images, self.root / name)
            columns, rows = plots.grid_shape(len(shown.images))
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
        """The numbers behind every picture: the leaderboard's data (or, when the site
        links the leaderboard's JSON, its path and SHA-256), the calibrations, and which
        page shows which cell."""
        pages = {_cell_name(m, self.board, " x "): self.pages[id(m)] for m in self.board.matches}
        board: Any = self.board.to_dict()
        linked = self.links.get("JSON")
        if linked is not None:
            target = self.root / linked  # the site is built beside where it goes
            board = {"path": linked}
            if target.exists():
                board["sha256"] = file_sha256(target)
        return {"leaderboard": board, "calibrations": self.calibrations, "pages": pages}


def _defense_name(row: MatchRow, board: Leaderboard) -> str:
    """The defense as the site names a cell's row: its label, its package when not the
    arena's, and the model when not the protocol's."""
    name = plugin_label(row.defense, row.defense_package)
    return name if row.model == board.protocol.model else f"{name} on {row.model}"


def _cell_name(row: MatchRow, board: Leaderboard, between: str = " ") -> str:
    return f"{_defense_name(row, board)}{between}{plugin_label(row.attack, row.attack_package)}"


def _interval(
    value: float, ci: tuple[float, float] | None, low: float, high: float, text: str
) -> Interval:
    def at(x: float) -> float:
        return round(100 * min(1.0, max(0.0, (x - low) / (high - low))), 2)

    lo, hi = ci if ci is not None else (value, value)
    return Interval(at(lo), at(hi), at(value), text)


def _evidence_left(row: MatchRow) -> str:
    """What a heatmap cell says: the mean over the seeds of the evidence the verdict
    rests on (``deciding_evidence``): the attacked model's; the owner-head evidence of a
    task-changing attack (marked *); the attacker's own claim (marked "claim")."""
    kind, found = deciding_evidence(row)
    if not found:
        return "no claim" if kind == "attacker claim" else "n/a"
    count = sum(e.successes for e in found) / len(found)
    text = f"{count:.0f}/{found[0].trials}"
    return {"attacker claim": f"claim {text}", "owner head": f"{text}*"}.get(kind, text)


def _cost_points(row: MatchRow) -> list[plots.CostPoint]:
    points = []
    for seed in row.per_seed:
        needed = seed.attacked_evidence.required_successes
        if not needed:  # a null no count can beat: nothing to draw against
            continue
        points.append(
            plots.CostPoint(
                attack=row.attack,
                seed=seed.seed,
                cost=100 * (seed.marked_acc - seed.attacked_acc),
                evidence=seed.attacked_evidence.successes / needed,
                marked=seed.marked_evidence.verified,
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
        "weight_change": _weight_change_text(seed.weight_change),
        "certificate": _certificate_text(seed),
        "other_user": None if seed.other_user is None else evidence(seed.other_user),
    }


def _weight_change_text(change: Any) -> str:
    """The attack's weight change: l2 (relative), and whether BatchNorm statistics moved."""
    if change is None:
        return "n/a"
    moved = ", statistics moved" if change.buffers_changed else ""
    return f"{change.l2:.3g} ({100 * change.relative:.2g}%{moved})"


def _certificate_text(seed: Any) -> str | None:
    """What the certificate promised at the attack's weight change, and its check."""
    if seed.certificate is None:
        return None
    if seed.certified is None:
        return "outside it (not only parameters moved)"
    check = seed.certificate_check
    if check is None:
        return f"{seed.certified} certified"
    verdict = "VIOLATED" if check.violated else "held"
    return (
        f"{check.certified} certified; median of {check.samples} noisy copies "
        f"{check.median} (upper bound {check.upper}): {verdict}"
    )


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
