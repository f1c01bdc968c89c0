"""The plugin contracts: ``Defense`` (a watermark scheme) and one attack base per threat
family: ``RemovalAttack`` (``remove``), ``ClaimAttack`` (``claim``: forgery, piracy) and
``QueryAttack`` (``serve``: evasion at query time).

A plugin is a small class with a docstring citing its paper, a ``Params`` dataclass of
typed parameters with defaults, and its verbs, which are abstract: a plugin that leaves
one out cannot be instantiated, so it fails when it is loaded, not mid-match. What an
attack needs of the defense it attacks (``Requirements``: the key type, the access) is
data the match checks once. Registration is one decorator line next to the class.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from arena.core.keys import Key
from arena.core.params import NoParams, params_to_dict, parse_params
from arena.core.smoothing import Certificate
from arena.core.stats import Evidence
from arena.core.training import TrainSettings, with_budget
from arena.util.errors import ArenaError

if TYPE_CHECKING:
    from arena.core.context import Context


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


class Plugin(abc.ABC):  # noqa: B024 (its subclasses declare the verbs)
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
    # Why an exact null holds, said with every verdict, where it is not the default reason
    # (labels drawn uniformly and independently of every model).
    exact_null_reason: ClassVar[str] = ""

    # Parameters that change how a key is embedded or spread over verifications, never
    # which keys are drawn nor how a clean model answers them: a null calibrated at other
    # values of these still holds (every other parameter keys its own calibration).
    marking_params: ClassVar[frozenset[str]] = frozenset(
        {"epochs", "lr", "triggers_per_batch", "subsets"}
    )

    # True when the key's labels are drawn independently of its inputs (abstract images,
    # uniform labels): the public label check then applies to claims with its keys.
    labels_independent: ClassVar[bool] = False

    @abc.abstractmethod
    def keygen(self, ctx: Context) -> Key:
        """A fresh key of ``key_type``, drawn from ``ctx.rng("keygen")`` (and, for
        model-dependent keys, ``ctx.clean_model()``)."""

    @abc.abstractmethod
    def mark(self, model: nn.Module, key: Key, ctx: Context) -> nn.Module:
        """``model`` (fresh, or the trained clean model when ``starts_from`` is "clean")
        trained to carry ``key``, with ``arena.train`` on ``ctx.splits.owner``."""

    @abc.abstractmethod
    def evidence(self, model: nn.Module, key: Key, ctx: Context) -> Evidence:
        """How far ``model`` agrees with ``key``: successes of trials against the
        scheme's nominal null (``ctx.null_p`` for labels, 0.5 for bits)."""

    # True for a scheme that lives in the owner's prediction API (DAWN): the model never
    # leaves it, so only attacks that reach it through queries apply (``Attack.
    # holds_weights`` False), and they query what ``serve`` returns; the owner's evidence
    # against the attacker's model is the key ``client_key`` builds from the API's log.
    serves: ClassVar[bool] = False

    def serve(self, model: nn.Module, key: Key, ctx: Context) -> nn.Module:
        """The owner's prediction API around ``model``, which answers clients' queries
        (default: the model itself). A serving scheme returns one that records what the
        scheme needs of the queries it answers."""
        return model

    def client_key(self, api: nn.Module, key: Key, ctx: Context) -> Key | None:
        """The key the owner builds from what ``api`` (made by ``serve``) recorded while
        one client queried it: the evidence against a model that client trained on the
        answers. None: the client's queries gave the owner nothing to verify with."""
        return None

    def other_copy_key(self, key: Key, ctx: Context) -> Key | None:
        """For a scheme that marks one copy per user (fingerprints): the key of another
        user's copy, which a match marks too and measures ``key`` on, so the record shows
        whether one user's copy is told apart from another's. None (the default): one
        copy for everyone."""
        return None

    def certificate(self, model: nn.Module, key: Key, ctx: Context) -> Certificate | None:
        """What the mark on ``model`` is certified to survive (``arena.core.smoothing``):
        per key input, the weight change within which the smoothed model keeps the key's
        answer. None (the default): the scheme certifies nothing."""
        return None

    def smoothed_agreement(
        self, model: nn.Module, key: Key, ctx: Context, certificate: Certificate
    ) -> torch.Tensor:
        """Per noisy copy of ``model`` (noise of the certificate's sigma), how many key
        inputs it answers with the key's answers: what a match checks a certificate with
        on the attacked model. Schemes that certify implement it."""
        raise NotImplementedError(f"{self.name} issues certificates but cannot check them")

    # What attackers who re-mark a stolen model with a key of this scheme call (piracy,
    # overwrite). The defaults re-run ``mark`` with the budget; a family overrides them.

    def for_data(self, ctx: Context) -> Defense:
        """This scheme as someone holding only ``ctx``'s data can configure it (default:
        itself). A scheme whose key needs images of one class caps its trigger count at
        what ``ctx.splits.owner`` holds of that class."""
        return self

    def continue_training(
        self, model: nn.Module, key: Key, ctx: Context, description: str
    ) -> nn.Module:
        """Mark an already trained ``model`` with the protocol's ``mark_*`` budget."""
        protocol = ctx.protocol
        budget = with_budget(protocol.training, protocol.mark_epochs, protocol.mark_lr)
        per_batch = protocol.mark_triggers_per_batch
        return self.train_with_key(model, key, ctx, budget, per_batch, description)

    def train_with_key(
        self,
        model: nn.Module,
        key: Key,
        ctx: Context,
        settings: TrainSettings,
        triggers_per_batch: int | None,
        description: str,
    ) -> nn.Module:
        """Train ``model`` to carry ``key`` with ``settings`` (and, for trigger sets,
        ``triggers_per_batch`` key images in every batch). Default: ``mark`` under a
        protocol whose ``training`` (and ``triggers_per_batch``) are these."""
        protocol = dataclasses.replace(ctx.protocol, training=settings)
        if triggers_per_batch is not None:
            protocol = dataclasses.replace(protocol, triggers_per_batch=triggers_per_batch)
        return self.mark(model, key, dataclasses.replace(ctx, protocol=protocol))


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
    ``run`` returned with the ownership protocol's own checks (``arena.ownership.claims``).
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


Access = Literal["black-box", "white-box"]


@dataclass(frozen=True)
class Budget:
    """How much an attack spends, as one of its parameters, and the values of it that
    ``arena sweep --budget-curve`` plays, from the cheapest (weakest) to the dearest: the
    leaderboard reports the cheapest that removes each mark and what it cost."""

    parameter: str
    grid: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.grid or len(set(self.grid)) != len(self.grid):
            raise ArenaError(f"a budget grid of {self.parameter} needs distinct values")


@dataclass(frozen=True)
class Requirements:
    """What an attack needs of the defense it attacks, declared as data and checked once,
    by the match (and by a sweep, which skips the pair): the type of the defense's keys
    and the verification access under which the attack means anything. ``reason`` is
    what ``arena run`` says when they are not met."""

    key_type: type[Key] = Key
    access: tuple[Access, ...] = ("black-box", "white-box")
    reason: str = ""

    def unmet(self, defense: Defense) -> str | None:
        """Why ``defense`` does not meet these requirements, or None."""
        if issubclass(defense.key_type, self.key_type) and defense.access in self.access:
            return None
        return self.reason or (
            f"it needs a {' or '.join(self.access)} scheme with {self.key_type.__name__}s; "
            f"{defense.name} is {defense.access} with {defense.key_type.__name__}s"
        )


class Attack(Plugin):
    """An attack on a marked model. Write one of its three family bases instead
    (``RemovalAttack``, ``ClaimAttack``, ``QueryAttack``); ``run`` is what the match
    calls, and each family base implements it with its own verb."""

    kind: ClassVar[str] = "attack"
    threat: ClassVar[Literal["removal", "forgery", "piracy", "evasion", "none"]] = "removal"
    paper: ClassVar[str] = ""
    requires: ClassVar[Requirements] = Requirements()
    # True when the attacked model solves another task (transfer learning): its answers
    # are another task's labels, so the verdict rests on the owner-head evidence.
    changes_task: ClassVar[bool] = False
    # False for an attack that needs only the victim's answers to queries (extraction):
    # it also applies to a scheme whose model never leaves the owner's API
    # (``Defense.serves``); True (the default): it reads or changes the victim's weights.
    holds_weights: ClassVar[bool] = True
    # The parameter that sets the attack's cost and the grid a removal-cost curve plays
    # (``arena sweep --budget-curve``); None: the attack has no budget to vary.
    budget_curve: ClassVar[Budget | None] = None

    @abc.abstractmethod
    def threat_model(self, ctx: Context) -> ThreatModel:
        """What the attacker is given (data, labels, queries, epochs); stored with every
        result."""

    def architecture(self, ctx: Context) -> str | None:
        """The timm architecture of the model ``run`` returns; None: the victim's.

        An attack that trains a model of another architecture (extraction) says so here,
        so the arena stores and reloads the attacked model in the right container.
        """
        return None

    def applies_to(self, defense: Defense) -> str | None:
        """Why this attack does not apply to ``defense`` (a sweep skips the pair and
        ``arena run`` refuses it with this reason), or None when it applies. Declare
        ``requires`` rather than override this; override only for reasons that depend
        on the attack's parameters."""
        if defense.serves and self.holds_weights:
            return (
                f"{defense.name}'s model never leaves the owner's prediction API, so an "
                "attack on its weights is outside its threat model (only attacks that "
                "query it, extraction, apply)"
            )
        return self.requires.unmet(defense)

    def check_data(self, ctx: Context) -> None:
        """Raise ``ArenaError`` when data the attack reads beyond the protocol's splits
        (another task's data set) is missing or unreadable. The match calls it before any
        training, so a missing file costs seconds, not the owner's training."""

    def build(self, ctx: Context, new_model: Callable[[], nn.Module]) -> nn.Module:
        """An empty container for the model ``run`` returns, to load it from the cache:
        a fresh model of ``architecture()`` unless the attack returns something else
        (an ensemble of several models)."""
        return new_model()

    @abc.abstractmethod
    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        """The attack on a copy of the marked model; the family bases implement it."""

    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        """What answers queries once the attacker deploys ``model``: the model itself, or
        the model behind a query-time filter (input transformations, evasion). The arena
        caches the weights ``run`` returns and measures accuracy and evidence through
        ``serve``; it must be cheap and deterministic."""
        return model


class RemovalAttack(Attack):
    """Removal: change the weights until the mark is gone (fine-tuning, pruning,
    distillation, ...). One verb: ``remove``."""

    threat: ClassVar[Literal["removal", "none"]] = "removal"

    @abc.abstractmethod
    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        """The attacker's model: ``model`` (a copy of the marked one, free to change in
        place) or one it trained. ``replaced_head`` when the output layer was replaced."""

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        return self.remove(model, ctx)


class ClaimAttack(Attack):
    """Forgery and piracy: the attacker claims ownership with a key of its own, of the
    victim's scheme (``ctx.victim.scheme``), which the ownership protocol then judges.
    One verb: ``claim``, whose outcome must carry the ``ClaimAttempt``."""

    threat: ClassVar[Literal["forgery", "piracy"]] = "forgery"

    @abc.abstractmethod
    def claim(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        """The model the claim is made on and, in ``claim``, the attacker's key and when
        it was registered."""

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        if ctx.victim is None:
            raise ArenaError(f"{self.name} needs the victim's scheme (a match sets ctx.victim)")
        outcome = self.claim(model, ctx)
        if outcome.claim is None:
            raise ArenaError(f"claim attack {self.name!r} returned no claim (AttackOutcome.claim)")
        return outcome


class QueryAttack(Attack):
    """Evasion: the attacker keeps the weights and answers queries through ``serve``
    (input transformations, a detector of verification queries, an ensemble). ``prepare``
    fits what ``serve`` needs (default: nothing). A filter that cannot hide weights from a
    white-box verifier declares ``requires = Requirements(access=("black-box",))``."""

    threat: ClassVar[Literal["evasion"]] = "evasion"

    def prepare(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        """The weights ``serve`` will put behind its filter; ``info`` describes what was
        fitted. Default: the stolen model as it is."""
        return AttackOutcome(model=model)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        return self.prepare(model, ctx)

    @abc.abstractmethod
    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        """What answers queries: ``model`` behind the attack's filter. Cheap and
        deterministic: the arena calls it for every measurement."""
