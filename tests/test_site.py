"""The leaderboard's static site: written from a small smoke sweep, checked on disk and in
headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is downloaded)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from arena.core.protocols import get_protocol
from arena.eval import sweep as sweeping
from arena.eval.leaderboard import build
from arena.report.site import MARKER, publish, write_site
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationStore
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from arena.util.files import file_sha256
from tests.cli_runner import run_arena
from tests.conftest import made_once

SMOKE = get_protocol("smoke")
DEFENSES = ["backdoor-wm", "uchida"]  # a trigger set and a white-box key of bits
ATTACKS = ["ftll", "prune"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, smoke_calibration) -> dict[str, Path]:
    """A smoke sweep (2 defenses x 2 attacks x 2 seeds) in a database of its own that
    also holds the session's backdoor-wm calibration, so the site has a calibration page
    (the record, not the session's database, which other tests add to)."""

    def make(root: Path) -> None:
        CalibrationStore(root / "results.sqlite").save(smoke_calibration["record"])
        store = ResultStore(root / "results.sqlite")
        specs = sweeping.plan("smoke", DEFENSES, ATTACKS, SEEDS)
        report = sweeping.sweep(specs, store=store, cache=ArtifactCache(root / "cache"))
        assert not report.failed, report.failed

    root = made_once(tmp_path_factory, "site-sweep", make)
    return {"db": root / "results.sqlite", "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def site(swept, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    index = publish(
        SMOKE,
        out / "html",
        db=swept["db"],
        cache=ArtifactCache(swept["cache"]),
        markdown_dir=out,
    )
    return index.parent


def test_the_site_has_every_page_and_picture_it_links(site):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert "index.html" in pages
    assert len([p for p in pages if p.startswith("match/")]) == len(DEFENSES) * len(ATTACKS)
    assert pages.count("calibration/backdoor-wm.html") == 1
    for page in site.rglob("*.html"):
        html = page.read_text()
        for target in re.findall(r'(?:src|href)="([^"#:]+)"', html):
            if target.endswith((".md", ".json")) and "data.json" not in target:
                continue  # the Markdown and JSON beside the site, written by the CLI
            assert (page.parent / target).resolve().exists(), f"{page.name} -> {target}"
    assert (site / MARKER).exists()
    assert sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) < 5_000_000


def test_a_match_page_shows_the_evidence_per_seed_and_the_key(site):
    backdoor = (site / "match/backdoor-wm-ftll.html").read_text()
    assert backdoor.count("<tr><td>0</td>") == 2 and backdoor.count("<tr><td>1</td>") == 2
    assert "committed label" in backdoor and 'src="../img/key-' in backdoor
    # One label over each trigger, in the key's order.
    assert backdoor.count("<li>") == SMOKE.trigger_size
    uchida = (site / "match/uchida-ftll.html").read_text()
    assert "secret bits, read from a secret projection of" in uchida
    assert uchida.count('class="bit') > 0


def test_the_data_behind_the_pictures_is_numbers(site, swept):
    data = json.loads((site / "data.json").read_text())
    assert data["leaderboard"] == {"path": "../../smoke.json"}  # named, not repeated
    record = data["calibrations"]["backdoor-wm"]
    assert all(len(row["counts"]) == row["keys"] for row in record["models"])
    assert set(data["pages"].values()) == {
        p.relative_to(site).as_posix() for p in (site / "match").glob("*.html")
    }
    # Written on its own, the site embeds the board's data.
    alone = write_site(
        build(ResultStore(swept["db"]), SMOKE),
        site.parent / "alone",
        cache=ArtifactCache(swept["cache"]),
    )
    embedded = json.loads((alone.parent / "data.json").read_text())["leaderboard"]
    cell = embedded["matches"][0]
    assert [s["seed"] for s in cell["per_seed"]] == SEEDS
    assert isinstance(cell["per_seed"][0]["attacked_evidence"]["successes"], int)


def test_a_rerun_replaces_the_site_whole_and_never_deletes_what_it_did_not_write(
    site, swept, tmp_path
):
    def again(html: Path = site.parent) -> None:
        publish(SMOKE, html, db=swept["db"], cache=ArtifactCache(swept["cache"]))

    # A page an older run wrote (in its manifest) and this run does not: gone after it.
    stale = site / "match" / "stale.html"
    stale.write_text("from an older run")
    manifest = json.loads((site / MARKER).read_text())
    (site / MARKER).write_text(
        json.dumps({**manifest, "files": manifest["files"] + ["match/stale.html"]})
    )
    again()
    assert not stale.exists() and (site / "index.html").exists()
    assert oct((site).stat().st_mode & 0o777) != oct(0o700)  # readable by a web server
    # A file the arena did not write (a CNAME, a page added by hand): refused, kept.
    (site / "CNAME").write_text("arena.example.org")
    with pytest.raises(ArenaError, match=r"holds files the arena did not write \(CNAME\)"):
        again()
    assert (site / "CNAME").read_text() == "arena.example.org"
    (site / "CNAME").unlink()
    foreign = tmp_path / "html" / "smoke"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ArenaError, match="not a site the arena wrote"):
        again(tmp_path / "html")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_writes_the_site_beside_the_markdown(swept, tmp_path):
    shutil.copytree(swept["root"], tmp_path / "home")
    boards = tmp_path / "boards"
    result = run_arena(
        "leaderboard",
        "--protocol",
        "smoke",
        "--out",
        str(boards),
        "--html",
        str(boards),
        home=tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    index = boards / "smoke" / "index.html"
    assert index.exists() and "wrote the site" in result.stdout
    assert 'href="../smoke.md"' in index.read_text()
    named = json.loads((boards / "smoke" / "data.json").read_text())["leaderboard"]
    assert named == {"path": "../smoke.json", "sha256": file_sha256(boards / "smoke.json")}


def test_cli_refuses_a_site_folder_it_did_not_write_before_touching_it(swept, tmp_path):
    shutil.copytree(swept["root"], tmp_path / "home")
    mine = tmp_path / "boards" / "smoke"
    mine.mkdir(parents=True)
    (mine / "draft.md").write_text("my notes")
    result = run_arena(
        "leaderboard",
        "--protocol",
        "smoke",
        "--out",
        str(tmp_path / "md"),
        "--html",
        str(tmp_path / "boards"),
        home=tmp_path / "home",
    )
    assert result.returncode == 2
    assert "not a site the arena wrote" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (mine / "draft.md").read_text() == "my notes"
    assert not (tmp_path / "md").exists()  # refused before anything was written


def _chromium() -> str | None:
    found = os.environ.get("ARENA_CHROMIUM") or shutil.which("chromium")
    return found or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        message = "no chromium on PATH (apt-get install chromium, or set ARENA_CHROMIUM)"
        if os.environ.get("ARENA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


def _open(browser, url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda r: problems.append(f"failed request {r.url}"))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    page.goto(url)
    page.wait_for_load_state("load")
    return page, problems


def _all_images_loaded(page) -> bool:
    return page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_in_chromium_every_page_loads_and_the_table_sorts_and_filters(site, browser):
    page, problems = _open(browser, (site / "index.html").as_uri())
    page.evaluate("Array.from(document.images).forEach(i => i.loading = 'eager')")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert page.locator("img").count() >= len(DEFENSES)  # the robustness-cost plots
    assert _all_images_loaded(page)
    names = "#defense-table tbody tr td:nth-child(2)"
    before = page.locator(names).all_inner_texts()
    header = page.locator("#defense-table thead th", has_text="defense")
    header.click()
    ascending = page.locator(names).all_inner_texts()
    header.click()
    descending = page.locator(names).all_inner_texts()
    assert sorted(before) == ascending == list(reversed(descending)) and ascending != descending
    # A value that is not measured (uchida's false claims here) sorts last both ways.
    claims = page.locator("#defense-table thead th", has_text="false claims")
    for _ in range(2):
        claims.click()
        assert page.locator(names).all_inner_texts()[-1].startswith("uchida")
    page.fill("#defense-filter", "white-box")
    visible = page.locator("#defense-table tbody tr:visible td:nth-child(2)").all_inner_texts()
    assert [name.split()[0] for name in visible] == ["uchida"]
    page.fill("#defense-filter", "")
    assert page.locator("#defense-table tbody tr:visible").count() == len(DEFENSES)
    # A heatmap cell opens its match page, whose trigger grid loads.
    page.locator("#heatmap-removal ~ div table.heatmap a").first.click()
    page.wait_for_load_state("load")
    assert "/match/" in page.url and page.locator("h1").inner_text().count(" x ") == 1
    assert _all_images_loaded(page)
    assert not problems, problems


def test_in_chromium_match_and_calibration_pages_load_whole_and_fit_800_px(site, browser):
    for target in [
        "match/backdoor-wm-ftll.html",
        "match/uchida-prune.html",
        "calibration/backdoor-wm.html",
        "index.html",
    ]:
        page, problems = _open(browser, (site / target).as_uri(), width=800)
        page.evaluate("Array.from(document.images).forEach(i => i.loading = 'eager')")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        assert _all_images_loaded(page), target
        # Usable at 800 px: the page itself never scrolls sideways (wide tables scroll
        # inside their own box).
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 800, (target, overflow)
        assert not problems, (target, problems)


def test_pictures_draw_fitted_nulls_colour_images_and_say_when_they_cannot(tmp_path):
    import numpy as np

    from arena.report import plots

    record = {
        "null": {
            "kind": "beta-binomial",
            "trials_per_key": 100,
            "nominal": 0.1,
            "mean": 0.03,
            "dispersion": 0.05,
        },
        "models": [{"counts": [0, 1, 3, 7, 2]}, {"counts": [1, 1, 0, 12]}],
        "claims": [{"role": "foreign", "counts": [0, 2, 5]}],
    }
    assert plots.null_histogram(record, 0.001, "fitted", tmp_path / "fitted.png")
    assert (tmp_path / "fitted.png").stat().st_size > 1000
    record["models"] = [{"successes": 3}]  # a calibration from before per-key counts
    assert not plots.null_histogram(record, 0.001, "old", tmp_path / "old.png")
    assert not (tmp_path / "old.png").exists()
    images = np.random.default_rng(0).integers(0, 256, (13, 3, 8, 8), dtype=np.uint8)
    assert plots.image_grid(images, tmp_path / "rgb.png", columns=5) == (5, 3)
    from PIL import Image

    with Image.open(tmp_path / "rgb.png") as picture:
        assert picture.mode == "RGB" and picture.size == (5 * 17 + 1, 3 * 17 + 1)
        assert picture.getpixel((1, 1)) == tuple(int(v) for v in images[0, :, 0, 0])
    assert plots.share_colour(0.0) != plots.share_colour(1.0)
    assert plots.text_colour("#ffffff") == "#000000" and plots.text_colour("#000000") == "#ffffff"


def test_a_calibration_without_claim_keys_still_gets_its_page(site, swept):
    record = json.loads(json.dumps(json.loads((site / "data.json").read_text())["calibrations"]))
    (scheme,) = record
    record[scheme].pop("claims")
    record[scheme].pop("false_claims")
    board = build(ResultStore(swept["db"]), SMOKE)
    index = write_site(
        board, site.parent / "no-claims", calibrations=record, cache=ArtifactCache(swept["cache"])
    )
    page = (index.parent / "calibration" / f"{scheme}.html").read_text()
    assert "not measured" in page
