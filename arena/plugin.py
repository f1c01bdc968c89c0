"""The two plugin contracts: ``Defense`` (a watermark scheme) and ``Attack``.

A plugin is a small class with a docstring citing its paper, a ``Params`` dataclass
of typed parameters with defaults, and one verb (defenses: ``keygen``, ``mark``,
``evidence``; attacks: ``run``). Registration is one decorator line next to the class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from arena.errors import ArenaError
from arena.params import NoParams, params_to_dict, parse_params
from arena.stats import Evidence

if TYPE_CHECKING:
    from arena.context import Context

DataAccess = Literal["none", "attacker-split", "unlabeled", "out-of-distribution"]
LabelAccess = Literal["none", "true", "victim-top1", "victim-soft"]


@dataclass(frozen=True)
class ThreatModel:
    """What an attacker is given; stored with every result."""

    data: DataAccess
    labels: LabelAccess
    query_budget: int | None = None  # victim queries; None when the victim is never queried
    epochs: int | None = None  # compute budget in passes over the attacker's data

    def __post_init__(self) -> None:
        # A plugin's misspelling ("atacker-split") would be stored with every result.
        for name, value, allowed in (
            ("data", self.data, DataAccess.__args__),
            ("labels", self.labels, LabelAccess.__args__),
        ):
            if value not in allowed:
                raise ArenaError(f"ThreatModel {name}={value!r} is not one of {', '.join(allowed)}")
        for name, count in (("query_budget", self.query_budget), ("epochs", self.epochs)):
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise ArenaError(
                    f"ThreatModel {name} must be an integer >= 0 or None, got {count!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        parts = [f"data: {self.data}", f"labels: {self.labels}"]
        if self.query_budget is not None:
            parts.append(f"queries: {self.query_budget}")
        if self.epochs is not None:
            parts.append(f"epochs: {self.epochs}")
        return ", ".join(parts)


class Plugin:
    """Common to defenses and attacks: a name, a version and declared parameters."""

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""  # set by the registry decorator
    version: ClassVar[str] = "1"  # bump when the plugin's behaviour changes; keys the cache
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = parse_params(self.Params, params, owner=f"{self.kind} {self.name!r}")

    def params_dict(self) -> dict[str, Any]:
        return params_to_dict(self.params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class Key:
    """A marking key and its public verification key, as a scheme defines them."""

    scheme: str

    @property
    def fingerprint(self) -> str:
        """A public identity of the key: the hash of its verification key."""
        raise NotImplementedError

    def save(self, directory: Any) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Any) -> Key:
        raise NotImplementedError

    @classmethod
    def from_files(cls, mk_path: Any, vk_path: Any) -> Key:
        """Read ``mk`` and ``vk`` and check that ``mk`` opens ``vk``."""
        raise NotImplementedError

    @classmethod
    def public_fingerprint(cls, vk_path: Any) -> str:
        """The fingerprint of a verification key file on its own (no ``mk``): what the
        ledger records at registration. A malformed file is refused."""
        raise NotImplementedError


class Defense(Plugin):
    """A watermarking scheme: KeyGen, Mark and the evidence that Verify decides on."""

    kind: ClassVar[str] = "defense"
    family: ClassVar[str] = ""
    access: ClassVar[Literal["black-box", "white-box"]] = "black-box"
    paper: ClassVar[str] = ""
    # "scratch": mark() gets a freshly initialised model; "clean": the trained clean model.
    starts_from: ClassVar[Literal["scratch", "clean"]] = "scratch"
    key_type: ClassVar[type[Key]] = Key
    # True when the key's labels (or bits) are drawn uniformly and independently of every
    # model: a model never marked with the key then agrees with each of them with
    # probability exactly 1/|L| (0.5 for bits), and the binomial null is exact. False when
    # they are not (one shared target class, true labels): clean models differ in how often
    # they agree, and the null is a beta-binomial fitted by ``arena calibrate``.
    exact_null: ClassVar[bool] = True

    def keygen(self, ctx: Context) -> Key:
        raise NotImplementedError

    def mark(self, model: nn.Module, key: Key, ctx: Context) -> nn.Module:
        raise NotImplementedError

    def evidence(self, model: nn.Module, key: Key, ctx: Context) -> Evidence:
        raise NotImplementedError


@dataclass
class AttackOutcome:
    """What an attack hands back: the model the attacker ends up with or serves.

    ``replaced_head`` says the attack re-initialised or swapped the output layer, so the
    owner-head evidence (the seed paper's RTLL/RTAL verification) applies. ``info`` is
    stored with the match; its optional ``"summary"``, one short line (e.g. the classes
    Neural Cleanse flagged), is shown in the leaderboard's notes column.
    """

    model: nn.Module
    replaced_head: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    claim: ClaimAttempt | None = None  # forgery and piracy: the key the attacker claims with


@dataclass(frozen=True)
class ClaimAttempt:
    """A claim of ownership by the attacker: its key (of the defense's own scheme, with
    ``mk`` so it can be opened) and when it was registered in the ledger.

    ``"in-advance"``: before the owner's model was published (a key fixed beforehand, as
    a universal forgery must be); ``"after-theft"``: after the attacker saw the model.
    The arena replays those events in a fresh ledger and judges the claim on the model
    ``run`` returned with the ownership protocol's own checks (``arena.claims``).
    """

    key: Key
    registered: Literal["in-advance", "after-theft"]


class QueryFilter(nn.Module):
    """A stolen model served behind a query-time detector (evasion).

    ``flags`` says which queries look like verification queries; those are answered by
    ``deflect`` instead of the model's own answer (default: the model's second most
    likely class). The filter counts the queries it saw and flagged, so the arena can
    report the detector's false-positive rate on clean test queries and its detection
    rate on the verifier's queries beside the verdict.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset_counts()

    def reset_counts(self) -> None:
        self.queries, self.flagged = 0, 0

    def flags(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """A bool per image: True for a query the detector flags."""
        raise NotImplementedError

    def deflect(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Logits for flagged queries: here the runner-up class made the top answer."""
        top = logits.argmax(dim=1, keepdim=True)
        return logits.scatter(1, top, float("-inf"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        flagged = self.flags(images, logits).to(device=logits.device, dtype=torch.bool)
        self.queries += len(images)
        self.flagged += int(flagged.sum())
        if not flagged.any():
            return logits
        return torch.where(flagged[:, None], self.deflect(images, logits), logits)


class Attack(Plugin):
    """An attack on a marked model."""

    kind: ClassVar[str] = "attack"
    threat: ClassVar[Literal["removal", "forgery", "piracy", "evasion", "none"]] = "removal"
    paper: ClassVar[str] = ""
    # True when the attacked model solves another task (transfer learning): its answers
    # are another task's labels, so the verdict rests on the owner-head evidence.
    changes_task: ClassVar[bool] = False

    def threat_model(self, ctx: Context) -> ThreatModel:
        raise NotImplementedError

    def architecture(self, ctx: Context) -> str | None:
        """The timm architecture of the model ``run`` returns; None: the victim's.

        An attack that trains a model of another architecture (extraction) says so here,
        so the arena stores and reloads the attacked model in the right container.
        """
        return None

    def applies_to(self, defense: Defense) -> str | None:
        """Why this attack does not apply to ``defense`` (a sweep skips the pair and
        ``arena run`` refuses it with this reason), or None when it applies."""
        return None

    def build(self, ctx: Context, new_model: Callable[[], nn.Module]) -> nn.Module:
        """An empty container for the model ``run`` returns, to load it from the cache:
        a fresh model of ``architecture()`` unless the attack returns something else
        (an ensemble of several models)."""
        return new_model()

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        raise NotImplementedError

    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        """What answers queries once the attacker deploys ``model``: the model itself, or
        the model behind a query-time filter (input transformations, evasion). The arena
        caches the weights ``run`` returns and measures accuracy and evidence through
        ``serve``; it must be cheap and deterministic."""
        return model
