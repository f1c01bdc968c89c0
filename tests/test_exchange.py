"""``arena results export`` and ``import``: the stored results of a protocol as a file and
back, bit for bit, without ever replacing what a database holds."""

from __future__ import annotations

import json

import pytest

from arena.core.protocols import get_protocol
from arena.storage.calibrations import RECORD_FORMAT, CalibrationStore
from arena.storage.exchange import export_results, import_results
from arena.storage.results import ResultStore, connect
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


def _match(seed: int, attack: str = "rtal") -> dict:
    return {
        "protocol": SMOKE.name,
        "protocol_version": SMOKE.version,
        "model": "m",
        "defense": "content",
        "attack": attack,
        "seed": seed,
        "defense_params": {},
        "attack_params": {},
        "threat_model": {},
        "versions": {"torch": "x"},
        "evidence": {"agreement": 0.25 * seed, "null": {"calibration": 1}},
    }


def _calibration(defense: str = "content", mean: float = 0.0006) -> dict:
    return {
        "format": RECORD_FORMAT,
        "protocol": SMOKE.name,
        "protocol_fingerprint": SMOKE.fingerprint,
        "defense": defense,
        "null": {"mean": mean},
    }


def _rows(path) -> tuple[list, list]:
    with connect(path) as connection:
        matches = connection.execute("SELECT * FROM matches ORDER BY match_id").fetchall()
        calibrations = connection.execute("SELECT * FROM calibrations ORDER BY position").fetchall()
    return matches, calibrations


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "a.sqlite"
    store, calibrations = ResultStore(path), CalibrationStore(path)
    calibrations.save(_calibration("noise"))
    calibrations.save(_calibration("content"))
    for seed in range(3):
        store.save(f"match-{seed}", _match(seed))
    other = get_protocol("mnist5k")
    store.save(
        "elsewhere", {**_match(0), "protocol": other.name, "protocol_version": other.version}
    )
    return path


def test_an_export_imports_into_a_new_database_row_for_row(filled, tmp_path):
    out = tmp_path / "smoke.jsonl"
    done = export_results("smoke", out, filled)
    assert (done.matches, done.calibrations) == (3, 2)
    again = tmp_path / "again.jsonl"
    export_results("smoke", again, filled)
    assert out.read_bytes() == again.read_bytes()  # the same results, the same bytes

    fresh = tmp_path / "b.sqlite"
    done = import_results(out, fresh)
    assert (done.matches, done.calibrations, done.present) == (3, 2, 0)
    matches, calibrations = _rows(fresh)
    source_matches, source_calibrations = _rows(filled)
    assert matches == [row for row in source_matches if row[1] == "smoke"]
    assert calibrations == source_calibrations  # positions and creation times kept
    assert CalibrationStore(fresh).latest(SMOKE, "content")["position"] == 2

    repeat = import_results(out, fresh)
    assert (repeat.matches, repeat.calibrations, repeat.present, repeat.differing) == (0, 0, 3, 0)
    assert _rows(fresh) == (matches, calibrations)


def test_a_stored_match_is_never_replaced_by_the_file(filled, tmp_path):
    out = tmp_path / "smoke.jsonl"
    export_results("smoke", out, filled)
    target = tmp_path / "b.sqlite"
    ResultStore(target).save("match-1", {**_match(1), "evidence": {"agreement": 0.9}})
    done = import_results(out, target)
    assert (done.matches, done.present, done.differing) == (2, 1, 1)
    assert ResultStore(target).get("match-1")["evidence"] == {"agreement": 0.9}


def test_a_calibration_position_taken_by_another_refuses_the_whole_file(filled, tmp_path):
    out = tmp_path / "smoke.jsonl"
    export_results("smoke", out, filled)
    target = tmp_path / "b.sqlite"
    CalibrationStore(target).save(_calibration("noise", mean=0.5))  # position 1, another null
    before = _rows(target)
    with pytest.raises(ArenaError, match="calibration 1 .* would replace"):
        import_results(out, target)
    assert _rows(target) == before  # nothing written, not even the matches


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: lines[:-1],  # a match line lost
        lambda lines: ["{not json"] + lines[1:],
        lambda lines: [json.dumps({"format": "other"})] + lines[1:],
        lambda lines: [json.dumps({**json.loads(lines[0]), "version": 99})] + lines[1:],
        lambda lines: [],
    ],
)
def test_a_damaged_file_is_refused_before_anything_is_written(filled, tmp_path, damage):
    out = tmp_path / "smoke.jsonl"
    export_results("smoke", out, filled)
    out.write_text("\n".join(damage(out.read_text().splitlines())) + "\n")
    target = tmp_path / "b.sqlite"
    with pytest.raises(ArenaError):
        import_results(out, target)
    assert not target.exists()  # refused before the database was even made


def test_a_file_of_another_protocol_version_is_refused(filled, tmp_path):
    out = tmp_path / "smoke.jsonl"
    export_results("smoke", out, filled)
    lines = out.read_text().splitlines()
    header = {**json.loads(lines[0]), "protocol_fingerprint": "0" * 64, "protocol_version": 0}
    out.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with pytest.raises(ArenaError, match="not of the smoke v"):
        import_results(out, tmp_path / "b.sqlite")


def test_the_commands_round_trip(filled, tmp_path):
    out = tmp_path / "smoke.jsonl"
    done = run_arena(
        "results",
        "export",
        "--protocol",
        "smoke",
        "--out",
        str(out),
        "--db",
        str(filled),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "3 matches and 2 calibrations of smoke" in done.stdout
    target = tmp_path / "b.sqlite"
    done = run_arena("results", "import", str(out), "--db", str(target), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported 3 matches and 2 calibrations" in done.stdout
    missing = tmp_path / "missing.jsonl"
    done = run_arena("results", "import", str(missing), "--db", str(target), home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {missing} does not exist"]
