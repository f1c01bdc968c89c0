"""Le Merrer, Pérez, Trédan, "Adversarial frontier stitching for remote neural network
watermarking", Neural Computing and Applications 32, 2020 (arXiv:1711.01894).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.estimators import art_classifier, input_gradients_only
from arena.core.keys import MAX_TRIGGERS, TriggerKey
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import predict
from arena.util.errors import ArenaError
from defenses.trigger_set import MAX_MARK_EPOCHS, TriggerSetDefense


@dataclass(frozen=True)
class FrontierParams:
    trigger_size: int | None = param(
        None,
        help="|K|, half true and half false adversaries (even); None: the protocol's",
        min=2,
        max=MAX_TRIGGERS,
    )
    eps: float = param(
        0.25, help="FGSM step in [0, 1] pixel units: the paper's MNIST setting", above=0, max=1
    )
    epochs: int | None = param(
        None, help="marking epochs; None: the protocol's mark_epochs", min=1, max=MAX_MARK_EPOCHS
    )
    lr: float | None = param(None, help="learning rate; None: the protocol's mark_lr", above=0)
    triggers_per_batch: int | None = param(
        None,
        help="trigger images in every batch; None: the protocol's mark_triggers_per_batch",
        min=1,
        max=MAX_TRIGGERS,
    )
    subsets: int = param(1, help="disjoint trigger subsets, one revealed per verification", min=1)

    def check(self) -> None:
        if self.trigger_size is not None and self.trigger_size % 2:
            raise ValueError(f"trigger_size must be even, got {self.trigger_size}")


@register_defense("frontier-stitching")
class FrontierStitching(TriggerSetDefense):
    """Adversarial frontier stitching (Le Merrer et al. 2020): a model-dependent key.

    KeyGen runs ART's FGSM (eps 0.25, the paper's MNIST value, halved until both kinds
    below turn up, as a weak model flips nearly every image at 0.25) on the owner's trained
    clean model over images of the owner's split and keeps, half and half, *true
    adversaries* (the clean model now errs) and *false adversaries* (it still answers
    right), all with their TRUE labels. Mark fine-tunes the clean model on the owner's
    data with the key in every batch (the protocol's ``mark_*`` budget), which stitches
    the decision frontier around the true adversaries. Evidence: key agreement against
    the paper's null 0.5 (its threshold comes from Binomial(|K|, 0.5)). Independent
    clean models answer many of these near-boundary images right, and some more often than
    others, so 0.5 is not a sound null: ``arena calibrate --defense frontier-stitching``
    fits a beta-binomial to clean models' agreement, and verification uses it. The key
    carries true labels, so the public label check of
    ``arena verify --public`` rejects it by design: this scheme verifies privately.
    """

    family = "trigger set (model-dependent: FGSM adversaries with true labels)"
    paper = "Le Merrer et al., Neural Computing and Applications 2020"
    Params = FrontierParams
    # Its keys carry true labels by design, so clean models agree with them and the
    # public label check would reject every honest key: it does not apply. For the same
    # reason clean models differ in how often they agree: the null is fitted.
    labels_independent = False
    exact_null = False
    starts_from = "clean"

    def null_p(self, ctx: Context) -> float:
        return 0.5

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        size = self.params.trigger_size or ctx.protocol.trigger_size
        size += size % 2
        model = ctx.clean_model()
        tried = []
        # The paper's eps can flip nearly every image of a weak model; halve it until
        # FGSM yields both kinds of adversaries.
        for halving in range(5):
            eps = self.params.eps / 2**halving
            key = _adversaries(model, ctx, eps, size)
            if isinstance(key, tuple):
                return key
            tried.append(f"eps {eps:g}: {key}")
        raise ArenaError(
            f"FGSM found too few true or false adversaries for {size // 2} of each ("
            + "; ".join(tried)
            + "); change eps"
        )

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        return self.continue_training(model, key, ctx, "stitch frontier")


def _adversaries(
    model: nn.Module, ctx: Context, eps: float, size: int
) -> tuple[np.ndarray, np.ndarray] | str:
    """``size`` key images, half true and half false adversaries, with their true labels;
    or a note of what FGSM found when it is not enough."""
    owner = ctx.splits.owner
    order = torch.as_tensor(ctx.rng("keygen").permutation(len(owner)))
    attack = _fgsm(model, ctx, eps)
    kinds: dict[bool, list[tuple[np.ndarray, int]]] = {True: [], False: []}
    for start in range(0, len(order), 4 * size):
        index = order[start : start + 4 * size]
        labels = owner.labels[index]
        with input_gradients_only(model):
            perturbed = attack.generate(owner.images[index].numpy())
        images = np.round(perturbed * 255).clip(0, 255).astype(np.uint8)  # key images are uint8
        answers = predict(model, torch.as_tensor(images).float() / 255, ctx.device)
        for image, label, wrong in zip(images, labels.tolist(), (answers != labels).tolist()):
            kinds[wrong].append((image, label))
        if min(len(kinds[True]), len(kinds[False])) >= size // 2:
            chosen = kinds[True][: size // 2] + kinds[False][: size // 2]
            rows = ctx.rng("keygen-order").permutation(len(chosen))
            return (
                np.stack([chosen[i][0] for i in rows]),
                np.array([chosen[i][1] for i in rows], dtype=np.int64),
            )
    return f"{len(kinds[True])} true, {len(kinds[False])} false"


def _fgsm(model: nn.Module, ctx: Context, eps: float):
    from art.attacks.evasion import FastGradientMethod

    classifier = art_classifier(model, ctx.protocol, ctx.device)
    return FastGradientMethod(classifier, eps=eps, batch_size=256)
