"""Judging claims of ownership: forgery and ownership piracy, by the protocol's own checks.

A forgery or piracy attack hands in a ``ClaimAttempt``: a key of the defense's scheme
and when it was registered. The arena replays the events of a match in a fresh ledger
(the owner registers its key, publishes the marked model; the attacker registers its
key before or after that, and publishes its model) and checks four claims, each with
every check ``arena verify`` makes: the key opens its commitments, the model answers it
(binomial test against the calibrated null), the key is well-formed (the public label
check against clean reference models, for trigger-set keys), and the key was registered
in the ledger before the model was first seen.

- Forgery succeeds when the attacker's claim on the model passes every check. Its key is
  also tried on the independent clean reference models, with and without the label
  check: a key that claims models its maker never saw breaks non-trivial ownership.
- Piracy succeeds when the protocol cannot tell the pirate's claim from the owner's: the
  pirate's claim on its model verifies, and the owner's key does not verify on it.
  Otherwise the dispute goes to the owner, for the reasons printed: the owner's key
  verifies on the pirated model, the pirate's key does not verify on (or was registered
  after) the owner's published original, and the owner's key came first in the ledger.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from arena.core.context import Context
from arena.core.keys import Key
from arena.core.plugin import ClaimAttempt, Defense
from arena.core.stats import Evidence, clopper_pearson
from arena.core.verify import Null, measure
from arena.ownership.ledger import Ledger, model_fingerprint
from arena.ownership.public import LabelCheck, label_check
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationSnapshot, CalibrationStore
from arena.storage.clean import reference_models


@dataclass(frozen=True)
class ClaimCheck:
    """One party's claim on one model, with the outcome of each check."""

    party: str  # "owner" or "attacker"
    model: str  # "original" (the owner's published model) or "attacked"
    evidence: Evidence
    label_check: LabelCheck | None  # None: the scheme has no trigger labels to check
    key_position: int  # ledger positions: the key's registration, the model's first sight
    model_position: int

    @property
    def registered_first(self) -> bool:
        return self.key_position < self.model_position

    @property
    def verified(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        failed = []
        if not self.evidence.verified:
            failed.append(
                f"the model answers {self.evidence.successes}/{self.evidence.trials} "
                f"(p = {self.evidence.p_value:.2g} > alpha)"
            )
        if self.label_check is not None and not self.label_check.passed:
            check = self.label_check.evidence
            failed.append(
                f"the key fails the label check: clean models give {check.successes}/"
                f"{check.trials} of its labels (p = {check.p_value:.2g})"
            )
        if not self.registered_first:
            failed.append("the key was registered after the model was first seen")
        return failed

    def summary(self) -> str:
        k, n = self.evidence.successes, self.evidence.trials
        verdict = "passes" if self.verified else "fails: " + "; ".join(self.failures())
        return f"{self.party}'s key on the {self.model} model: {k}/{n}, {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "model": self.model,
            "evidence": self.evidence.to_dict(),
            "label_check": self.label_check.to_dict() if self.label_check else None,
            "key_ledger_position": self.key_position,
            "model_ledger_position": self.model_position,
            "registered_before_model_seen": self.registered_first,
            "verified": self.verified,
            "failures": self.failures(),
        }


@dataclass(frozen=True)
class Dispute:
    """The four claims of a match with a claim attack, and the verdict."""

    threat: str
    registered: str
    claims: list[ClaimCheck]
    clean_models: dict[str, Any] | None  # forgery: the attacker's key on clean models
    attack_succeeded: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat": self.threat,
            "attacker_key_registered": self.registered,
            "claims": [claim.to_dict() for claim in self.claims],
            "clean_models": self.clean_models,
            "attack_succeeded": self.attack_succeeded,
            "reason": self.reason,
        }


def adjudicate(
    defense: Defense,
    owner_key: Key,
    original: nn.Module,
    attacked: nn.Module,
    claim: ClaimAttempt,
    threat: str,
    ctx: Context,
    null: Null,
    calibrations: CalibrationStore | CalibrationSnapshot,
    cache: ArtifactCache,
) -> Dispute:
    """Replay the match's events in a fresh ledger and judge every claim."""
    for key in (owner_key, claim.key):
        key.open()  # a key that does not open its commitments claims nothing
    references = None
    if claim.key.queries() is not None:
        references = reference_models(ctx.protocol, defense.name, calibrations, cache, ctx.device)
    checks_labels = defense.labels_independent
    checks = {}
    with tempfile.TemporaryDirectory(prefix="arena-claims-") as folder:
        ledger = Ledger(Path(folder) / "ledger.sqlite")
        owner = ledger.append("key", owner_key.fingerprint, "owner").position
        if claim.registered == "in-advance":
            ledger.append("key", claim.key.fingerprint, "attacker")
        published = ledger.append("model", model_fingerprint(original), "owner's model").position
        attacker = ledger.append("key", claim.key.fingerprint, "attacker").position
        stolen = ledger.append("model", model_fingerprint(attacked), "attacker's model").position
    for party, key, key_position in (
        ("owner", owner_key, owner),
        ("attacker", claim.key, attacker),
    ):
        well_formed = _label_check(key, references, ctx) if checks_labels else None
        for name, model, model_position in (
            ("original", original, published),
            ("attacked", attacked, stolen),
        ):
            evidence = measure(defense, model, key, ctx, null)
            checks[party, name] = ClaimCheck(
                party, name, evidence, well_formed, key_position, model_position
            )
    claims = list(checks.values())
    if threat == "piracy":
        succeeded, reason = _resolve_piracy(checks)
        return Dispute(threat, claim.registered, claims, None, succeeded, reason)
    forged = checks["attacker", "attacked"]
    clean = _clean_claims(defense, claim.key, forged.label_check, references, ctx, null)
    if forged.verified:
        reason = "the forged claim passes every check: " + forged.summary()
    else:
        reason = "the forged claim is rejected: " + "; ".join(forged.failures())
    return Dispute(threat, claim.registered, claims, clean, forged.verified, reason)


def unopened_claim(threat: str, registered: str, error: Exception) -> Dispute:
    """A claim whose key does not open the commitments it presents: rejected outright."""
    reason = f"the attacker's key does not open the commitments it claims: {error}"
    return Dispute(threat, registered, [], None, False, reason)


def _resolve_piracy(checks: dict[tuple[str, str], ClaimCheck]) -> tuple[bool, str]:
    """Whose model is it? The owner wins when its key verifies on the pirated model."""
    pirate = checks["attacker", "attacked"]
    owner_on_pirated = checks["owner", "attacked"]
    pirate_on_original = checks["attacker", "original"]
    if not pirate.verified:
        return False, "the pirate's claim on its own model fails: " + "; ".join(pirate.failures())
    if not owner_on_pirated.verified:
        return True, (
            "the protocol cannot tell the claims apart: the pirate's key verifies on the "
            "pirated model and the owner's does not ("
            + "; ".join(owner_on_pirated.failures())
            + ")"
        )
    reasons = [
        f"the owner's key verifies on the pirated model ({owner_on_pirated.evidence.successes}/"
        f"{owner_on_pirated.evidence.trials})",
        "the pirate's key "
        + (
            "does not verify on the owner's original ("
            + "; ".join(pirate_on_original.failures())
            + ")"
            if not pirate_on_original.verified
            else "verifies on the owner's original"
        ),
        f"the owner's key is entry {owner_on_pirated.key_position} of the ledger, the "
        f"pirate's entry {pirate.key_position}",
    ]
    return False, "resolved for the owner: " + "; ".join(reasons)


def _label_check(key: Key, references: list[nn.Module] | None, ctx: Context) -> LabelCheck | None:
    queries = key.queries()
    if references is None or queries is None:
        return None
    return label_check(*queries, references, ctx.protocol, ctx.device)


def _clean_claims(
    defense: Defense,
    key: Key,
    well_formed: LabelCheck | None,
    references: list[nn.Module] | None,
    ctx: Context,
    null: Null,
) -> dict[str, Any] | None:
    """The attacker's key claimed on independent clean models (none of which it saw)."""
    if not references:
        return None
    agreements, verified = [], 0
    for model in references:
        evidence = measure(defense, model, key, ctx, null)
        agreements.append(evidence.successes / evidence.trials)
        verified += evidence.verified
    models = len(references)
    record: dict[str, Any] = {
        "models": models,
        "mean_agreement": sum(agreements) / models,
        "verified_without_label_check": verified,
        "verified_without_label_check_ci95": list(clopper_pearson(verified, models)),
        "label_check_applies": well_formed is not None,
    }
    if well_formed is not None:  # the key is well-formed or not, whatever the model
        claimed = verified if well_formed.passed else 0
        record["claimed_with_label_check"] = claimed
        record["claimed_with_label_check_ci95"] = list(clopper_pearson(claimed, models))
    return record
