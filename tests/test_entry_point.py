"""A third-party plugin package, installed for real, is found through its entry points.

The example package under ``tests/example_plugin`` (the worked example of
CONTRIBUTING.md: one defense, one attack) is pip-installed offline into a temporary
folder and the CLI runs in a subprocess with that folder on ``PYTHONPATH``, exactly as a
user's environment would see it. Hand-written distributions check that one broken plugin
cannot break the others, and that a module registering a defense and an attack is
credited to its own package for both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_runner import run_arena
from tests.record_schema import check_record

EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


@dataclass(frozen=True)
class PluginEnvironment:
    site: Path  # where the example package is installed
    broken_site: Path  # a distribution whose entry point fails to import
    two_kinds_site: Path  # a distribution whose one module registers a defense and an attack
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
        site=site,
        broken_site=_write_broken_plugin(root / "broken"),
        two_kinds_site=_write_two_kinds_plugin(root / "two-kinds"),
        home=root / "home",
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


def _write_two_kinds_plugin(site: Path) -> Path:
    """A distribution written by hand whose one module registers a defense and an attack,
    each declared as an entry point: loading either registers both."""
    site.mkdir()
    (site / "two_kinds_plugin.py").write_text(
        """from arena import Defense, RemovalAttack, ThreatModel, register_attack, register_defense


@register_defense("two-kinds-defense")
class TwoKindsDefense(Defense):
    \"""A defense beside an attack in one module.\"""

    family, paper = "none", "none"

    def keygen(self, ctx):
        raise NotImplementedError

    def mark(self, model, key, ctx):
        raise NotImplementedError

    def evidence(self, model, key, ctx):
        raise NotImplementedError


@register_attack("two-kinds-attack")
class TwoKindsAttack(RemovalAttack):
    \"""An attack beside a defense in one module.\"""

    paper = "none"

    def threat_model(self, ctx):
        return ThreatModel(data="none", labels="none")

    def remove(self, model, ctx):
        raise NotImplementedError
"""
    )
    dist_info = site / "arena_two_kinds-0.2.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: arena-two-kinds\nVersion: 0.2.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[arena.defenses]\ntwo-kinds-defense = two_kinds_plugin:TwoKindsDefense\n"
        "[arena.attacks]\ntwo-kinds-attack = two_kinds_plugin:TwoKindsAttack\n"
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


def test_list_shows_the_example_defense_and_its_package(plugins: PluginEnvironment) -> None:
    result = _arena("list", "defenses", path=[plugins.site], home=plugins.home)
    assert result.returncode == 0, result.stderr
    assert "checkerboard-wm  (arena-example-plugin 0.1.0)" in result.stdout
    assert "checkerboard-wm" not in result.stderr


@pytest.mark.parametrize("attack", ["gaussian-noise", "ftal"])
def test_the_example_defense_is_verified_in_a_match(
    plugins: PluginEnvironment, attack: str
) -> None:
    """The example defense, loaded through its entry point, against the example attack
    (through its entry point too) and against a built-in one: it marks the model, and the
    mark is verified. Measured on the smoke protocol with seeds 0, 1, 2 on a CPU: the
    marked model answers 20, 20 and 18 of the 20 triggers with their labels where 7 are
    needed at alpha 0.01; the clean model 4, 1 and 4."""
    result = _arena(
        "run",
        "--defense",
        "checkerboard-wm",
        "--attack",
        attack,
        "--protocol",
        "smoke",
        "--json",
        path=[plugins.site],
        home=plugins.home,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    check_record(record)
    assert record["defense"] == "checkerboard-wm" and record["attack"] == attack
    assert record["versions"]["defense_package"] == "arena-example-plugin 0.1.0"
    packages = {"gaussian-noise": "arena-example-plugin 0.1.0", "ftal": "watermark-arena "}
    assert record["versions"]["attack_package"].startswith(packages[attack])
    assert record["defense_params"] == {"trigger_size": None, "square": 2}
    assert record["null"]["kind"] == "exact"  # uniform labels: no calibration needed
    assert record["marked"]["evidence"]["trials"] == 20
    assert record["marked"]["evidence"]["verified"], record["marked"]["evidence"]
    assert not record["clean"]["evidence"]["verified"], record["clean"]["evidence"]


def test_loading_the_example_plugin_warns_of_nothing(plugins: PluginEnvironment) -> None:
    """The example imports only the stable surface (``from arena import ...``): loading
    its entry points raises no DeprecationWarning, as the 0.1 module paths would."""
    script = """
import importlib, json, warnings
from importlib import metadata
import arena
# What the plugin imports through arena, imported first: only the plugin's own imports
# are watched below.
for module in sorted(set(arena.SURFACE.values())):
    importlib.import_module(module)
loaded = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for group in ("arena.defenses", "arena.attacks"):
        for entry_point in metadata.entry_points(group=group):
            if entry_point.dist and entry_point.dist.name == "arena-example-plugin":
                loaded.append(entry_point.load().__name__)
print(json.dumps({
    "loaded": loaded,
    "deprecations": [
        str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
    ],
}))
"""
    env = {**os.environ, "PYTHONPATH": str(plugins.site), "ARENA_HOME": str(plugins.home)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["loaded"]) == ["CheckerboardWatermark", "GaussianNoise"]
    assert report["deprecations"] == []


def test_a_module_with_a_defense_and_an_attack_is_credited_to_its_package(
    plugins: PluginEnvironment,
) -> None:
    """Loading one entry point of a module that registers both kinds registers the other
    too; both are the package's, not the arena's (which would make the second name look
    provided twice and refuse it)."""
    path = [plugins.two_kinds_site]
    for kind, name in (("defenses", "two-kinds-defense"), ("attacks", "two-kinds-attack")):
        result = _arena("list", kind, path=path, home=plugins.home)
        assert result.returncode == 0, result.stderr
        assert f"{name}  (arena-two-kinds 0.2.0)" in result.stdout
        assert "two-kinds" not in result.stderr
    # A match resolves the defense first, which loads the attack's module as a side effect.
    result = _arena(
        "run",
        "--defense",
        "two-kinds-defense",
        "--attack",
        "two-kinds-attack",
        "-A",
        "unknown=1",
        "--protocol",
        "smoke",
        path=path,
        home=plugins.home,
    )
    assert result.returncode == 2
    assert "provided by" not in result.stderr
    assert "parameter of attack 'two-kinds-attack'" in result.stderr


EXAMPLE_FILES = (
    "pyproject.toml",
    "arena_example_plugin/__init__.py",
    "arena_example_plugin/checkerboard.py",
    "arena_example_plugin/gaussian_noise.py",
)


def test_contributing_shows_the_example_as_it_is() -> None:
    """CONTRIBUTING.md quotes the example package; the quote must not drift from it."""
    guide = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    for quoted in EXAMPLE_FILES:
        assert (EXAMPLE_PLUGIN / quoted).read_text().strip() in guide, quoted
