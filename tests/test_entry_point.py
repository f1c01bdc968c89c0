"""A third-party plugin package, installed for real, is found through its entry point.

The example package under ``tests/example_plugin`` (the worked example of
CONTRIBUTING.md) is pip-installed offline into a temporary folder and the CLI runs in a
subprocess with that folder on ``PYTHONPATH``, exactly as a user's environment would
see it. A second, hand-written distribution whose module fails to import checks that
one broken plugin cannot break the others.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_runner import run_arena

EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


@dataclass(frozen=True)
class PluginEnvironment:
    site: Path  # where the example package is installed
    broken_site: Path  # a distribution whose entry point fails to import
    home: Path  # ARENA_HOME of every subprocess


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> PluginEnvironment:
    root = tmp_path_factory.mktemp("entry-point")
    # Build from a copy, so setuptools' build/ and egg-info never land in the repository.
    source = root / "source"
    shutil.copytree(
        EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = root / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return PluginEnvironment(
        site=site, broken_site=_write_broken_plugin(root / "broken"), home=root / "home"
    )


def _write_broken_plugin(site: Path) -> Path:
    """A distribution written by hand: an entry point whose module raises ImportError."""
    site.mkdir()
    (site / "broken_arena_attack.py").write_text(
        'raise ImportError("needs a package that is not installed")\n'
    )
    dist_info = site / "arena_broken_plugin-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: arena-broken-plugin\nVersion: 0.1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[arena.attacks]\nbroken-attack = broken_arena_attack:BrokenAttack\n"
    )
    return site


def _arena(*args: str, path: list[Path], home: Path) -> subprocess.CompletedProcess[str]:
    return run_arena(*args, home=home, path=path)


def test_list_shows_the_plugin_and_its_package(plugins: PluginEnvironment) -> None:
    result = _arena("list", "attacks", path=[plugins.site], home=plugins.home)
    assert result.returncode == 0, result.stderr
    assert "gaussian-noise" in result.stdout
    assert "arena-example-plugin" in result.stdout
    assert "failed to load" not in result.stderr


def test_a_match_runs_the_installed_plugin(plugins: PluginEnvironment) -> None:
    result = _arena(
        "run",
        "--defense",
        "backdoor-wm",
        "--attack",
        "gaussian-noise",
        "--protocol",
        "smoke",
        "--json",
        path=[plugins.site],
        home=plugins.home,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["attack"] == "gaussian-noise"
    assert record["attack_params"] == {"sigma": 0.01}
    assert record["threat_model"]["data"] == "none"
    assert record["threat_model"]["labels"] == "none"
    assert record["attack_info"]["perturbed_tensors"] > 0


def test_an_invalid_parameter_is_one_line_and_exit_status_2(plugins: PluginEnvironment) -> None:
    result = _arena(
        "run",
        "--attack",
        "gaussian-noise",
        "-A",
        "sigma=-1",
        "--protocol",
        "smoke",
        path=[plugins.site],
        home=plugins.home,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "sigma" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_broken_plugin_is_reported_and_the_others_still_list(
    plugins: PluginEnvironment,
) -> None:
    result = _arena("list", "attacks", path=[plugins.site, plugins.broken_site], home=plugins.home)
    assert result.returncode == 0, result.stderr
    assert "rtal" in result.stdout
    assert "gaussian-noise" in result.stdout
    assert "broken-attack" in result.stderr
    assert "failed to load" in result.stderr
    assert "needs a package that is not installed" in result.stderr


def test_a_broken_plugin_does_not_break_resolving_another(plugins: PluginEnvironment) -> None:
    path = [plugins.site, plugins.broken_site]
    # An invalid parameter stops the match before any training, after rtal was resolved
    # and its parameters parsed: the broken entry point was never needed.
    rtal = _arena(
        "run",
        "--attack",
        "rtal",
        "-A",
        "lr=-1",
        "--protocol",
        "smoke",
        path=path,
        home=plugins.home,
    )
    assert rtal.returncode == 2
    assert "attack 'rtal'" in rtal.stderr
    assert "lr must be > 0" in rtal.stderr
    assert "broken-attack" not in rtal.stderr

    broken = _arena(
        "run", "--attack", "broken-attack", "--protocol", "smoke", path=path, home=plugins.home
    )
    assert broken.returncode == 2
    assert "installed but failed to load" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_contributing_shows_the_example_as_it_is() -> None:
    """CONTRIBUTING.md quotes the example package; the quote must not drift from it."""
    guide = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    for quoted in ("pyproject.toml", "arena_example_plugin/__init__.py"):
        assert (EXAMPLE_PLUGIN / quoted).read_text().strip() in guide, quoted
