"""The ``arena`` command as a user meets it: exit codes, one-line errors, JSON, files."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.cli_runner import run_arena
from tests.record_schema import check_record


def arena(*args: str, home, process: bool = False) -> subprocess.CompletedProcess:
    return run_arena(*args, home=home, process=process)


@pytest.fixture(scope="module")
def home(tmp_path_factory, trained_smoke_cache):
    """A home whose cache holds the owner's smoke models of seed 0 (not its database):
    the commands here are about what they print, not about training."""
    home = tmp_path_factory.mktemp("arena-home")
    shutil.copytree(trained_smoke_cache, home / "cache")
    return home


def test_list_shows_every_kind(home):
    result = arena("list", home=home)
    assert result.returncode == 0, result.stderr
    for name in ("backdoor-wm", "backdoor-wm-pretrained", "rtal", "ftll", "mnist5k", "smoke"):
        assert name in result.stdout
    assert "watermark-arena" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--attack", "rtla", "--protocol", "smoke"], "did you mean 'rtal'"),
        (["run", "--defense", "uchidda", "--protocol", "smoke"], "unknown defense 'uchidda'"),
        (["run", "--protocol", "smoke", "-A", "lr=abc"], "lr"),
        (["run", "--protocol", "smoke", "-A", "lr"], "name=value"),
        (["list", "gadgets"], "unknown plugin kind"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(home, args, message):
    result = arena(*args, home=home)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_run_json_then_leaderboard(home, tmp_path):
    result = arena(
        "run",
        "--defense",
        "backdoor-wm",
        "--attack",
        "ftal",
        "--protocol",
        "smoke",
        "--seed",
        "0",
        "--json",
        home=home,
        process=True,  # run as a shell starts it
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)  # stdout holds the record and nothing else
    check_record(record)
    assert (record["defense"], record["attack"], record["seed"]) == ("backdoor-wm", "ftal", 0)

    table = arena(
        "run",
        "--defense",
        "backdoor-wm",
        "--attack",
        "ftal",
        "--protocol",
        "smoke",
        "--seed",
        "0",
        home=home,
    )
    assert table.returncode == 0, table.stderr
    assert "attack succeeded" in table.stdout and "from cache" in table.stdout

    out = tmp_path / "boards"
    board = arena("leaderboard", "--protocol", "smoke", "--out", str(out), home=home, process=True)
    assert board.returncode == 0, board.stderr
    markdown = (out / "smoke.md").read_text()
    assert "| backdoor-wm | ftal |" in markdown
    data = json.loads((out / "smoke.json").read_text())
    assert data["protocol"] == "smoke" and data["matches"][0]["attack"] == "ftal"


def test_leaderboard_of_an_empty_database_is_a_clear_error(tmp_path):
    result = arena("leaderboard", "--protocol", "smoke", "--out", str(tmp_path), home=tmp_path)
    assert result.returncode == 2
    assert "no results" in result.stderr
