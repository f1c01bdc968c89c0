"""The calibrated null: how often clean models agree with keys never embedded in them.

``1/|L|`` is exact only while a key's labels are uniform and independent of every
model. ``calibrate`` measures it: it trains (or loads from the artifact cache) clean
reference models of the protocol, independently seeded and of several architectures,
counts their agreement with many fresh keys of a scheme, and stores the pooled rate
with its Clopper-Pearson upper bound. Verification then uses
``null_p = max(nominal, upper bound)`` and says which one won.

The same run measures what a reviewer asks next, on held-out clean models that the
calibration never saw:

- the false-positive rate: fresh keys verified against models never marked with them,
  at the protocol's alpha, with its confidence interval (non-trivial ownership);
- the public label check (``arena.public``): how many honest keys it rejects, and
  whether it rejects keys of in-distribution images with their true labels, which the
  held-out models would otherwise "verify".

Pooling treats every (model, trigger) answer as an independent trial. The answers of
one model to one key are not independent of each other (the same weights answer all),
so the interval is narrower than the true uncertainty; the false-positive measurement
on held-out models is the check that the resulting test still holds its level.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena import __version__
from arena.clean import artifact_base, clean_model
from arena.context import Context, default_device, derive_seed
from arena.errors import ArenaError
from arena.keys import TriggerKey
from arena.plugin import Defense
from arena.progress import Reporter, silent
from arena.protocols import Protocol
from arena.public import label_check
from arena.registry import defenses
from arena.stats import Evidence, clopper_pearson
from arena.store import ArtifactCache, ResultStore, connect, create_tables
from arena.training import accuracy

# Reference model i is the clean model of seed REFERENCE_SEED + i: far from match seeds.
REFERENCE_SEED = 1_000_000

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


@dataclass(frozen=True)
class ReferenceModel:
    """One clean model of the protocol: an architecture and a seed."""

    index: int
    architecture: str
    role: str  # "calibration" or "held-out"

    @property
    def seed(self) -> int:
        return REFERENCE_SEED + self.index

    def context(self, protocol: Protocol, device: torch.device, progress: Reporter) -> Context:
        return Context(
            protocol=protocol.with_model(self.architecture),
            seed=self.seed,
            device=device,
            progress=progress,
        )

    def load(
        self,
        protocol: Protocol,
        cache: ArtifactCache,
        device: torch.device,
        progress: Reporter = silent,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train it, or load it from the cache, exactly as a match's clean model."""
        model, meta, _ = clean_model(self.context(protocol, device, progress), cache)
        return model, meta

    def cached(self, protocol: Protocol, cache: ArtifactCache, device: torch.device) -> nn.Module:
        """Load it from the cache; never train (a verifier does not train 20 models)."""
        ctx = self.context(protocol, device, silent)
        model = ctx.owner_model()
        folder = cache.folder("clean", artifact_base(ctx.protocol, ctx.seed))
        if cache.load_model(folder, model) is None:
            raise ArenaError(
                f"reference model {self.index} ({self.architecture}, seed {self.seed}) is not "
                f"in the cache {cache.root}; run arena calibrate --protocol {protocol.name} "
                "with the same cache"
            )
        return model


def reference_set(
    protocol: Protocol, models: int, held_out: int, architectures: tuple[str, ...] = ()
) -> list[ReferenceModel]:
    """``models`` calibration models then ``held_out`` more, architectures round robin."""
    architectures = architectures or protocol.reference_models or (protocol.model,)
    if models < 1:
        raise ArenaError(f"calibration needs at least one model, got {models}")
    if held_out < 0:
        raise ArenaError(f"the number of held-out models cannot be negative, got {held_out}")
    if len(set(architectures)) < 2:
        raise ArenaError(
            f"calibration needs clean models of at least two architectures, got "
            f"{', '.join(architectures)}"
        )
    return [
        ReferenceModel(
            index,
            architectures[index % len(architectures)],
            "calibration" if index < models else "held-out",
        )
        for index in range(models + held_out)
    ]


def reference_models(
    protocol: Protocol,
    defense: str,
    store: CalibrationStore,
    cache: ArtifactCache | None = None,
    device: torch.device | None = None,
) -> list[nn.Module]:
    """The clean models of the newest calibration of ``defense`` on ``protocol``."""
    record = store.latest(protocol, defense)
    if record is None:
        raise ArenaError(
            f"public verification needs clean reference models of {protocol.label}: run "
            f"arena calibrate --protocol {protocol.name} --defense {defense}"
        )
    cache = cache or ArtifactCache()
    device = device or default_device()
    return [
        ReferenceModel(row["index"], row["architecture"], "calibration").cached(
            protocol, cache, device
        )
        for row in record["models"]
    ]


@dataclass(frozen=True)
class Null:
    """The chance agreement a verification tests against, and where it came from.

    ``p`` None means the scheme's own nominal null (1/|L|, 0.5 for bits) stands alone.
    """

    p: float | None
    source: str
    calibration: int | None = None  # the calibration's position in the store

    def apply(self, evidence: Evidence) -> Evidence:
        """``evidence`` tested against this null, never below the scheme's own."""
        if self.p is None or self.p <= evidence.null_p:
            return evidence
        return dataclasses.replace(evidence, null_p=self.p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(defense: Defense, model: nn.Module, key: Any, ctx: Context, null: Null) -> Evidence:
    """The one verification path of matches, ``arena verify`` and calibration: the
    scheme's evidence, tested against ``null``."""
    return null.apply(defense.evidence(model, key, ctx))


class CalibrationStore:
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

    def null(self, protocol: Protocol, defense: str) -> Null:
        """The newest calibration of ``defense`` on ``protocol``, as the null to test against."""
        record = self.latest(protocol, defense)
        if record is None:
            return Null(
                None,
                f"the scheme's nominal null; {defense} is not calibrated on {protocol.label} "
                f"(arena calibrate --protocol {protocol.name} --defense {defense})",
            )
        null = record["null"]
        described = (
            f"Clopper-Pearson {null['confidence']:.0%} upper bound of {null['successes']} / "
            f"{null['trials']} answers of {len(record['models'])} clean models, "
            f"calibration {record['position']}"
        )
        if null["upper"] > null["nominal"]:
            return Null(null["upper"], f"calibrated: {described}", record["position"])
        return Null(
            None,
            f"nominal: it is above the {described} ({null['upper']:.3g})",
            record["position"],
        )


def calibrate(
    protocol: Protocol,
    defense_name: str = "backdoor-wm",
    *,
    models: int = 20,
    held_out: int = 10,
    keys: int = 50,
    held_out_keys: int = 100,
    in_distribution_keys: int = 20,
    confidence: float = 0.99,
    architectures: tuple[str, ...] = (),
    db: Path | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Measure the null and the false-positive rate; store and return the record."""
    defense: Defense = defenses.get(defense_name)()
    references = reference_set(protocol, models, held_out, architectures)
    if keys < 1 or held_out_keys < 0 or in_distribution_keys < 0:
        raise ArenaError("the numbers of keys must be positive")
    store = CalibrationStore(db)
    cache = cache or ArtifactCache()
    device = device or default_device()
    started = time.perf_counter()
    base = Context(protocol=protocol, device=device, progress=progress)
    owner = Context(protocol=protocol, seed=0, device=device, progress=progress)
    # Model-dependent keys (frontier stitching) are drawn from the owner's clean model of
    # seed 0, the one the leaderboard's matches mark.
    base.clean_provider = functools.cache(lambda: clean_model(owner, cache)[0])
    test = base.splits.test

    if defense.access == "white-box":
        # White-box evidence reads one layer of the protocol's architecture: a model of
        # another architecture has no such layer, and its 0 bits are no agreement.
        references = [r for r in references if r.architecture == protocol.model]
    loaded: list[tuple[ReferenceModel, nn.Module, dict[str, Any]]] = []
    for position, reference in enumerate(references, start=1):
        progress.log(
            f"reference model {position} of {len(references)}: "
            f"{reference.architecture}, seed {reference.seed} ({reference.role})"
        )
        model, meta = reference.load(protocol, cache, device, progress)
        meta = {**meta, "test_acc": accuracy(model, test.images, test.labels, device)}
        loaded.append((reference, model, meta))
    calibration = [(r, m, meta) for r, m, meta in loaded if r.role == "calibration"]
    holdout = [(r, m, meta) for r, m, meta in loaded if r.role == "held-out"]
    if not calibration:
        raise ArenaError(
            f"no calibration model of {protocol.model}, the architecture {defense.name} reads"
        )

    def fresh_keys(purpose: str, count: int) -> list[Any]:
        return [
            defense.keygen(dataclasses.replace(base, seed=derive_seed(index, purpose)))
            for index in range(count)
        ]

    # The null: pooled agreement of the calibration models with fresh keys.
    progress.log(f"null: {len(calibration)} models x {keys} fresh keys")
    null_keys = fresh_keys("calibration-key", keys)
    per_model = []
    for reference, model, meta in calibration:
        agreed = [defense.evidence(model, key, base) for key in null_keys]
        per_model.append(_model_row(reference, meta, agreed))
    nominal = agreed[0].null_p  # the scheme's own null: 1/|L|, or 0.5 for bits
    successes = sum(row["successes"] for row in per_model)
    trials = sum(row["trials"] for row in per_model)
    low, high = clopper_pearson(successes, trials, confidence)
    null = Null(high, "calibrated" if high > nominal else "nominal")
    record: dict[str, Any] = {
        "protocol": protocol.name,
        "protocol_version": protocol.version,
        "protocol_fingerprint": protocol.fingerprint,
        "defense": defense.name,
        "defense_params": defense.params_dict(),
        "alpha": protocol.alpha,
        "models": per_model,
        "null": {
            "successes": successes,
            "trials": trials,
            "rate": successes / trials if trials else 0.0,
            "lower": low,
            "upper": high,
            "confidence": confidence,
            "nominal": nominal,
            "p": max(nominal, high),
            "source": null.source,
        },
    }

    # False positives: fresh keys against held-out models, at the calibrated null.
    if holdout and held_out_keys:
        progress.log(f"false positives: {len(holdout)} held-out models x {held_out_keys} keys")
        fpr_keys = fresh_keys("held-out-key", held_out_keys)
        rows = []
        outcomes: list[Evidence] = []
        for reference, model, meta in holdout:
            agreed = [measure(defense, model, key, base, null) for key in fpr_keys]
            outcomes += agreed
            rows.append({**_model_row(reference, meta, agreed), "verified": _count(agreed)})
        record["held_out"] = rows
        record["false_positives"] = _rate(outcomes, "verified")
        record["false_positives_nominal"] = _rate(
            [dataclasses.replace(e, null_p=nominal) for e in outcomes], "verified"
        )
        if isinstance(fpr_keys[0], TriggerKey):
            references_only = [model for _, model, _ in calibration]
            checks = [
                label_check(key.images, key.labels, references_only, protocol, device)
                for key in fpr_keys
            ]
            record["label_check_honest"] = {
                "keys": len(checks),
                "rejected": sum(not check.passed for check in checks),
            }
            if in_distribution_keys:
                record["in_distribution"] = _in_distribution(
                    defense, base, test, in_distribution_keys, references_only, holdout, null
                )
    record["seconds"] = time.perf_counter() - started
    record["arena"] = __version__
    record["created_at"] = time.time()
    record["position"] = store.save(record)
    return record


def _in_distribution(
    defense: Defense,
    ctx: Context,
    test: Any,
    count: int,
    references: list[nn.Module],
    holdout: list[tuple[ReferenceModel, nn.Module, dict[str, Any]]],
    null: Null,
) -> dict[str, Any]:
    """Keys of real test images with their true labels: the label check must reject them,
    although clean models "verify" them."""
    rng = np.random.default_rng(derive_seed(0, "in-distribution-key"))
    size = min(ctx.protocol.trigger_size, len(test))
    rejected = 0
    outcomes: list[Evidence] = []
    for _ in range(count):
        chosen = rng.choice(len(test), size=size, replace=False)
        images = (test.images[chosen] * 255).round().to(torch.uint8).numpy()
        labels = test.labels[chosen].numpy()
        key = TriggerKey.create(defense.name, ctx.num_classes, images, labels)
        rejected += not label_check(images, labels, references, ctx.protocol, ctx.device).passed
        outcomes += [measure(defense, model, key, ctx, null) for _, model, _ in holdout]
    return {
        "keys": count,
        "triggers": size,
        "rejected_by_label_check": rejected,
        "held_out_claims": _rate(outcomes, "verified"),
        "held_out_agreement": sum(e.successes for e in outcomes)
        / max(1, sum(e.trials for e in outcomes)),
    }


def _model_row(
    reference: ReferenceModel, meta: dict[str, Any], agreed: list[Evidence]
) -> dict[str, Any]:
    successes = sum(e.successes for e in agreed)
    trials = sum(e.trials for e in agreed)
    return {
        "index": reference.index,
        "architecture": reference.architecture,
        "seed": reference.seed,
        "test_acc": meta["test_acc"],
        "train_seconds": meta.get("seconds"),
        "keys": len(agreed),
        "successes": successes,
        "trials": trials,
        "rate": successes / trials if trials else 0.0,
        "max_agreement": max((e.successes for e in agreed), default=0),
    }


def _count(outcomes: list[Evidence]) -> int:
    return sum(e.verified for e in outcomes)


def _rate(outcomes: list[Evidence], what: str) -> dict[str, Any]:
    hits = _count(outcomes)
    low, high = clopper_pearson(hits, len(outcomes))
    return {
        "pairs": len(outcomes),
        what: hits,
        "rate": hits / len(outcomes) if outcomes else 0.0,
        "ci95": [low, high],
        "alpha": outcomes[0].alpha if outcomes else None,
        "null_p": outcomes[0].null_p if outcomes else None,
    }


def to_markdown(record: dict[str, Any]) -> str:
    """The calibration as a README-ready report."""
    null = record["null"]
    lines = [
        f"Calibration of `{record['defense']}` on `{record['protocol']}` "
        f"v{record['protocol_version']} (alpha {record['alpha']:g})",
        "",
        "| model | architecture | seed | role | test acc | agreement with fresh keys | "
        "most triggers one key got | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role, rows in (("calibration", record["models"]), ("held-out", record.get("held_out", []))):
        for row in rows:
            verified = f"{row['verified']} of {row['keys']}" if "verified" in row else ""
            lines.append(
                f"| {row['index']} | {row['architecture']} | {row['seed']} | {role} | "
                f"{row['test_acc']:.3f} | {row['successes']}/{row['trials']} "
                f"({row['rate']:.4f}) | {row['max_agreement']} | {verified} |"
            )
    lines += [
        "",
        f"- Null agreement: {null['successes']}/{null['trials']} = {null['rate']:.4f}; "
        f"Clopper-Pearson {null['confidence']:.0%} interval [{null['lower']:.4f}, "
        f"{null['upper']:.4f}]; the scheme's nominal null {null['nominal']:.4f}. Verification uses "
        f"null p = {null['p']:.4f} ({null['source']}).",
    ]
    for name, title in (
        ("false_positives", "at the calibrated null"),
        ("false_positives_nominal", "at the scheme's nominal null"),
    ):
        if name in record:
            fp = record[name]
            lines.append(
                f"- False positives {title}: {fp['verified']} of {fp['pairs']} key-model pairs "
                f"verified = {fp['rate']:.2e} (95% CI [{fp['ci95'][0]:.2e}, "
                f"{fp['ci95'][1]:.2e}]), nominal alpha {fp['alpha']:g}."
            )
    if "label_check_honest" in record:
        honest = record["label_check_honest"]
        lines.append(
            f"- Public label check on honest keys: {honest['rejected']} of {honest['keys']} "
            "rejected."
        )
    if "in_distribution" in record:
        inside = record["in_distribution"]
        claims = inside["held_out_claims"]
        lines.append(
            f"- In-distribution keys ({inside['triggers']} test images with their true "
            f"labels): {inside['rejected_by_label_check']} of {inside['keys']} rejected by the "
            f"label check; without it they would claim {claims['verified']} of "
            f"{claims['pairs']} held-out clean models (agreement "
            f"{inside['held_out_agreement']:.3f})."
        )
    lines.append(f"- {record['seconds']:.0f} s, calibration {record['position']} in the store.")
    return "\n".join(lines)
