"""The typed match record: its JSON round trip, the upgrade of older stored rows, and what
the leaderboard makes of records (numbers in its JSON, packages and variants kept apart)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json

import pytest
from rich.console import Console

from arena.core.protocols import get_protocol
from arena.eval.leaderboard import build
from arena.report.leaderboard import rich_tables, to_markdown, write
from arena.storage.record import RECORD_VERSION, MatchRecord, load, upgrade
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from tests.record_schema import sample_record

SMOKE = get_protocol("smoke")


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results.sqlite")


def test_a_record_survives_json_and_the_store_unchanged(store):
    record = sample_record()
    data = record.to_dict()
    assert data["record_version"] == RECORD_VERSION and "replay_seconds" not in data
    assert MatchRecord.from_dict(json.loads(json.dumps(data))) == record
    store.save("m", record)
    assert store.match("m") == record
    assert store.get("m") == data
    assert store.matches("smoke") == [record] and store.records("smoke") == [data]


def test_the_current_shape_is_read_strictly():
    data = sample_record().to_dict()
    del data["attacked"]["architecture"]
    with pytest.raises(KeyError):
        MatchRecord.from_dict(data)
    with pytest.raises(ArenaError, match="malformed: no field 'architecture'"):
        load(data)
    with pytest.raises(ArenaError, match="load it through"):
        MatchRecord.from_dict({**sample_record().to_dict(), "record_version": 1})


def _version_1(record: MatchRecord) -> dict:
    """``record`` as the earliest stored rows held it: no version, kind of null, packages,
    attack cost, threat, access, architecture, filter, claim, dispersion or needed count."""
    raw = copy.deepcopy(record.to_dict())
    for name in ("record_version", "threat", "defense_access", "attack_seconds", "claim"):
        del raw[name]
    del raw["attack_info"]
    raw["null"] = {"p": 0.1, "source": "pooled calibration 1", "calibration": 1}
    for name in ("defense_package", "attack_package"):
        del raw["versions"][name]
    del raw["certificate"], raw["other_user"]
    for name in (
        "architecture",
        "owner_head_evidence",
        "detector",
        "weight_change",
        "certificate_check",
    ):
        del raw["attacked"][name]
    for part in ("clean", "marked", "attacked"):
        for name in ("null_dispersion", "required_successes", "applicable"):
            del raw[part]["evidence"][name]
    return raw


def test_an_older_row_loads_through_the_one_upgrade(store):
    record = sample_record()
    raw = _version_1(record)
    before = copy.deepcopy(raw)
    upgraded = upgrade(raw)
    assert raw == before  # the stored row itself is not changed
    typed = load(raw)
    assert typed.threat == "removal" and typed.defense_access == "black-box"
    assert typed.attack_seconds == record.seconds["attack"] and typed.attack_info == {}
    assert typed.attacked.architecture == record.model and typed.claim is None
    assert typed.attacked.owner_head_evidence is None and typed.attacked.detector is None
    assert (typed.versions.defense_package, typed.versions.attack_package) == (None, None)
    # The null its evidence was tested against: the pooled calibration's p, which equals
    # the evidence's null p; without a stored null, the scheme's nominal one.
    assert (typed.null.kind, typed.null.p, typed.null.calibration) == ("pooled", 0.1, 1)
    del raw["null"]
    assert load(raw).null.kind == "nominal"
    for part in ("clean", "marked", "attacked"):
        evidence = getattr(typed, part).evidence
        assert evidence.null_dispersion == 0.0 and evidence.applicable
        assert evidence.required_successes is None
        assert (evidence.successes, evidence.p_value) == (
            getattr(record, part).evidence.successes,
            getattr(record, part).evidence.p_value,
        )
    assert upgrade(upgraded) == upgraded  # the current shape is left as it is
    # Through the store: the leaderboard reads the old row, and says which null it was.
    store.save("old", before)
    (row,) = build(store, SMOKE).matches
    assert (row.null.kind, row.attacked_evidence.successes) == ("pooled", 15)
    assert "0.1 (pooled, superseded)" in to_markdown(build(store, SMOKE))


def test_a_version_2_row_reads_with_no_weight_change_and_no_certificate():
    raw = sample_record().to_dict()
    raw["record_version"] = 2
    del raw["certificate"], raw["other_user"]
    del raw["attacked"]["weight_change"], raw["attacked"]["certificate_check"]
    typed = load(raw)
    assert typed.certificate is None and typed.other_user is None
    assert typed.attacked.weight_change is None and typed.attacked.certificate_check is None
    assert typed.to_dict() == {**sample_record().to_dict()}


def test_a_record_of_a_newer_arena_is_refused():
    with pytest.raises(ArenaError, match="upgrade the arena"):
        upgrade({**sample_record().to_dict(), "record_version": RECORD_VERSION + 1})


def _numbers_only(value, where="") -> list[str]:
    """Every string in ``value`` that spells a count or a verdict, as a leaderboard cell."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _numbers_only(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [bad for v in value for bad in _numbers_only(v, where)]
    if isinstance(value, str) and ("/" in value or "verified" in value or "(p " in value):
        return [f"{where}: {value!r}"]
    return []


def test_the_leaderboard_json_holds_numbers(store, tmp_path):
    store.save("a", sample_record(0, 15))
    store.save("b", sample_record(1, 3))
    _, data_file = write(build(store, SMOKE), tmp_path / "boards")
    data = json.loads(data_file.read_text())
    (match,) = data["matches"]
    evidence = match["attacked_evidence"]
    assert (evidence["successes"], evidence["trials"], evidence["verified"]) == (15, 20, True)
    assert isinstance(evidence["p_value"], float) and match["attacked_verified"] == 1
    assert (match["attack_succeeded"], match["seeds"]) == (1, [0, 1])
    assert match["marked_acc"] == 0.9 and match["null"]["kind"] == "exact"
    (defense,) = data["defenses"]
    assert defense["marked_evidence"]["successes"] == 20 and defense["survived"] == 0
    # The verdict's reason is prose by design, in the cell and in every seed's brief.
    assert [
        bad
        for bad in _numbers_only(match)
        if not bad.startswith((".outcome:", ".per_seed.outcome:"))
    ] == []
    assert [s["attacked_evidence"]["successes"] for s in match["per_seed"]] == [15, 3]
    assert _numbers_only(defense) == []


def test_one_plugin_name_from_two_packages_is_two_rows(store):
    store.save("ours", sample_record(0, 15))
    store.save("theirs", sample_record(0, 2, attack_package="other-attacks 2.0"))
    board = build(store, SMOKE)
    rows = {(row.attack, row.attack_package): row for row in board.matches}
    assert set(rows) == {("ftal", "watermark-arena"), ("ftal", "other-attacks")}
    assert rows["ftal", "other-attacks"].attack_succeeded == 1
    assert rows["ftal", "watermark-arena"].attack_succeeded == 0
    assert board.superseded == 0
    markdown = to_markdown(board)
    assert "| backdoor-wm | ftal | 1 |" in markdown
    assert "| backdoor-wm | ftal (from other-attacks) | 1 |" in markdown


def test_parameter_variants_are_distinguishable_in_the_terminal(store):
    store.save("default", sample_record(0, 15))
    store.save("variant", sample_record(0, 2, attack_params={"lr": 0.5}))
    tables = rich_tables(build(store, SMOKE))
    console = Console(width=200, record=True, file=io.StringIO())
    for table in tables:
        console.print(table)
    cells = [line.split("│") for line in console.export_text().splitlines()]
    rows = [row for row in cells if len(row) > 3 and row[1].strip() == "backdoor-wm"]
    attacks = sorted(row[2].strip() for row in rows)
    # "[lr=0.5]" is text, not console markup that would swallow it.
    assert attacks == ["ftal", "ftal [lr=0.5]"], rows
    # A cell too long for a narrow terminal folds onto more lines; none is cut short.
    narrow = Console(width=80, record=True, file=io.StringIO())
    for table in tables:
        narrow.print(table)
    assert "…" not in narrow.export_text()


def test_what_a_replay_says_of_itself_is_not_stored(store):
    replayed = dataclasses.replace(sample_record(), replay_seconds=0.5)
    assert replayed.to_dict()["replay_seconds"] == 0.5
    store.save("m", replayed)
    assert store.match("m") == sample_record()
