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


def calibrated_params(record: dict[str, Any]) -> dict[str, Any]:
    """The scheme's parameters a calibration was made with, in full: those it recorded
    over the plugin's defaults (records made before parameters were recorded were made
    at the defaults). A parameter the plugin no longer declares is dropped."""
    defaults = defenses.get(record["defense"])().params_dict()
    recorded = record.get("defense_params") or {}
    return {**defaults, **{k: v for k, v in recorded.items() if k in defaults}}


def params_key(defense: str, params: dict[str, Any]) -> str:
    """What of a scheme's parameters (in full) a calibration holds for: all but those
    that only change the marking (``Defense.marking_params``)."""
    kept = defenses.get(defense).marking_params
    return json.dumps(
        {name: value for name, value in params.items() if name not in kept},
        sort_keys=True,
        default=str,
    )


class _Nulls(abc.ABC):
    """The null a scheme's evidence is tested against, from its newest calibration with
    the scheme's parameters: what the store and a snapshot of it share.

    A fitted null holds for the keys of the parameters it was fitted with: another target
    class, patch or trigger count draws other keys, whose agreement with clean models the
    calibration never measured. So a scheme configured away from its defaults is
    calibrated on its own (``arena calibrate -D``) or has no sound null.
    """

    @abc.abstractmethod
    def latest(
        self, protocol: Protocol, defense: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The newest calibration record of ``defense`` with ``params`` (in full; None:
        the plugin's defaults) on ``protocol``, or None."""

    def null(self, protocol: Protocol, defense: str, params: dict[str, Any] | None = None) -> Null:
        """The null ``defense`` (with ``params``; None: its defaults) is tested against
        on ``protocol``."""
        scheme = defenses.get(defense)
        if scheme.exact_null:
            return Null(
                "exact",
                f"exact: {scheme.exact_null_reason}"
                if scheme.exact_null_reason
                else f"exact: {defense}'s labels are drawn uniformly and independently of "
                "every model, so chance agreement is exactly the scheme's nominal rate",
            )
        params = scheme(params).params_dict()
        record = self.latest(protocol, defense, params)
        command = f"arena calibrate --protocol {protocol.name} --defense {defense}" + "".join(
            f" -D {name}={value}"
            for name, value in params.items()
            if value != scheme().params_dict()[name] and name not in scheme.marking_params
        )
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

    def latest(
        self, protocol: Protocol, defense: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        wanted = params_key(defense, defenses.get(defense)(params).params_dict())
        with connect(self.path) as connection:
            rows = connection.execute(
                "SELECT position, record FROM calibrations WHERE protocol_fingerprint = ? "
                "AND defense = ? ORDER BY position DESC",
                (protocol.fingerprint, defense),
            )
            for position, text in rows:
                record = {**json.loads(text), "position": position}
                if params_key(defense, calibrated_params(record)) == wanted:
                    return record
        return None

    def snapshot(
        self, pairs: Iterable[tuple[Protocol, str, dict[str, Any] | None]]
    ) -> CalibrationSnapshot:
        """The newest calibration of every (protocol, scheme, parameters) in ``pairs``,
        read now: what a sweep's workers decide with, so that they never open the
        database."""
        found = {}
        for protocol, defense, params in pairs:
            full = defenses.get(defense)(params).params_dict()
            record = self.latest(protocol, defense, full)
            if record is not None:
                found[(protocol.fingerprint, defense, params_key(defense, full))] = record
        return CalibrationSnapshot(found)


class CalibrationSnapshot(_Nulls):
    """Calibration records read from a store once (``CalibrationStore.snapshot``); the
    (protocol fingerprint, scheme, parameters) it was not given have none."""

    def __init__(self, records: dict[tuple[str, str, str], dict[str, Any]]) -> None:
        self.records = records

    def latest(
        self, protocol: Protocol, defense: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        full = defenses.get(defense)(params).params_dict()
        return self.records.get((protocol.fingerprint, defense, params_key(defense, full)))


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
