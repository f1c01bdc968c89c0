"""Where a whole match's time goes, phase by phase, against a plain PyTorch loop doing the
same training and evaluation in the same run.

The arena side is a real match from an empty cache: ``play_match`` in this process with
a fresh, temporary ``ARENA_HOME`` (no data copy, no artifacts, no results database), the
in-memory data caches cleared, and the progress bars ``arena run`` draws (``RichReporter``
on a terminal that discards them). Its phases are the match record's (``data``,
``keygen``, ``clean``, ``mark``, ``verify``, ``attack``); inside them the benchmark times,
by wrapping the arena's functions, each kind of work: training steps, evaluation forward
passes, model building, model copies, data preparation, keys and commitments, cache
reads and writes, the results database and progress reporting; what is left is the
Python between them.

The plain side is a hand-written loop on the same data tensors (``ctx.splits``), the same
trigger images, the same initial weights (``ctx.owner_model()``), optimizers, schedules,
epochs, batch sizes, augmentation draws and batch order, and the same evaluations (test
accuracy of the clean, marked and attacked models; the trigger agreement of each; with
the owner's output layer put back after RTLL/RTAL). Its final weights are compared with
the arena's, and both sides' optimizer steps and forward passes are counted, to show
that the two did the same work. The data and the trigger images are handed to it, so
data preparation and key generation are the arena's own rows.

Both sides run in one process with the threads and deterministic settings the ``arena``
command uses (``apply_deterministic_defaults``), after a warm-up of each (an arena match
on ``smoke``, then the plain side with a few steps per loop), alternating which goes
first when repeated. ``arena run`` itself is then timed as a subprocess from another
empty home (interpreter start, imports, the match, printing), with the import time of
``arena.cli`` and that of torch and timm that any plain script pays.

Plain equivalents exist for the ``backdoor-wm`` and ``backdoor-wm-pretrained`` defenses
and the ``none``, ``ftll``, ``ftal``, ``rtll``, ``rtal`` and ``neural-cleanse`` attacks;
for any other pair only the arena's breakdown is printed.

    python benchmarks/match_profile.py --protocol mnist5k --defense backdoor-wm --attack rtal
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import functools
import gc
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from arena.core.context import Context, default_device
from arena.core.data import Splits, to_model_input
from arena.core.environment import apply_deterministic_defaults
from arena.core.protocols import PROTOCOLS, Protocol, get_protocol
from arena.core.registry import attacks, defenses
from arena.core.training import TrainSettings, with_budget
from arena.util.progress import Reporter, RichReporter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from plain import largest_difference, shift  # noqa: E402 (the benchmarks' shared plain code)

PHASES = ("data", "keygen", "clean", "mark", "verify", "attack")
OUTSIDE = "outside phases"  # resolving, naming artifacts, building and storing the record

TRAINING = "training steps"
REVERSAL = "trigger reversal (Adam)"
EVALUATION = "evaluation forward passes"
BUILDING = "model building (timm)"
COPIES = "model copies"
DATA = "data preparation"
KEYS = "keys: generation, commitments, files"
CACHE_WRITES = "cache writes (safetensors, SHA-256)"
CACHE_READS = "cache reads and checks"
RESULTS = "results and calibrations database"
PROGRESS = "progress reporting"
REST = "the rest (Python between the steps)"
# The kinds of work both sides do; the others are the arena's alone.
SHARED = (TRAINING, REVERSAL, EVALUATION, BUILDING, COPIES)
ARENA_ONLY = (DATA, KEYS, CACHE_WRITES, CACHE_READS, RESULTS, PROGRESS)

FINE_TUNING = {  # attack -> (trainable, re-initialise the output layer)
    "ftll": ("head", False),
    "ftal": ("all", False),
    "rtll": ("head", True),
    "rtal": ("all", True),
}
PLAIN_ATTACKS = ("none", *FINE_TUNING, "neural-cleanse")
PLAIN_DEFENSES = ("backdoor-wm", "backdoor-wm-pretrained")
EVALUATION_BATCH = 500  # arena.core.training.predict_logits's


# --- what each side did -------------------------------------------------------------


@dataclass
class Tally:
    """One run of one side: seconds per phase, exclusive seconds per (phase, kind of
    work), and the optimizer steps and forward passes it made."""

    phase_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    work_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    wall: float = 0.0
    steps: int = 0
    forwards: int = 0
    images: int = 0
    phase: str = OUTSIDE
    _open: list[float] = field(default_factory=list)  # child seconds of each open frame

    @contextmanager
    def work(self, kind: str) -> Iterator[None]:
        """Time a kind of work, less the work nested in it (counted as its own kind)."""
        self._open.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            nested = self._open.pop()
            self.work_seconds[(self.phase, kind)] += elapsed - nested
            if self._open:
                self._open[-1] += elapsed

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] += time.perf_counter() - start
            self.phase = previous

    def watch(self, model: nn.Module) -> nn.Module:
        """Count ``model``'s forward passes (its copies keep the hook)."""

        def count(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            self.forwards += 1
            self.images += len(inputs[0])

        model.register_forward_pre_hook(count)
        return model

    @contextmanager
    def counting_steps(self) -> Iterator[None]:
        def count(*_: Any) -> None:
            self.steps += 1

        handle = register_optimizer_step_post_hook(count)
        try:
            yield
        finally:
            handle.remove()

    def work_total(self, kind: str, phase: str | None = None) -> float:
        return sum(
            seconds
            for (where, what), seconds in self.work_seconds.items()
            if what == kind and phase in (None, where)
        )

    def phase_total(self, phase: str) -> float:
        if phase == OUTSIDE:
            return self.wall - sum(self.phase_seconds[name] for name in PHASES)
        return self.phase_seconds.get(phase, 0.0)

    def rest(self, phase: str | None = None) -> float:
        """Time no kind of work accounts for: the Python between the steps."""
        total = self.wall if phase is None else self.phase_total(phase)
        kinds = {what for _, what in self.work_seconds}
        return total - sum(self.work_total(kind, phase) for kind in kinds)


# --- the arena side -----------------------------------------------------------------


class _Patches(ExitStack):
    """Replace arena functions and methods by timed wrappers; undone on exit."""

    def function(self, original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
        # Imported by name into other modules: replace every reference to it.
        for module in list(sys.modules.values()):
            try:
                attributes = list(vars(module).items())
            except TypeError:  # not a module (a lazy placeholder some packages install)
                continue
            names = [name for name, value in attributes if value is original]
            for name in names:
                setattr(module, name, wrapper)
                self.callback(setattr, module, name, original)

    def method(self, cls: type, name: str, wrap: Callable[[Any], Any]) -> None:
        own = vars(cls).get(name)
        setattr(cls, name, wrap(getattr(cls, name)))
        if own is None:
            self.callback(delattr, cls, name)
        else:
            self.callback(setattr, cls, name, own)


def _timed(tally: Tally, kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tally.work(kind):
            return function(*args, **kwargs)

    return wrapper


class _TimedReporter(Reporter):
    """``inner``'s progress reporting, timed as its own kind of work."""

    def __init__(self, inner: Reporter, tally: Tally) -> None:
        self.inner, self.tally = inner, tally

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        with ExitStack() as stack:
            with self.tally.work(PROGRESS):
                advance = stack.enter_context(self.inner.task(description, total))

            def timed_advance(steps: int) -> None:
                with self.tally.work(PROGRESS):
                    advance(steps)

            try:
                yield timed_advance
            finally:
                with self.tally.work(PROGRESS):
                    stack.close()

    def log(self, message: str) -> None:
        with self.tally.work(PROGRESS):
            self.inner.log(message)


def _instrument(tally: Tally, defense: str, attack: str, models: dict[str, nn.Module]) -> _Patches:
    """Time the arena's kinds of work and count its forward passes; ``models`` receives
    each model the match writes to the cache, by kind (clean, marked, attacked)."""
    import arena.core.data as data
    import arena.core.models as model_module
    import arena.core.training as training
    import arena.eval.match as match
    from arena.storage.artifacts import ArtifactCache
    from arena.storage.calibrations import CalibrationStore
    from arena.storage.results import ResultStore

    defense_class = defenses.get(defense)  # imports the plugins before their names are patched
    attack_class = attacks.get(attack)
    patches = _Patches()

    def building(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> nn.Module:
            with tally.work(BUILDING):
                return tally.watch(function(*args, **kwargs))

        return wrapper

    def saving(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(self: Any, folder: Path, model: nn.Module, meta: dict[str, Any]) -> Any:
            models[folder.parent.parent.name] = model  # cache/<kind>/<xx>/<digest>
            with tally.work(CACHE_WRITES):
                return function(self, folder, model, meta)

        return wrapper

    class PhaseTimer(match._PhaseTimer):
        @contextmanager
        def __call__(self, phase: str) -> Iterator[None]:
            with tally.in_phase(phase), super().__call__(phase):
                yield

    patches.enter_context(_replaced(match, "_PhaseTimer", PhaseTimer))
    patches.function(training.train, _timed(tally, TRAINING, training.train))
    patches.function(training.predict_logits, _timed(tally, EVALUATION, training.predict_logits))
    patches.function(model_module.create_model, building(model_module.create_model))
    patches.function(model_module.clone_model, _timed(tally, COPIES, model_module.clone_model))
    patches.function(data.load_splits, _timed(tally, DATA, data.load_splits))
    if attack == "neural-cleanse":
        reversal = sys.modules[attack_class.__module__].reverse_triggers
        patches.function(reversal, _timed(tally, REVERSAL, reversal))
    patches.method(defense_class, "keygen", functools.partial(_timed, tally, KEYS))
    for name in ("open", "save"):
        patches.method(defense_class.key_type, name, functools.partial(_timed, tally, KEYS))
    patches.method(ArtifactCache, "save_model", saving)
    for name in ("load_model", "check"):
        patches.method(ArtifactCache, name, functools.partial(_timed, tally, CACHE_READS))
    for name in ("check_writable", "match", "save"):
        patches.method(ResultStore, name, functools.partial(_timed, tally, RESULTS))
    patches.method(CalibrationStore, "null", functools.partial(_timed, tally, RESULTS))
    return patches


@contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def _home(home: Path) -> Iterator[None]:
    """``ARENA_HOME`` set to ``home`` while inside."""
    previous = os.environ.get("ARENA_HOME")
    os.environ["ARENA_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["ARENA_HOME"]
        else:
            os.environ["ARENA_HOME"] = previous


@contextmanager
def _empty_home() -> Iterator[Path]:
    """A fresh ``ARENA_HOME`` for one match, and no data held in memory: an empty cache."""
    import arena.core.data as data

    home = Path(tempfile.mkdtemp(prefix="arena-profile-"))
    data._cached_splits.cache_clear()
    data._cached_raw.cache_clear()
    try:
        with _home(home):
            yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def arena_match(
    args: argparse.Namespace, protocol: str, profiler: cProfile.Profile | None = None
) -> tuple[Tally, Any, dict[str, nn.Module]]:
    """One match from an empty cache, timed: its tally, its record and its models."""
    from arena.eval.match import MatchSpec, play_match
    from arena.storage.artifacts import ArtifactCache
    from arena.storage.results import ResultStore

    tally, models = Tally(), {}
    spec = MatchSpec(defense=args.defense, attack=args.attack, protocol=protocol, seed=args.seed)
    with open(os.devnull, "w") as devnull, _empty_home():
        # What arena run draws on a user's terminal, drawn on one that discards it.
        terminal = Console(file=devnull, force_terminal=True, width=120)
        progress = _TimedReporter(RichReporter(terminal), tally)
        with _instrument(tally, args.defense, args.attack, models), tally.counting_steps():
            gc.collect()
            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            # As arena run does: the default stores under ARENA_HOME, the rich reporter.
            record = play_match(spec, store=ResultStore(), cache=ArtifactCache(), progress=progress)
            tally.wall = time.perf_counter() - start
            if profiler is not None:
                profiler.disable()
    return tally, record, models


# --- the plain side -----------------------------------------------------------------


@dataclass(frozen=True)
class PlainSetup:
    """Everything the plain loop is handed: data, triggers, budgets, seeds."""

    ctx: Context
    splits: Splits
    triggers: tuple[torch.Tensor, torch.Tensor]
    mark_settings: TrainSettings
    triggers_per_batch: int
    mark_from_clean: bool
    attack: str
    attack_params: Any
    attack_settings: TrainSettings | None
    head_seed: int | None  # the re-initialised output layer's seed (RTLL, RTAL)


def plain_setup(args: argparse.Namespace, protocol: Protocol) -> PlainSetup | None:
    """The plain side's inputs, or None when the pair has no plain equivalent here."""
    if args.defense not in PLAIN_DEFENSES or args.attack not in PLAIN_ATTACKS:
        return None
    ctx = Context(protocol=protocol, seed=args.seed, device=default_device())
    ctx = dataclasses.replace(ctx, data=ctx.splits)  # loaded now, before any timing
    defense = defenses.get(args.defense)({})
    attack = attacks.get(args.attack)({})
    key = defense.keygen(ctx)  # the same trigger images and labels as the match's key
    triggers = (
        to_model_input(key.images, protocol.image_size, protocol.channels),
        torch.as_tensor(key.labels),
    )
    params, pretrained = defense.params, defense.starts_from == "clean"
    if pretrained:  # TriggerSetDefense.continue_training's budget
        mark = with_budget(
            protocol.training, params.epochs or protocol.mark_epochs, params.lr or protocol.mark_lr
        )
        per_batch = params.triggers_per_batch or protocol.mark_triggers_per_batch
    else:  # BackdoorWatermark.mark's
        mark = with_budget(protocol.training, params.epochs, params.lr)
        per_batch = params.triggers_per_batch or protocol.triggers_per_batch
    settings, head_seed = None, None
    if args.attack in FINE_TUNING:
        settings = attack.params.settings(attack.params.budget(ctx))
        if FINE_TUNING[args.attack][1]:
            head_seed = int(ctx.rng(f"attack:{args.attack}").integers(2**62))
    elif args.attack == "neural-cleanse":
        settings = attack.params.settings(protocol.attack_epochs)
    return PlainSetup(
        ctx, ctx.splits, triggers, mark, per_batch, pretrained, args.attack, attack.params,
        settings, head_seed,
    )  # fmt: skip


def plain_train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    augment: str,
    *,
    triggers: tuple[torch.Tensor, torch.Tensor] | None = None,
    per_batch: int = 0,
    head_only: bool = False,
    max_steps: int | None = None,
) -> None:
    """Minibatch SGD (or Adam) with a cosine schedule: a textbook loop.

    The batches are drawn as the arena draws them, so both end with the same weights:
    one permutation per epoch, then each batch's shifts; trigger images are appended
    after the shift, in shuffled rounds from a generator of their own.
    """
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    head = model.get_classifier()
    for parameter in model.parameters():
        parameter.requires_grad_(not head_only)
    head.requires_grad_(True)
    parameters = list((head if head_only else model).parameters())
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.momentum > 0,
        )
    else:
        optimizer = torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.epochs * max(1, -(-len(images) // settings.batch_size))
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
        if settings.schedule == "cosine"
        else None
    )
    if triggers is not None:
        trigger_images, trigger_labels = triggers[0].to(device), triggers[1].to(device)
        trigger_generator = torch.Generator()
        trigger_generator.manual_seed(generator.initial_seed() ^ 0x5DEECE66D)
        pending = torch.empty(0, dtype=torch.long)
    steps = 0
    for _ in range(settings.epochs):
        model.train(not head_only)
        head.train()
        order = torch.randperm(len(images), generator=generator).to(device)
        for first in range(0, len(images), settings.batch_size):
            index = order[first : first + settings.batch_size]
            batch_images, batch_labels = images[index], labels[index]
            if augment != "none":
                batch_images = shift(batch_images, generator, flip=augment == "shift-flip")
            if triggers is not None:
                while len(pending) < per_batch:
                    fresh = torch.randperm(len(trigger_images), generator=trigger_generator)
                    pending = torch.cat([pending, fresh])
                pick, pending = pending[:per_batch].to(device), pending[per_batch:]
                batch_images = torch.cat([batch_images, trigger_images[pick]])
                batch_labels = torch.cat([batch_labels, trigger_labels[pick]])
            loss = F.cross_entropy(
                model(batch_images), batch_labels, label_smoothing=settings.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
    model.eval()


@torch.no_grad()
def plain_predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [
            model(images[start : start + EVALUATION_BATCH].to(device)).argmax(dim=1).cpu()
            for start in range(0, len(images), EVALUATION_BATCH)
        ]
    )


def plain_match(
    setup: PlainSetup, max_steps: int | None = None
) -> tuple[Tally, dict[str, nn.Module]]:
    """The match's training and evaluation, by hand: clean, mark, verify, attack, verify."""
    ctx, splits, tally = setup.ctx, setup.splits, Tally()
    protocol, augment = ctx.protocol, ctx.protocol.augment
    owner, test = splits.owner, splits.test
    trigger_images, trigger_labels = setup.triggers

    def evaluate(model: nn.Module) -> tuple[float, int]:
        with tally.work(EVALUATION):
            correct = int((plain_predict(model, test.images) == test.labels).sum())
            agreed = int((plain_predict(model, trigger_images) == trigger_labels).sum())
        return correct / len(test), agreed

    def build() -> nn.Module:
        with tally.work(BUILDING):
            return tally.watch(ctx.owner_model())

    with tally.counting_steps():
        gc.collect()
        start = time.perf_counter()
        with tally.in_phase("clean"):
            clean = build()
            with tally.work(TRAINING):
                plain_train(
                    clean, owner.images, owner.labels, protocol.training,
                    ctx.owner_generator(), augment, max_steps=max_steps,
                )  # fmt: skip
        with tally.in_phase("mark"):
            marked = build()
            with tally.work(TRAINING):
                if setup.mark_from_clean:
                    marked.load_state_dict(clean.state_dict())
                plain_train(
                    marked, owner.images, owner.labels, setup.mark_settings,
                    ctx.owner_generator(), augment, triggers=setup.triggers,
                    per_batch=setup.triggers_per_batch, max_steps=max_steps,
                )  # fmt: skip
        with tally.in_phase("verify"):
            evaluate(clean)
            evaluate(marked)
        with tally.in_phase("attack"):
            with tally.work(COPIES):
                attacked = copy.deepcopy(marked)
            _plain_attack(attacked, setup, tally, max_steps)
        with tally.in_phase("verify"):
            evaluate(attacked)
            if setup.head_seed is not None:  # the owner's output layer put back
                with tally.work(COPIES):
                    restored = copy.deepcopy(attacked)
                restored.get_classifier().load_state_dict(marked.get_classifier().state_dict())
                with tally.work(EVALUATION):
                    plain_predict(restored, trigger_images)
        tally.wall = time.perf_counter() - start
    return tally, {"clean": clean, "marked": marked, "attacked": attacked}


def _plain_attack(model: nn.Module, setup: PlainSetup, tally: Tally, max_steps: int | None) -> None:
    ctx, attacker = setup.ctx, setup.splits.attacker
    generator = ctx.generator(f"attack:{setup.attack}")
    if setup.attack in FINE_TUNING:
        if setup.head_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(setup.head_seed)
                model.reset_classifier(model.num_classes)
        with tally.work(TRAINING):
            plain_train(
                model, attacker.images, attacker.labels, setup.attack_settings, generator,
                ctx.protocol.augment, head_only=FINE_TUNING[setup.attack][0] == "head",
                max_steps=max_steps,
            )  # fmt: skip
    elif setup.attack == "neural-cleanse":
        _plain_neural_cleanse(model, setup, tally, generator, max_steps)


def _plain_neural_cleanse(
    model: nn.Module,
    setup: PlainSetup,
    tally: Tally,
    generator: torch.Generator,
    max_steps: int | None,
) -> None:
    """Reverse a trigger per class, flag small masks, unlearn (Wang et al. 2019)."""
    params, attacker, classes = setup.attack_params, setup.splits.attacker, setup.ctx.num_classes
    device = next(model.parameters()).device
    images = attacker.images.to(device)
    with tally.work(REVERSAL):
        mask_logit = torch.full((classes, 1, *images.shape[2:]), -1.1, device=device)
        pattern_logit = torch.zeros(classes, *images.shape[1:], device=device)
        mask_logit.requires_grad_()
        pattern_logit.requires_grad_()
        optimizer = torch.optim.Adam([mask_logit, pattern_logit], lr=params.lr, betas=(0.5, 0.9))
        targets = torch.arange(classes, device=device).repeat_interleave(params.batch_size)
        model.eval()
        model.requires_grad_(False)
        for _ in range(min(params.steps, max_steps or params.steps)):
            rows = torch.randint(len(images), (params.batch_size,), generator=generator)
            rows = rows.to(device)
            masks, patterns = torch.tanh(mask_logit) / 2 + 0.5, torch.tanh(pattern_logit) / 2 + 0.5
            stamped = (1 - masks.unsqueeze(1)) * images[rows].unsqueeze(0) + (
                masks * patterns
            ).unsqueeze(1)
            loss = F.cross_entropy(model(stamped.flatten(0, 1)), targets) * classes
            loss = loss + params.l1_weight * masks.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.requires_grad_(True)
        masks = (torch.tanh(mask_logit) / 2 + 0.5).detach().cpu()
        patterns = (torch.tanh(pattern_logit) / 2 + 0.5).detach().cpu()
    images = attacker.images
    with tally.work(EVALUATION):  # how often each reversed trigger works
        for target in range(classes):
            plain_predict(model, (1 - masks[target]) * images + masks[target] * patterns[target])
    norms = masks.flatten(1).sum(1).numpy()
    deviations = np.abs(norms - np.median(norms))
    indices = deviations / max(1.4826 * np.median(deviations), 1e-12)
    flagged = [
        target
        for target in range(classes)
        if norms[target] < np.median(norms) and indices[target] > params.threshold
    ]
    images = images.clone()
    if flagged:
        chosen = torch.randperm(len(images), generator=generator)
        chosen = chosen[: round(params.unlearn_fraction * len(images))]
        for position, row in enumerate(chosen.tolist()):
            target = flagged[position % len(flagged)]
            images[row] = (1 - masks[target]) * images[row] + masks[target] * patterns[target]
    with tally.work(TRAINING):
        plain_train(
            model, images, attacker.labels, setup.attack_settings, generator,
            setup.ctx.protocol.augment, max_steps=max_steps,
        )  # fmt: skip


# --- arena run, as a command --------------------------------------------------------


def time_command(args: argparse.Namespace) -> dict[str, Any]:
    """``arena run`` from an empty home, on a pseudo-terminal like a user's: its wall time
    and the phases of the record it stored."""
    import pty

    from arena.storage.results import ResultStore

    arena = Path(sys.executable).with_name("arena")
    command = [
        str(arena), "run", "--defense", args.defense, "--attack", args.attack,
        "--protocol", args.protocol, "--seed", str(args.seed),
    ]  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="arena-profile-cli-"))
    try:
        leader, follower = pty.openpty()
        drained = threading.Thread(target=_drain, args=(leader,), daemon=True)
        drained.start()
        start = time.perf_counter()
        finished = subprocess.run(
            command,
            env={**os.environ, "ARENA_HOME": str(home), "COLUMNS": "120"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
            check=False,
        )
        wall = time.perf_counter() - start
        os.close(follower)
        drained.join(timeout=5)
        if finished.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited with {finished.returncode}")
        with _home(home):
            (record,) = ResultStore().matches()
        return {"command": command, "wall": wall, "record": record}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _drain(descriptor: int) -> None:
    try:
        while os.read(descriptor, 65536):
            pass
    except OSError:  # the terminal closed
        pass
    finally:
        os.close(descriptor)


def time_imports(args: argparse.Namespace) -> dict[str, float]:
    """Seconds of what ``arena run`` does before its match, each in a fresh interpreter
    (the median of three), and of starting one."""
    plugins = f"defenses.get({args.defense!r}); attacks.get({args.attack!r})"
    timed = {  # label: (setup, timed statement)
        "import arena.cli": ("", "import arena.cli"),
        "imports of arena run (arena.cli, the match, both plugins, timm)": (
            "",
            "import arena.cli, arena.eval.match, timm; "
            f"from arena.core.registry import attacks, defenses; {plugins}",
        ),
        "apply_deterministic_defaults() (torch imports torch._dynamo)": (
            "import arena.cli; from arena.core.environment import apply_deterministic_defaults",
            "apply_deterministic_defaults()",
        ),
        "import torch, timm (a plain script's)": ("", "import torch, timm"),
    }
    seconds = {}
    for label, (setup, statement) in timed.items():
        code = (
            f"{setup}\nimport time; s = time.perf_counter()\n{statement}\n"
            "print(time.perf_counter() - s)"
        )
        runs = [
            subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
            for _ in range(3)
        ]
        seconds[label] = statistics.median(float(run) for run in runs)
    starts = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        starts.append(time.perf_counter() - start)
    seconds["python start (python -c pass)"] = statistics.median(starts)
    return seconds


# --- the report ---------------------------------------------------------------------


def _median(tallies: list[Tally], value: Callable[[Tally], float]) -> float:
    return statistics.median(value(tally) for tally in tallies)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(arena: float, plain: float | None) -> str:
    return "-" if not plain else f"{arena / plain:.3f}"


def print_phases(arena: list[Tally], plain: list[Tally] | None) -> None:
    print(
        f"{'phase':<16}{'arena s':>9}{'train':>8}{'eval':>8}{'other':>8}"
        f"{'plain s':>10}{'train':>8}{'eval':>8}{'other':>8}{'ratio':>8}"
    )
    for phase in (*PHASES, OUTSIDE, "total"):

        def total(tally: Tally, phase: str = phase) -> float:
            return tally.wall if phase == "total" else tally.phase_total(phase)

        def part(kinds: tuple[str, ...], phase: str = phase) -> Callable[[Tally], float]:
            where = None if phase == "total" else phase
            return lambda tally: sum(tally.work_total(kind, where) for kind in kinds)

        training, evaluation = part((TRAINING, REVERSAL)), part((EVALUATION,))
        cells = [
            _median(arena, total),
            _median(arena, training),
            _median(arena, evaluation),
        ]
        cells.append(cells[0] - cells[1] - cells[2])
        line = f"{phase:<16}" + "".join(f"{cell:>{w}.2f}" for cell, w in zip(cells, (9, 8, 8, 8)))
        plain_cells: list[float | None] = [None] * 4
        if plain is not None and phase not in ("data", "keygen", OUTSIDE):
            plain_cells = [_median(plain, total), _median(plain, training)]
            plain_cells.append(_median(plain, evaluation))
            plain_cells.append(plain_cells[0] - plain_cells[1] - plain_cells[2])
        line += "".join(f"{_seconds(c):>{w}}" for c, w in zip(plain_cells, (10, 8, 8, 8)))
        print(line + f"{_ratio(cells[0], plain_cells[0]):>8}")


def print_work(arena: list[Tally], plain: list[Tally] | None) -> None:
    print(f"{'work (all phases)':<42}{'arena s':>9}{'plain s':>9}{'arena - plain':>15}")
    for kind in (*SHARED, *ARENA_ONLY, REST):

        def seconds(tally: Tally, kind: str = kind) -> float:
            return tally.rest() if kind == REST else tally.work_total(kind)

        arena_seconds = _median(arena, seconds)
        plain_seconds = _median(plain, seconds) if plain is not None else None
        if kind == REVERSAL and not arena_seconds and not plain_seconds:
            continue
        gap = arena_seconds - (plain_seconds or 0.0)
        print(f"{kind:<42}{arena_seconds:>9.2f}{_seconds(plain_seconds):>9}{gap:>+15.2f}")
    arena_total = _median(arena, lambda tally: tally.wall)
    plain_total = _median(plain, lambda tally: tally.wall) if plain is not None else None
    gap = arena_total - (plain_total or 0.0)
    print(f"{'total':<42}{arena_total:>9.2f}{_seconds(plain_total):>9}{gap:>+15.2f}")


def print_counts(arena: Tally, plain: Tally | None) -> None:
    for what, attribute in (("optimizer steps", "steps"), ("forward passes", "forwards"),
                            ("images forwarded", "images")):  # fmt: skip
        mine = getattr(arena, attribute)
        if plain is None:
            print(f"{what}: arena {mine}")
        else:
            theirs = getattr(plain, attribute)
            same = "same" if mine == theirs else "DIFFERENT"
            print(f"{what}: arena {mine}, plain {theirs} ({same})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="smoke", choices=sorted(PROTOCOLS))
    parser.add_argument("--defense", default="backdoor-wm")
    parser.add_argument("--attack", default="rtal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side")
    parser.add_argument("--no-command", action="store_true", help="do not time arena run")
    parser.add_argument("--profile", action="store_true", help="one more match under cProfile")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    protocol = get_protocol(args.protocol)
    threads = apply_deterministic_defaults()  # what the arena command sets, for both sides
    # The plain side's copy of the data goes to a throwaway home, never the user's.
    with tempfile.TemporaryDirectory(prefix="arena-profile-") as home, _home(Path(home)):
        setup = plain_setup(args, protocol)
        print(
            f"{args.attack} vs {args.defense} on {protocol.label} ({protocol.model}), seed "
            f"{args.seed}; device {default_device()}, {threads} thread(s) "
            f"({os.cpu_count()} CPUs), {args.repeats} timed run(s) of each side"
        )
        if setup is None:
            print(
                f"no plain equivalent of {args.defense} / {args.attack} here (defenses: "
                f"{', '.join(PLAIN_DEFENSES)}; attacks: {', '.join(PLAIN_ATTACKS)}): "
                "the arena's breakdown only"
            )
        plain_total = compare(args, setup)
        if not args.no_command:
            report_command(args, plain_total)
        if args.profile:
            profiler = cProfile.Profile()
            arena_match(args, args.protocol, profiler)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print("\narena side under cProfile (one more match; the profiler inflates times):")
            print(text.getvalue())


def compare(args: argparse.Namespace, setup: PlainSetup | None) -> float | None:
    """Warm up, time both sides (alternating), print the tables; the plain loop's median
    seconds, or None without one."""
    arena_match(args, "smoke")  # warm-up: every arena code path, imported and run once
    if setup is not None:
        plain_match(setup, max_steps=3)  # warm-up: this protocol's kernels, for both sides
    arena_runs: list[Tally] = []
    plain_runs: list[Tally] = []
    for repeat in range(args.repeats):
        for side in ("arena", "plain") if repeat % 2 == 0 else ("plain", "arena"):
            if side == "arena":
                tally, record, arena_models = arena_match(args, args.protocol)
                arena_runs.append(tally)
            elif setup is not None:
                tally, plain_models = plain_match(setup)
                plain_runs.append(tally)
    plain = plain_runs or None
    print()
    print_phases(arena_runs, plain)
    print()
    print_work(arena_runs, plain)
    print()
    print_counts(arena_runs[-1], plain_runs[-1] if plain else None)
    if plain is not None:
        differences = [
            f"{kind} {largest_difference(arena_models[kind], plain_models[kind]):.3g}"
            for kind in ("clean", "marked", "attacked")
        ]
        print("largest weight difference, arena vs plain: " + ", ".join(differences))
    print(f"the match's verdict: attack succeeded {record.attack_succeeded} ({record.outcome})")
    arena_total = _median(arena_runs, lambda tally: tally.wall)
    print(f"\narena match (play_match, empty cache): {arena_total:.2f} s")
    if plain is not None:
        plain_total = _median(plain, lambda tally: tally.wall)
        print(f"plain PyTorch loop, same steps:       {plain_total:.2f} s")
        print(f"ratio match / plain: {arena_total / plain_total:.3f}")
        same_work = _median(arena_runs, _shared_work) / _median(plain, _shared_work)
        print(f"ratio of the work both do ({', '.join(SHARED)}): {same_work:.3f}")
        return plain_total
    return None


def _shared_work(tally: Tally) -> float:
    return sum(tally.work_total(kind) for kind in SHARED)


def report_command(args: argparse.Namespace, plain_total: float | None) -> None:
    """``arena run`` as a user types it, and what it imports."""
    command = time_command(args)
    phases = command["record"].seconds["total"]
    print(f"\n$ arena {' '.join(command['command'][1:])}  (from an empty ARENA_HOME)")
    print(f"  wall {command['wall']:.2f} s, of which the match's phases {phases:.2f} s")
    if plain_total is not None:
        print(f"  ratio arena run / plain loop: {command['wall'] / plain_total:.3f}")
    print(f"  the rest, {command['wall'] - phases:.2f} s: start, imports, resolving, printing")
    for label, seconds in time_imports(args).items():
        print(f"  {label}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
