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
- the public label check (``arena.ownership.public``): how many honest keys it rejects, and
  whether it rejects keys of in-distribution images with their true labels, which clean
  models would otherwise "verify".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.core.context import Context, default_device, derive_seed
from arena.core.environment import environment
from arena.core.keys import TriggerKey
from arena.core.plugin import Defense
from arena.core.protocols import Protocol
from arena.core.registry import defenses
from arena.core.stats import Evidence, clopper_pearson, fit_beta_binomial, null_p_value
from arena.core.training import accuracy
from arena.core.verify import Null, measure
from arena.ownership.public import label_check
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import RECORD_FORMAT, CalibrationStore
from arena.storage.clean import ReferenceModel, clean_model, reference_set
from arena.storage.results import check_writable
from arena.util.errors import ArenaError
from arena.util.progress import Reporter, silent
from arena.util.version import __version__

MAX_KEYS = 100_000

# The clean models a calibration loaded: what each is, the model, its metadata.
Loaded = list[tuple[ReferenceModel, nn.Module, dict[str, Any]]]


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
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the scheme's null (if it needs one) and measure its false claims; store the record.

    ``params``: the scheme's parameters (default: its defaults); the null holds for the
    keys of those parameters, and matches and verifications of the scheme so configured
    look it up by them.

    ``keys`` fresh keys per reference model fit the null; ``claim_keys`` other fresh keys
    per foreign model (default: enough for 3,000 foreign (key, model) pairs for
    ``backdoor-wm``, 1,000 for other schemes) measure false claims, and the first ``keys``
    of them on every reference model; the public label check is measured on those too.
    """
    defense: Defense = defenses.get(defense_name)(params)
    chosen = _models_to_load(protocol, defense, models, foreign, references, foreign_models)
    _check_key_counts(keys, claim_keys, in_distribution_keys)
    if claim_keys is None:
        pairs = 3000 if defense_name == "backdoor-wm" else 1000
        claim_keys = math.ceil(pairs / foreign) if foreign else keys
    store = CalibrationStore(db)
    check_writable(store.path, "results database")  # the record is saved at the end
    cache = cache or ArtifactCache()
    device = device or default_device()
    started = time.perf_counter()
    base = _key_context(protocol, cache, device, progress)
    test = base.splits.test
    loaded = _load_models(chosen, protocol, cache, device, progress, test)
    fitted = [(r, m, meta) for r, m, meta in loaded if r.role == "reference"]
    rows, null_record, null = _fit_null(defense, base, fitted, keys)
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
    if claim_keys:
        record.update(
            _false_claims(defense, base, test, loaded, null, keys, claim_keys, in_distribution_keys)
        )
    record["seconds"] = time.perf_counter() - started
    record["arena"] = __version__
    record["versions"] = environment(device)
    record["created_at"] = time.time()
    record["position"] = store.save(record)
    return record


def _models_to_load(
    protocol: Protocol,
    defense: Defense,
    models: int,
    foreign: int,
    references: tuple[str, ...],
    foreign_models: tuple[str, ...],
) -> list[ReferenceModel]:
    chosen = reference_set(protocol, models, foreign, references, foreign_models)
    if defense.access == "white-box":
        # White-box evidence reads one layer of the protocol's architecture: a model of
        # another architecture has no such layer, and its 0 bits read are no agreement.
        # The null is exact anyway (uniform bits); false claims are measured on clean
        # models of the protocol's architecture trained with other recipes and seeds.
        chosen = [r for r in chosen if r.architecture == protocol.model]
    return chosen


def _check_key_counts(keys: int, claim_keys: int | None, in_distribution_keys: int) -> None:
    for name, count, least in (
        ("--keys", keys, 1),
        ("--claim-keys", 0 if claim_keys is None else claim_keys, 0),
        ("in-distribution keys", in_distribution_keys, 0),
    ):
        if not least <= count <= MAX_KEYS:
            raise ArenaError(f"{name} must lie in [{least}, {MAX_KEYS:,}], got {count}")


def _key_context(
    protocol: Protocol, cache: ArtifactCache, device: torch.device, progress: Reporter
) -> Context:
    """The context fresh keys are drawn in (each with a seed of its own)."""
    owner = Context(protocol=protocol, seed=0, device=device, progress=progress)
    # Model-dependent keys (frontier stitching) are drawn from the owner's clean model of
    # seed 0, the one the leaderboard's matches mark.
    return Context(
        protocol=protocol,
        device=device,
        progress=progress,
        clean=functools.cache(lambda: clean_model(owner, cache)[0]),
    )


def _load_models(
    chosen: list[ReferenceModel],
    protocol: Protocol,
    cache: ArtifactCache,
    device: torch.device,
    progress: Reporter,
    test: Any,
) -> Loaded:
    """Every chosen clean model (trained if not cached), with its test accuracy."""
    loaded: Loaded = []
    for position, reference in enumerate(chosen, start=1):
        progress.log(
            f"clean model {position} of {len(chosen)}: {reference.name}, seed "
            f"{reference.seed} ({reference.role})"
        )
        model, meta = reference.load(protocol, cache, device, progress)
        meta = {**meta, "test_acc": accuracy(model, test.images, test.labels, device)}
        loaded.append((reference, model, meta))
    return loaded


def _fresh_keys(defense: Defense, base: Context, purpose: str, count: int) -> list[Any]:
    return [
        defense.keygen(dataclasses.replace(base, seed=derive_seed(index, purpose)))
        for index in range(count)
    ]


def _fit_null(
    defense: Defense, base: Context, fitted: Loaded, keys: int
) -> tuple[list[dict[str, Any]], dict[str, Any], Null]:
    """Every reference model against fresh keys, one count per (model, key): the null
    (exact, or a beta-binomial fitted to the counts), its record and the models' rows."""
    base.progress.log(f"null: {len(fitted)} reference models x {keys} fresh keys")
    null_keys = _fresh_keys(defense, base, "calibration-key", keys)
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
    null_record["reaches_alpha"] = null_record["smallest_p_value"] <= base.protocol.alpha
    return rows, null_record, null


def _false_claims(
    defense: Defense,
    base: Context,
    test: Any,
    loaded: Loaded,
    null: Null,
    keys: int,
    claim_keys: int,
    in_distribution_keys: int,
) -> dict[str, Any]:
    """Keys the fit never saw, on every foreign model (``claim_keys`` each) and on every
    reference model (at most ``keys`` of them each); the public label check on them."""
    claim_set = _fresh_keys(defense, base, "claim-key", claim_keys)
    base.progress.log(
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
    measured: dict[str, Any] = {
        "claims": claim_rows,
        "false_claims": {role: _rate(found) for role, found in outcomes.items() if found},
    }
    if defense.labels_independent:
        references_only = [model for reference, model, _ in loaded if reference.role == "reference"]
        checks = [
            label_check(*key.queries(), references_only, base.protocol, base.device)
            for key in claim_set[:keys]
        ]
        measured["label_check_honest"] = {
            "keys": len(checks),
            "rejected": sum(not check.passed for check in checks),
        }
        if in_distribution_keys:
            measured["in_distribution"] = _in_distribution(
                defense, base, test, in_distribution_keys, references_only, loaded, null
            )
    return measured


def _in_distribution(
    defense: Defense,
    ctx: Context,
    test: Any,
    count: int,
    references: list[nn.Module],
    loaded: Loaded,
    null: Null,
) -> dict[str, Any]:
    """Keys of real test images with their true labels: the label check must reject them,
    although clean models "verify" them."""
    rng = np.random.default_rng(derive_seed(0, "in-distribution-key"))
    size = min(ctx.protocol.trigger_size, len(test) // 2)
    # A scheme whose keys pair triggers with controls gets controls a forger would pick:
    # more test images with their true labels.
    controlled = defense.keygen(ctx).has_controls()
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
        # Each key's count, in key order: the histogram behind the null (and the site's plot).
        "counts": [e.successes for e in agreed],
    }


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
