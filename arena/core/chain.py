"""Combined attacks: ``--attack fine-prune+distill`` runs registered attacks one after
another on the stolen model.

The main finding of the watermark robustness systematization (Lukas et al., "SoK: How
Robust is Image Classification Deep Neural Network Watermarking?", IEEE S&P 2022) is that
no single attack removed every mark, while combinations did. A chain is an attack like
any other: the registry builds its class from the parts' names (``attacks.get("a+b")``),
so a match, a sweep and the leaderboard take it wherever they take an attack's name.

- Each part keeps its own parameters, addressed ``part.name`` (``-A fine-prune.sparsity=0.9``)
  and stored that way, and its own random streams (``attack:<part>``): a chain's first
  part does exactly what it does alone.
- The threat model is the union of the parts': the strongest data and label access any
  part has (``DATA_ORDER``, ``LABEL_ORDER``), the sum of their query and epoch budgets;
  every part's own is kept in the match's ``info``, with its time (the chain's time is the
  sum, measured as one attack phase).
- It applies where every part applies. Only the first part meets the victim: whether the
  chain needs the victim's weights (``holds_weights``) is the first part's answer, so
  ``distill+ftal`` (extract through the API, then fine-tune one's own copy) applies to a
  scheme that lives in the owner's API and ``ftal+distill`` does not.
- A part that does not hand on a model of the task ends the chain: an evasion part (it
  serves the model behind a filter), a claim (forgery, piracy: the claim is made on the
  model as it stands) and a task-changing part (transfer learning). The chain's threat is
  that last part's when it is one of those, removal otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import nn

from arena.core.context import Context
from arena.core.plugin import (
    Attack,
    AttackOutcome,
    ClaimAttack,
    Defense,
    QueryAttack,
    ThreatModel,
)
from arena.core.registry import CHAIN_SEPARATOR as SEPARATOR
from arena.core.registry import attacks
from arena.util.errors import ArenaError

# The union of two accesses is the stronger one, in these orders: data from none at all to
# the attacker's own labelled split; labels from none, through the victim's answers, to
# the true labels of the attacker's data.
# The chains ``arena sweep --attack chains`` plays: combinations the robustness study's
# finding points to, each pairing an attack that disturbs the weights where the mark
# lives with one that then restores the task (or re-learns it from the victim's answers).
STUDY_CHAINS = (
    "fine-prune+distill",
    "weight-shift+ftal",
    "prune+rtal",
    "quantize+ftal",
    "neural-cleanse+fine-prune",
    "permute+ftal",
    "regularize+fine-prune",
)

DATA_ORDER = ("none", "out-of-distribution", "unlabeled", "attacker-split")
LABEL_ORDER = ("none", "victim-top1", "victim-soft", "true")


def chain_class(name: str, parts: tuple[type[Attack], ...]) -> type[Chain]:
    """The class of the chain ``name``, whose parts are ``parts`` (registered attack
    classes, in order); refused with one line when the parts cannot be chained."""
    if len(parts) < 2:
        raise ArenaError(f"attack chain {name!r} needs at least two parts")
    names = [part.name for part in parts]
    repeated = sorted({part for part in names if names.count(part) > 1})
    if repeated:
        raise ArenaError(
            f"attack chain {name!r} names {', '.join(repeated)} twice; each part's "
            "parameters are addressed by its name, so raise that part's budget instead"
        )
    for part in parts[:-1]:
        ends = _ends_chain(part)
        if ends:
            raise ArenaError(
                f"attack chain {name!r}: {part.name} {ends}, so it can only be the last part"
            )
    last = parts[-1]
    threat = last.threat if last.threat in ("evasion", "forgery", "piracy") else "removal"
    doc = f"A chain: {', then '.join(names)}.\n\n" + "\n".join(
        f"{part.name}: {(part.__doc__ or '').strip().splitlines()[0]}"
        for part in parts
        if part.__doc__
    )
    return type(
        "Chain",
        (Chain,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "name": name,
            "parts": parts,
            "threat": threat,
            "paper": "; ".join(dict.fromkeys(part.paper for part in parts if part.paper)),
            "version": SEPARATOR.join(part.version for part in parts),
            "holds_weights": parts[0].holds_weights,
            "changes_task": last.changes_task,
        },
    )


def _ends_chain(part: type[Attack]) -> str:
    """Why ``part`` hands no model of the task on to a next part ("" when it does)."""
    if issubclass(part, QueryAttack):
        return "serves the model behind a query-time filter (evasion)"
    if issubclass(part, ClaimAttack):
        return f"claims ownership of the model as it stands ({part.threat})"
    if part.changes_task:
        return "moves the model to another task"
    return ""


class Chain(Attack):
    """Registered attacks run one after another (``chain_class`` makes one per name)."""

    parts: ClassVar[tuple[type[Attack], ...]] = ()

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        by_part: dict[str, dict[str, Any]] = {part.name: {} for part in self.parts}
        for key, value in dict(params or {}).items():
            part, dot, field = key.partition(".")
            if not dot or part not in by_part:
                raise ArenaError(
                    f"attack {self.name!r}: parameter {key!r} names no part of the chain; "
                    f"write part.parameter, e.g. {self.parts[0].name}.epochs=3"
                )
            by_part[part][field] = value
        self.steps: tuple[Attack, ...] = tuple(part(by_part[part.name]) for part in self.parts)
        self.params = tuple(step.params for step in self.steps)

    def params_dict(self) -> dict[str, Any]:
        """Every part's parameters, as ``part.name``: the form ``-A`` takes back."""
        return {
            f"{step.name}.{field}": value
            for step in self.steps
            for field, value in step.params_dict().items()
        }

    def threat_model(self, ctx: Context) -> ThreatModel:
        models = [step.threat_model(ctx) for step in self.steps]
        return ThreatModel(
            data=max((m.data for m in models), key=DATA_ORDER.index),
            labels=max((m.labels for m in models), key=LABEL_ORDER.index),
            query_budget=_total(m.query_budget for m in models),
            epochs=_total(m.epochs for m in models),
        )

    def applies_to(self, defense: Defense) -> str | None:
        serving = super().applies_to(defense)  # the first part's access to the victim
        if serving is not None and defense.serves:
            return serving
        for step in self.steps:
            reason = step.requires.unmet(defense)
            if reason is not None:
                return f"its part {step.name} does not apply: {reason}"
        return None

    def architecture(self, ctx: Context) -> str | None:
        """The last architecture a part trained (extraction); None: the victim's."""
        chosen = None
        for step in self.steps:
            chosen = step.architecture(ctx) or chosen
        return chosen

    def build(self, ctx: Context, new_model: Callable[[], nn.Module]) -> nn.Module:
        return self.steps[-1].build(ctx, new_model)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        replaced_head, parts, summaries = False, [], []
        outcome = AttackOutcome(model=model)
        for step in self.steps:
            started = time.perf_counter()
            outcome = step.run(outcome.model, ctx)
            replaced_head = replaced_head or outcome.replaced_head
            parts.append(
                {
                    "attack": step.name,
                    "seconds": time.perf_counter() - started,
                    "replaced_head": outcome.replaced_head,
                    "threat_model": step.threat_model(ctx).to_dict(),
                    "info": outcome.info,
                }
            )
            if outcome.info.get("summary"):
                summaries.append(f"{step.name}: {outcome.info['summary']}")
        info: dict[str, Any] = {"parts": parts}
        if summaries:
            info["summary"] = "; ".join(summaries)
        return AttackOutcome(
            model=outcome.model, replaced_head=replaced_head, info=info, claim=outcome.claim
        )

    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        return self.steps[-1].serve(model, ctx)


def _total(budgets: Any) -> int | None:
    counted = [budget for budget in budgets if budget is not None]
    return sum(counted) if counted else None


attacks.composer = chain_class
