"""Screenshots of a leaderboard site in headless Chromium: the index, its first heatmap and
a match page, at desktop width and at 800 px, with any console error or failed request.

    python scripts/site_screenshots.py leaderboards/mnist5k --out /tmp/shots
    python scripts/site_screenshots.py leaderboards/mnist5k --match match/backdoor-wm-rtal.html

Needs Debian's ``chromium`` (or ``--chromium PATH``) and Playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WIDTHS = (1400, 800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the site's folder (holds index.html)")
    parser.add_argument("--out", type=Path, default=Path("site-screenshots"))
    parser.add_argument("--match", default=None, help="a match page (default: the first)")
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args()
    if args.chromium is None:
        raise SystemExit("no chromium on PATH; apt-get install chromium or pass --chromium")
    match = (
        args.match
        or sorted(
            p.relative_to(args.site).as_posix() for p in (args.site / "match").glob("*.html")
        )[0]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        for width in WIDTHS:
            for name, page_path, selector in (
                ("index", "index.html", None),
                ("heatmap", "index.html", "table.heatmap"),
                ("match", match, None),
            ):
                page = browser.new_page(viewport={"width": width, "height": 1000})
                problems: list[str] = []
                page.on("console", lambda m, seen=problems: _console(m, seen))
                page.on("requestfailed", lambda r, seen=problems: seen.append(f"failed {r.url}"))
                page.goto((args.site / page_path).resolve().as_uri())
                page.wait_for_load_state("load")
                target = args.out / f"{name}-{width}.png"
                if selector:
                    page.locator(selector).first.screenshot(path=target)
                else:
                    page.screenshot(path=target)
                wide = page.evaluate("document.documentElement.scrollWidth")
                print(f"{target}: page width {wide} px at {width}; problems: {problems or 'none'}")
                page.close()
        browser.close()


def _console(message: object, seen: list[str]) -> None:
    if getattr(message, "type", "") == "error":
        seen.append(str(getattr(message, "text", message)))


if __name__ == "__main__":
    main()
