"""The null of every scheme, and false claims measured where the calibration never looked.

Which null a verification tests against depends on the scheme (``Defense.exact_null``):

- Labels (or bits) drawn uniformly and independently of every model: a model never
  marked with the key agrees with each with probability exactly 1/|L| (0.5 for bits),
  whatever the model is, so ``Binomial(n, 1/|L|)`` is exact and nothing is fitted.
- Labels that are not (one shared target class, true labels): clean models differ from
  each other in how often they give those labels, so a pooled binomial understates the
  spread. ``calibrate`` trains clean *reference* models of several architectures and
  training recipes, counts their agreement with many fresh keys, and fits a
  beta-binomial to the per-(model, key) counts; the p-value is its upper tail. Its
  smallest p-value, P[K = n], says whether the scheme can reach alpha at all with the
  reference models available. Without a calibration such a scheme has no sound null.
  A fitted null is only as good as the reference set is varied: when the clean models
  the fit never saw (foreign ones above all) are claimed more often than alpha, beyond
  the 95% interval of the measured rate, the null is *refuted* and gives no verdicts
  (``Null.sound`` is False) until a wider reference set is calibrated.

The same run measures what a reviewer asks next, on *foreign* clean models of
architectures the reference set does not contain (and, as degenerate cases, models
whose training diverged or barely started):

- the false-claim rate: fresh keys verified against models never marked with them, at
  the protocol's alpha, with its Clopper-Pearson interval; the same on the reference
  models, with keys the fit never saw;
- the public label check (``arena.public``): how many honest keys it rejects, and
  whether it rejects keys of in-distribution images with their true labels, which clean
  models would otherwise "verify".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from arena import __version__
from arena.clean import artifact_base, clean_model, train_clean
from arena.context import Context, default_device, derive_seed
from arena.environment import environment
from arena.errors import ArenaError
from arena.keys import TriggerKey
from arena.models import check_model_name
from arena.plugin import Defense
from arena.progress import Reporter, silent
from arena.protocols import Protocol, Recipe, parse_reference
from arena.public import label_check
from arena.registry import defenses
from arena.stats import Evidence, clopper_pearson, fit_beta_binomial, null_p_value
from arena.store import ArtifactCache, ResultStore, check_writable, connect, create_tables
from arena.training import accuracy

# Bounds on a calibration's size, far above any real one: checked before anything trains.
MAX_MODELS = 1_000
MAX_KEYS = 100_000
# Reference model i is trained with seed REFERENCE_SEED + i, foreign model i with
# FOREIGN_SEED + i: far from match seeds and from each other.
REFERENCE_SEED = 1_000_000
FOREIGN_SEED = 2_000_000
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

Role = Literal["reference", "foreign"]


@dataclass(frozen=True)
class ReferenceModel:
    """One clean model of the protocol: an architecture, a training recipe and a seed."""

    index: int
    architecture: str
    recipe: Recipe
    role: Role

    @property
    def seed(self) -> int:
        return (REFERENCE_SEED if self.role == "reference" else FOREIGN_SEED) + self.index

    @property
    def name(self) -> str:
        return f"{self.architecture}@{self.recipe.name}"

    def context(self, protocol: Protocol, device: torch.device, progress: Reporter) -> Context:
        return Context(
            protocol=protocol.with_model(self.architecture),
            seed=self.seed,
            device=device,
            progress=progress,
        )

    def _folder(self, ctx: Context, cache: ArtifactCache) -> Path:
        base = artifact_base(ctx.protocol, ctx.seed)
        if self.recipe.name == "protocol":
            return cache.folder("clean", base)  # exactly a match's clean model
        return cache.folder("clean", {**base, "recipe": self.recipe.to_dict()})

    def load(
        self,
        protocol: Protocol,
        cache: ArtifactCache,
        device: torch.device,
        progress: Reporter = silent,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train it, or load it from the cache (the protocol's recipe: a match's clean model)."""
        ctx = self.context(protocol, device, progress)
        if self.recipe.name == "protocol":
            model, meta, _ = clean_model(ctx, cache)
            return model, meta
        base = artifact_base(ctx.protocol, ctx.seed)
        model, meta, _ = cache.model(
            self._folder(ctx, cache),
            build=ctx.owner_model,
            train=lambda model: _train_recipe(model, ctx, self.recipe),
            spec={**base, "recipe": self.recipe.to_dict()},
        )
        return model, meta

    def cached(self, protocol: Protocol, cache: ArtifactCache, device: torch.device) -> nn.Module:
        """Load it from the cache; never train (a verifier does not train 20 models)."""
        ctx = self.context(protocol, device, silent)
        model = ctx.owner_model()
        if cache.load_model(self._folder(ctx, cache), model) is None:
            raise ArenaError(
                f"reference model {self.index} ({self.name}, seed {self.seed}) is not in the "
                f"cache {cache.root}; run arena calibrate --protocol {protocol.name} with the "
                "same cache"
            )
        return model


def _train_recipe(model: nn.Module, ctx: Context, recipe: Recipe) -> dict[str, Any]:
    settings, augment = recipe.apply(ctx.protocol)
    return train_clean(model, ctx, settings, augment, f"clean model ({recipe.name})")


def reference_set(
    protocol: Protocol,
    models: int,
    foreign: int = 0,
    references: tuple[str, ...] = (),
    foreign_models: tuple[str, ...] = (),
) -> list[ReferenceModel]:
    """``models`` reference models, then ``foreign`` foreign ones, each round robin over
    the protocol's entries ("architecture" or "architecture@recipe")."""
    references = references or protocol.reference_models or (protocol.model,)
    foreign_models = foreign_models or protocol.foreign_models
    if not 1 <= models <= MAX_MODELS:
        raise ArenaError(f"--models must lie in [1, {MAX_MODELS}], got {models}")
    if not 0 <= foreign <= MAX_MODELS:
        raise ArenaError(f"--foreign must lie in [0, {MAX_MODELS}], got {foreign}")
    parsed = [parse_reference(entry) for entry in references]
    architectures = {architecture for architecture, _ in parsed}
    if len(architectures) < 2:
        raise ArenaError(
            f"calibration needs reference models of at least two architectures, got "
            f"{', '.join(sorted(architectures))}"
        )
    strangers = [parse_reference(entry) for entry in foreign_models]
    if foreign and not strangers:
        raise ArenaError(f"protocol {protocol.name!r} names no foreign models")
    shared = architectures & {architecture for architecture, _ in strangers}
    if shared:
        raise ArenaError(
            f"foreign models must be of architectures the reference set does not contain; "
            f"{', '.join(sorted(shared))} is in both"
        )
    for architecture in architectures | {architecture for architecture, _ in strangers}:
        check_model_name(architecture)  # before any model is trained, not at the first new one
    chosen = [ReferenceModel(i, *parsed[i % len(parsed)], role="reference") for i in range(models)]
    chosen += [
        ReferenceModel(i, *strangers[i % len(strangers)], role="foreign") for i in range(foreign)
    ]
    return chosen


def reference_models(
    protocol: Protocol,
    defense: str,
    store: CalibrationStore,
    cache: ArtifactCache | None = None,
    device: torch.device | None = None,
) -> list[nn.Module]:
    """The clean reference models of the newest calibration of ``defense`` on ``protocol``."""
    record = store.latest(protocol, defense)
    if record is None or record.get("format") != RECORD_FORMAT:
        raise ArenaError(
            f"public verification needs clean reference models of {protocol.label}: run "
            f"arena calibrate --protocol {protocol.name} --defense {defense}"
        )
    cache = cache or ArtifactCache()
    device = device or default_device()
    return [_row_model(row).cached(protocol, cache, device) for row in record["models"]]


def _row_model(row: dict[str, Any]) -> ReferenceModel:
    architecture, recipe = parse_reference(f"{row['architecture']}@{row['recipe']}")
    return ReferenceModel(row["index"], architecture, recipe, row["role"])


NullKind = Literal["exact", "beta-binomial", "uncalibrated", "refuted"]
# Nulls that decide no verdict: the evidence is measured and shown, never judged.
UNSOUND_NULLS = frozenset({"uncalibrated", "refuted"})


@dataclass(frozen=True)
class Null:
    """The null distribution a verification tests against, and where it came from.

    ``exact``: the scheme's own binomial (1/|L|, 0.5 for bits), exact for its keys.
    ``beta-binomial``: mean ``p`` and intra-class correlation ``dispersion``, fitted to
    clean reference models by calibration ``calibration``. ``uncalibrated``: a scheme
    whose labels are not uniform, with no calibration yet: the nominal binomial is what
    the evidence is tested against, and it is NOT a sound null (``sound`` is False).
    ``refuted``: a fitted beta-binomial that the same calibration caught claiming clean
    models it never saw more often than alpha (``refutation``); the evidence is still
    tested against the fit, for information, but it is not a sound null either.
    """

    kind: NullKind
    source: str
    p: float | None = None
    dispersion: float = 0.0
    calibration: int | None = None  # the calibration's position in the store
    smallest_p_value: float | None = None  # P[K = n] under this null, for n triggers

    @property
    def sound(self) -> bool:
        return self.kind not in UNSOUND_NULLS

    def apply(self, evidence: Evidence) -> Evidence:
        """``evidence`` tested against this null."""
        if self.kind not in ("beta-binomial", "refuted"):
            return evidence
        return dataclasses.replace(evidence, null_p=self.p, null_dispersion=self.dispersion)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(defense: Defense, model: nn.Module, key: Any, ctx: Context, null: Null) -> Evidence:
    """The one verification path of matches, ``arena verify``, claims and calibration: the
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
        """The null ``defense``'s evidence is tested against on ``protocol``."""
        if defenses.get(defense).exact_null:
            return Null(
                "exact",
                f"exact: {defense}'s labels are drawn uniformly and independently of every "
                "model, so chance agreement is exactly the scheme's nominal rate",
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


def calibrate(
    protocol: Protocol,
    defense_name: str = "backdoor-wm",
    *,
    models: int = 20,
    foreign: int = 12,
    keys: int = 50,
    claim_keys: int | None = None,
    in_distribution_keys: int = 10,
    references: tuple[str, ...] = (),
    foreign_models: tuple[str, ...] = (),
    db: Path | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Fit the scheme's null (if it needs one) and measure its false claims; store the record.

    ``keys`` fresh keys per reference model fit the null; ``claim_keys`` other fresh keys
    per foreign model (default: enough for 3,000 foreign (key, model) pairs for
    ``backdoor-wm``, 1,000 for other schemes) measure false claims, and the first ``keys``
    of them on every reference model; the public label check is measured on those too.
    """
    defense: Defense = defenses.get(defense_name)()
    chosen = reference_set(protocol, models, foreign, references, foreign_models)
    if defense.access == "white-box":
        # White-box evidence reads one layer of the protocol's architecture: a model of
        # another architecture has no such layer, and its 0 bits read are no agreement.
        # The null is exact anyway (uniform bits); false claims are measured on clean
        # models of the protocol's architecture trained with other recipes and seeds.
        chosen = [r for r in chosen if r.architecture == protocol.model]
    for name, count, least in (
        ("--keys", keys, 1),
        ("--claim-keys", 0 if claim_keys is None else claim_keys, 0),
        ("in-distribution keys", in_distribution_keys, 0),
    ):
        if not least <= count <= MAX_KEYS:
            raise ArenaError(f"{name} must lie in [{least}, {MAX_KEYS:,}], got {count}")
    if claim_keys is None:
        pairs = 3000 if defense_name == "backdoor-wm" else 1000
        claim_keys = math.ceil(pairs / foreign) if foreign else keys
    store = CalibrationStore(db)
    check_writable(store.path, "results database")  # the record is saved at the end
    cache = cache or ArtifactCache()
    device = device or default_device()
    started = time.perf_counter()
    base = Context(protocol=protocol, device=device, progress=progress)
    owner = Context(protocol=protocol, seed=0, device=device, progress=progress)
    # Model-dependent keys (frontier stitching) are drawn from the owner's clean model of
    # seed 0, the one the leaderboard's matches mark.
    base.clean_provider = functools.cache(lambda: clean_model(owner, cache)[0])
    test = base.splits.test

    loaded: list[tuple[ReferenceModel, nn.Module, dict[str, Any]]] = []
    for position, reference in enumerate(chosen, start=1):
        progress.log(
            f"clean model {position} of {len(chosen)}: {reference.name}, seed "
            f"{reference.seed} ({reference.role})"
        )
        model, meta = reference.load(protocol, cache, device, progress)
        meta = {**meta, "test_acc": accuracy(model, test.images, test.labels, device)}
        loaded.append((reference, model, meta))
    fitted = [(r, m, meta) for r, m, meta in loaded if r.role == "reference"]

    def fresh_keys(purpose: str, count: int) -> list[Any]:
        return [
            defense.keygen(dataclasses.replace(base, seed=derive_seed(index, purpose)))
            for index in range(count)
        ]

    # The null: every reference model against fresh keys, one count per (model, key).
    progress.log(f"null: {len(fitted)} reference models x {keys} fresh keys")
    null_keys = fresh_keys("calibration-key", keys)
    counts: list[tuple[int, int]] = []
    rows = []
    for reference, model, meta in fitted:
        agreed = [defense.evidence(model, key, base) for key in null_keys]
        counts += [(e.successes, e.trials) for e in agreed]
        rows.append(_model_row(reference, meta, agreed))
    nominal = agreed[0].null_p  # the scheme's own null: 1/|L|, or 0.5 for bits
    trials = agreed[0].trials
    successes = sum(k for k, _ in counts)
    total = sum(n for _, n in counts)
    low, high = clopper_pearson(successes, total)
    null_record: dict[str, Any] = {
        "kind": "exact" if defense.exact_null else "beta-binomial",
        "nominal": nominal,
        "successes": successes,
        "trials": total,
        "rate": successes / total if total else 0.0,
        "rate_ci95": [low, high],
        "trials_per_key": trials,
    }
    if defense.exact_null:
        null = Null("exact", "exact")
        null_record["smallest_p_value"] = null_p_value(trials, trials, nominal)
    else:
        fit = fit_beta_binomial(counts)
        null_record.update(
            mean=fit.mean,
            dispersion=fit.dispersion,
            counts=fit.counts,
            log_likelihood=fit.log_likelihood,
            smallest_p_value=fit.smallest_p_value(trials),
        )
        null = Null("beta-binomial", "calibrating", p=fit.mean, dispersion=fit.dispersion)
    null_record["reaches_alpha"] = null_record["smallest_p_value"] <= protocol.alpha
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "protocol": protocol.name,
        "protocol_version": protocol.version,
        "protocol_fingerprint": protocol.fingerprint,
        "defense": defense.name,
        "defense_params": defense.params_dict(),
        "alpha": protocol.alpha,
        "models": rows,
        "null": null_record,
    }

    # False claims: keys the fit never saw, on every foreign model (``claim_keys`` each)
    # and on every reference model (at most ``keys`` of them each).
    if claim_keys:
        claim_set = fresh_keys("claim-key", claim_keys)
        progress.log(
            f"false claims: {len(claim_set)} fresh keys on each foreign model, "
            f"{min(len(claim_set), keys)} on each reference model"
        )
        outcomes: dict[str, list[Evidence]] = {"reference": [], "foreign": []}
        claim_rows = []
        for reference, model, meta in loaded:
            tried = claim_set if reference.role == "foreign" else claim_set[:keys]
            agreed = [measure(defense, model, key, base, null) for key in tried]
            outcomes[reference.role] += agreed
            claim_rows.append({**_model_row(reference, meta, agreed), "claimed": _count(agreed)})
        record["claims"] = claim_rows
        record["false_claims"] = {role: _rate(found) for role, found in outcomes.items() if found}
        if isinstance(claim_set[0], TriggerKey) and getattr(defense, "labels_independent", False):
            references_only = [model for _, model, _ in fitted]
            checks = [
                label_check(key.images, key.labels, references_only, protocol, device)
                for key in claim_set[:keys]
            ]
            record["label_check_honest"] = {
                "keys": len(checks),
                "rejected": sum(not check.passed for check in checks),
            }
            if in_distribution_keys:
                record["in_distribution"] = _in_distribution(
                    defense, base, test, in_distribution_keys, references_only, loaded, null
                )
    record["seconds"] = time.perf_counter() - started
    record["arena"] = __version__
    record["versions"] = environment(device)
    record["created_at"] = time.time()
    record["position"] = store.save(record)
    return record


def _in_distribution(
    defense: Defense,
    ctx: Context,
    test: Any,
    count: int,
    references: list[nn.Module],
    loaded: list[tuple[ReferenceModel, nn.Module, dict[str, Any]]],
    null: Null,
) -> dict[str, Any]:
    """Keys of real test images with their true labels: the label check must reject them,
    although clean models "verify" them."""
    rng = np.random.default_rng(derive_seed(0, "in-distribution-key"))
    size = min(ctx.protocol.trigger_size, len(test) // 2)
    # A scheme whose keys pair triggers with controls gets controls a forger would pick:
    # more test images with their true labels.
    controlled = getattr(defense.keygen(ctx), "controls", None) is not None
    rejected = 0
    outcomes: list[Evidence] = []
    for _ in range(count):
        chosen = rng.choice(len(test), size=2 * size, replace=False)
        images = (test.images[chosen] * 255).round().to(torch.uint8).numpy()
        labels = test.labels[chosen].numpy()
        controls = (images[size:], labels[size:]) if controlled else None
        images, labels = images[:size], labels[:size]
        key = TriggerKey.create(defense.name, ctx.num_classes, images, labels, controls=controls)
        rejected += not label_check(images, labels, references, ctx.protocol, ctx.device).passed
        outcomes += [
            measure(defense, model, key, ctx, null)
            for reference, model, _ in loaded
            if reference.role == "foreign"
        ]
    return {
        "keys": count,
        "triggers": size,
        "rejected_by_label_check": rejected,
        "foreign_claims": _rate(outcomes),
        "foreign_agreement": sum(e.successes for e in outcomes)
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
        "recipe": reference.recipe.name,
        "role": reference.role,
        "seed": reference.seed,
        "test_acc": meta["test_acc"],
        "train_seconds": meta.get("train_seconds"),
        "keys": len(agreed),
        "successes": successes,
        "trials": trials,
        "rate": successes / trials if trials else 0.0,
        "max_agreement": max((e.successes for e in agreed), default=0),
        "smallest_p_value": min((e.p_value for e in agreed), default=1.0),
    }


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


def _count(outcomes: list[Evidence]) -> int:
    return sum(e.verified for e in outcomes)


def _rate(outcomes: list[Evidence]) -> dict[str, Any]:
    hits = _count(outcomes)
    low, high = clopper_pearson(hits, len(outcomes))
    return {
        "pairs": len(outcomes),
        "claimed": hits,
        "rate": hits / len(outcomes) if outcomes else 0.0,
        "ci95": [low, high],
        "alpha": outcomes[0].alpha if outcomes else None,
    }


def to_markdown(record: dict[str, Any]) -> str:
    """The calibration as a README-ready report."""
    null = record["null"]
    alpha = record["alpha"]
    lines = [
        f"Calibration of `{record['defense']}` on `{record['protocol']}` "
        f"v{record['protocol_version']} (alpha {alpha:g})",
        "",
    ]
    ci = null["rate_ci95"]
    pooled = (
        f"{null['successes']:,} / {null['trials']:,} = {null['rate']:.4f} "
        f"(95% CI [{ci[0]:.4f}, {ci[1]:.4f}])"
    )
    if null["kind"] == "exact":
        lines.append(
            f"- Null: exact, Binomial(n, {null['nominal']:.4g}): the key's labels are drawn "
            "uniformly and independently of every model, so nothing is fitted. The reference "
            f"models' pooled agreement with fresh keys, {pooled}, is the check."
        )
    else:
        lines.append(
            f"- Null: beta-binomial fitted by maximum likelihood to {null['counts']:,} "
            f"(model, key) counts: mean {null['mean']:.4g}, intra-class correlation "
            f"{null['dispersion']:.4g} (pooled agreement {pooled}; the scheme's nominal "
            f"{null['nominal']:.4g} is not a sound null for it)."
        )
    trials = null["trials_per_key"]
    reach = "reaches" if null["reaches_alpha"] else "CANNOT reach"
    lines.append(
        f"- Smallest p-value this null gives a key of {trials} triggers (all answered): "
        f"{null['smallest_p_value']:.3g}; the scheme {reach} alpha = {alpha:g} with these "
        "reference models."
    )
    for role, rate in record.get("false_claims", {}).items():
        models = sum(1 for row in record["claims"] if row["role"] == role)
        lines.append(
            f"- False claims on {role} models ({models} models, keys the fit never saw): "
            f"{rate['claimed']} of {rate['pairs']:,} (key, model) pairs = {rate['rate']:.2e} "
            f"(95% CI [{rate['ci95'][0]:.2e}, {rate['ci95'][1]:.2e}]), alpha {alpha:g}."
        )
    refuted = refutation(record) if null["kind"] != "exact" else None
    if refuted:
        lines.append(
            f"- **The fitted null is REFUTED**: it {refuted}. The reference models do not "
            f"span the clean models a stranger may hold, so `arena verify` refuses to decide "
            f"a {record['defense']} key on this protocol and matches record no verdict, "
            "until a wider reference set is calibrated."
        )
    if "label_check_honest" in record:
        honest = record["label_check_honest"]
        lines.append(
            f"- Public label check on honest keys: {honest['rejected']} of {honest['keys']} "
            "rejected."
        )
    if "in_distribution" in record:
        inside = record["in_distribution"]
        claims = inside["foreign_claims"]
        lines.append(
            f"- In-distribution keys ({inside['triggers']} test images with their true "
            f"labels): {inside['rejected_by_label_check']} of {inside['keys']} rejected by the "
            f"label check; without it they would claim {claims['claimed']} of "
            f"{claims['pairs']} (key, foreign model) pairs (agreement "
            f"{inside['foreign_agreement']:.3f})."
        )
    lines += [
        "",
        "| model | role | architecture | recipe | seed | test acc | agreement (fit keys) | "
        "agreement (claim keys) | most one key got | smallest p-value | claimed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fit_rows = {(row["role"], row["index"]): row for row in record["models"]}
    for row in record.get("claims", record["models"]):
        fit = fit_rows.get((row["role"], row["index"]))
        fit_cell = f"{fit['successes']}/{fit['trials']} ({fit['rate']:.4f})" if fit else ""
        claimed = f"{row['claimed']} of {row['keys']}" if "claimed" in row else ""
        lines.append(
            f"| {row['index']} | {row['role']} | {row['architecture']} | {row['recipe']} | "
            f"{row['seed']} | {row['test_acc']:.3f} | {fit_cell} | {row['successes']}/"
            f"{row['trials']} ({row['rate']:.4f}) | {row['max_agreement']} | "
            f"{row['smallest_p_value']:.2g} | {claimed} |"
        )
    lines += ["", f"{record['seconds']:.0f} s, calibration {record['position']} in the store."]
    versions = record.get("versions")
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return "\n".join(lines)
