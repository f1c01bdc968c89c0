"""Calibration records in the results database, and the null each one gives a scheme
(exact, fitted, uncalibrated or refuted).
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from arena.core.protocols import Protocol
from arena.core.registry import defenses
from arena.core.verify import Null
from arena.storage.results import ResultStore, connect, create_tables

# Calibration record format: 2 is the per-scheme null (exact or beta-binomial).
RECORD_FORMAT = 2


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    position INTEGER PRIMARY KEY,
    protocol TEXT NOT NULL,
    protocol_fingerprint TEXT NOT NULL,
    defense TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class _Nulls(abc.ABC):
    """The null a scheme's evidence is tested against, from its newest calibration:
    what the store and a snapshot of it share."""

    @abc.abstractmethod
    def latest(self, protocol: Protocol, defense: str) -> dict[str, Any] | None:
        """The newest calibration record of ``defense`` on ``protocol``, or None."""

    def null(self, protocol: Protocol, defense: str) -> Null:
        """The null ``defense``'s evidence is tested against on ``protocol``."""
        scheme = defenses.get(defense)
        if scheme.exact_null:
            return Null(
                "exact",
                f"exact: {scheme.exact_null_reason}"
                if scheme.exact_null_reason
                else f"exact: {defense}'s labels are drawn uniformly and independently of "
                "every model, so chance agreement is exactly the scheme's nominal rate",
            )
        record = self.latest(protocol, defense)
        command = f"arena calibrate --protocol {protocol.name} --defense {defense}"
        if record is None or record.get("format") != RECORD_FORMAT:
            return Null(
                "uncalibrated",
                f"UNCALIBRATED: {defense}'s labels are not uniform, so its nominal null is "
                f"not sound and clean models can be claimed; run {command}",
            )
        fitted = record["null"]
        reference = record["models"]
        architectures = len({row["architecture"] for row in reference})
        source = (
            f"beta-binomial fitted to {fitted['counts']} (model, key) counts of "
            f"{len(reference)} clean reference models ({architectures} architectures), "
            f"calibration {record['position']}"
        )
        refuted = refutation(record)
        if refuted:
            source = (
                f"REFUTED: the {source} {refuted}, so {defense}'s verdicts on "
                f"{protocol.name} would claim clean models; widen the reference set "
                f"(--reference) and run {command}"
            )
        return Null(
            "refuted" if refuted else "beta-binomial",
            source,
            p=fitted["mean"],
            dispersion=fitted["dispersion"],
            calibration=record["position"],
            smallest_p_value=fitted["smallest_p_value"],
        )


class CalibrationStore(_Nulls):
    """Calibration records in the results database; the newest one per protocol and scheme wins."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = ResultStore(path).path
        create_tables(self.path, _SCHEMA, "results database")

    def save(self, record: dict[str, Any]) -> int:
        with connect(self.path) as connection:
            cursor = connection.execute(
                "INSERT INTO calibrations (protocol, protocol_fingerprint, defense, record, "
                "created_at) VALUES (?,?,?,?,?)",
                (
                    record["protocol"],
                    record["protocol_fingerprint"],
                    record["defense"],
                    json.dumps(record, sort_keys=True),
                    time.time(),
                ),
            )
            return int(cursor.lastrowid)

    def latest(self, protocol: Protocol, defense: str) -> dict[str, Any] | None:
        with connect(self.path) as connection:
            row = connection.execute(
                "SELECT position, record FROM calibrations WHERE protocol_fingerprint = ? "
                "AND defense = ? ORDER BY position DESC LIMIT 1",
                (protocol.fingerprint, defense),
            ).fetchone()
        if row is None:
            return None
        return {**json.loads(row[1]), "position": row[0]}

    def snapshot(self, pairs: Iterable[tuple[Protocol, str]]) -> CalibrationSnapshot:
        """The newest calibration of every (protocol, scheme) in ``pairs``, read now: what
        a sweep's workers decide with, so that they never open the database."""
        found = {}
        for protocol, defense in pairs:
            record = self.latest(protocol, defense)
            if record is not None:
                found[(protocol.fingerprint, defense)] = record
        return CalibrationSnapshot(found)


class CalibrationSnapshot(_Nulls):
    """Calibration records read from a store once (``CalibrationStore.snapshot``); the
    (protocol fingerprint, scheme) pairs it was not given have none."""

    def __init__(self, records: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.records = records

    def latest(self, protocol: Protocol, defense: str) -> dict[str, Any] | None:
        return self.records.get((protocol.fingerprint, defense))


def refutation(record: dict[str, Any]) -> str | None:
    """Why the calibration's own false-claim measurements refute its fitted null (the
    lower end of the 95% interval of some measured rate lies above alpha), or None."""
    for role in ("foreign", "reference"):
        rate = record.get("false_claims", {}).get(role)
        if rate and rate["ci95"][0] > record["alpha"]:
            return (
                f"claimed {rate['claimed']:,} of {rate['pairs']:,} (key, {role} clean model) "
                f"pairs it never saw (95% CI {100 * rate['ci95'][0]:.2f}-"
                f"{100 * rate['ci95'][1]:.2f}%, alpha {100 * record['alpha']:g}%)"
            )
    return None
