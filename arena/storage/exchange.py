"""The stored results of one protocol as a JSON Lines file, and back.

``export_results`` writes every match of a protocol's current version and every
calibration of it, exactly as the database holds them (the records' own shape, their
positions and creation times), one JSON object a line, sorted so that two exports of the
same results are the same bytes and a later one differs from an earlier one only by its
new lines. ``import_results`` puts such a file into a results database: the published
records behind a leaderboard then re-render it on any machine, and a sweep resumes from
them instead of playing their matches again.

Nothing stored is ever replaced. A match already in the database stays as it is; a
calibration must keep its position, since match records name the calibration their null
came from, so a file whose calibration would land on a position the database gives to
another calibration is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.core.protocols import get_protocol
from arena.storage.calibrations import CalibrationStore
from arena.storage.results import ResultStore, connect, match_row
from arena.util.errors import ArenaError
from arena.util.files import os_error_reason

FORMAT = "arena-results"
VERSION = 1


@dataclass(frozen=True)
class Exported:
    matches: int
    calibrations: int


@dataclass(frozen=True)
class Imported:
    matches: int
    calibrations: int
    present: int  # matches the database held already (kept as they are)
    differing: int  # of those, the ones whose stored record differs from the file's


def export_results(protocol_name: str, out: Path, db: Path | str | None = None) -> Exported:
    """Write the matches and calibrations of ``protocol_name``'s current version to
    ``out`` (replaced atomically: a reader never sees half a file)."""
    protocol = get_protocol(protocol_name)
    store = ResultStore(db)
    CalibrationStore(store.path)  # the table, where a database has never calibrated
    with connect(store.path) as connection:
        matches = connection.execute(
            "SELECT match_id, record, created_at FROM matches WHERE protocol = ? AND "
            "protocol_version = ? ORDER BY match_id",
            (protocol.name, protocol.version),
        ).fetchall()
        calibrations = connection.execute(
            "SELECT position, defense, record, created_at FROM calibrations WHERE "
            "protocol_fingerprint = ? ORDER BY position",
            (protocol.fingerprint,),
        ).fetchall()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "protocol": protocol.name,
        "protocol_version": protocol.version,
        "protocol_fingerprint": protocol.fingerprint,
        "matches": len(matches),
        "calibrations": len(calibrations),
    }
    lines = [header]
    for position, defense, record, created_at in calibrations:
        lines.append(
            {
                "calibration": position,
                "defense": defense,
                "created_at": created_at,
                "record": json.loads(record),
            }
        )
    for match_id, record, created_at in matches:
        lines.append({"match": match_id, "created_at": created_at, "record": json.loads(record)})
    _write_lines(out, lines)
    return Exported(len(matches), len(calibrations))


def import_results(path: Path, db: Path | str | None = None) -> Imported:
    """Add the file's calibrations and matches to the database; refused, with nothing
    written, where the file is not an export or a calibration's position is taken."""
    header, calibrations, matches = _read(Path(path))
    protocol = get_protocol(header["protocol"])
    if header["protocol_fingerprint"] != protocol.fingerprint:
        raise ArenaError(
            f"{path} holds results of {protocol.name} v{header['protocol_version']} "
            f"(fingerprint {header['protocol_fingerprint'][:12]}), not of the "
            f"{protocol.name} v{protocol.version} this arena defines"
        )
    store = ResultStore(db)
    CalibrationStore(store.path)
    new_calibrations, new_matches, present, differing = [], [], 0, 0
    with connect(store.path) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for line in calibrations:
                row = connection.execute(
                    "SELECT defense, record FROM calibrations WHERE position = ?",
                    (line["calibration"],),
                ).fetchone()
                if row is None:
                    new_calibrations.append(line)
                elif row[0] != line["defense"] or json.loads(row[1]) != line["record"]:
                    raise ArenaError(
                        f"{path}: calibration {line['calibration']} ({line['defense']}) "
                        f"would replace this database's calibration {line['calibration']} "
                        f"({row[0]}), which stored matches may name; import into a new "
                        "database (--db) instead"
                    )
            for line in matches:
                row = connection.execute(
                    "SELECT record FROM matches WHERE match_id = ?", (line["match"],)
                ).fetchone()
                if row is None:
                    new_matches.append(line)
                else:
                    present += 1
                    differing += json.loads(row[0]) != line["record"]
            for line in new_calibrations:
                record = line["record"]
                connection.execute(
                    "INSERT INTO calibrations (position, protocol, protocol_fingerprint, "
                    "defense, record, created_at) VALUES (?,?,?,?,?,?)",
                    (
                        line["calibration"],
                        record["protocol"],
                        record["protocol_fingerprint"],
                        line["defense"],
                        json.dumps(record, sort_keys=True),
                        line["created_at"],
                    ),
                )
            for line in new_matches:
                _insert_match(connection, line)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return Imported(len(new_matches), len(new_calibrations), present, differing)


def _insert_match(connection: Any, line: dict[str, Any]) -> None:
    row = match_row(line["match"], line["record"], line["created_at"])
    connection.execute("INSERT INTO matches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)


def _read(path: Path) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """The header, the calibration lines and the match lines of an export, checked."""
    try:
        with path.open(encoding="utf-8") as stream:
            lines = [json.loads(text) for text in stream if text.strip()]
    except FileNotFoundError:
        raise ArenaError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArenaError(f"{path} is a folder, not a results file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArenaError(f"{path} is not a results file (JSON Lines): {error}") from None
    except OSError as error:
        raise ArenaError(f"cannot read {path}: {os_error_reason(error, path)}") from None
    header = lines[0] if lines else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArenaError(f"{path} is not a results file written by `arena results export`")
    if header.get("version") != VERSION:
        raise ArenaError(
            f"{path} is a results file of format version {header.get('version')}; this "
            f"arena reads version {VERSION}"
        )
    calibrations = [line for line in lines[1:] if isinstance(line, dict) and "calibration" in line]
    matches = [line for line in lines[1:] if isinstance(line, dict) and "match" in line]
    if (
        len(calibrations) + len(matches) != len(lines) - 1
        or len(calibrations) != header.get("calibrations")
        or len(matches) != header.get("matches")
    ):
        raise ArenaError(
            f"{path} is damaged: its header counts {header.get('matches')} matches and "
            f"{header.get('calibrations')} calibrations, its lines hold {len(matches)} and "
            f"{len(calibrations)} (and {len(lines) - 1 - len(matches) - len(calibrations)} "
            "others)"
        )
    for line in calibrations:
        record = line.get("record")
        if not isinstance(record, dict) or record.get("defense") != line.get("defense"):
            raise ArenaError(f"{path}: calibration {line.get('calibration')} is damaged")
    for line in matches:
        record = line.get("record")
        if not isinstance(record, dict) or record.get("protocol") != header.get("protocol"):
            raise ArenaError(f"{path}: match {line.get('match')} is damaged")
    return header, calibrations, matches


def _write_lines(out: Path, lines: list[dict[str, Any]]) -> None:
    out = Path(out)
    if not out.parent.is_dir():
        raise ArenaError(f"the folder of {out} does not exist; create it first")
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            for line in lines:
                stream.write(json.dumps(line, sort_keys=True) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
