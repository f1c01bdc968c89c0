"""Bansal, Chiang, Curry, Jain, Wigington, Manjunatha, Dickerson and Goldstein, "Certified
Neural Network Watermarks with Randomized Smoothing", ICML 2022.
https://proceedings.mlr.press/v162/bansal22a.html
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.keys import MAX_TRIGGERS, TriggerKey
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.smoothing import Certificate, certify, noisy_agreement
from arena.core.training import BatchLoss, with_budget
from defenses.trigger_set import MAX_MARK_EPOCHS, TriggerSetDefense, abstract_trigger_set


@dataclass(frozen=True)
class CertifiedParams:
    trigger_size: int | None = param(
        None, help="trigger images in the key; None: the protocol's", min=1, max=MAX_TRIGGERS
    )
    triggers_per_batch: int | None = param(
        None,
        help="trigger images in every training batch; None: the protocol's",
        min=1,
        max=MAX_TRIGGERS,
    )
    epochs: int | None = param(
        None, help="marking epochs; None: the protocol's budget", min=1, max=MAX_MARK_EPOCHS
    )
    lr: float | None = param(None, help="learning rate; None: the protocol's", above=0)
    sigma: float = param(
        0.01,
        help="standard deviation of the Gaussian noise on every parameter, while marking "
        "and certifying: wider noise certifies larger weight changes and costs accuracy",
        above=0,
    )
    noise_copies: int = param(
        1, help="noisy copies of the weights the key's loss is averaged over, each step", min=1
    )
    noise_weight: float = param(1.0, help="weight of the key's loss at the noisy weights", min=0)
    certify_samples: int = param(
        1000, help="noisy copies of the marked model the certificate is measured on", min=10
    )
    check_samples: int = param(
        200, help="noisy copies of an attacked model the certificate is checked on", min=10
    )
    confidence: float = param(
        0.999, help="probability with which the certificate holds", above=0.5, below=1
    )
    subsets: int = param(1, help="disjoint trigger subsets, one revealed per verification", min=1)


@register_defense("certified")
class CertifiedWatermark(TriggerSetDefense):
    """A trigger-set watermark with a certificate over weight changes (Bansal et al. 2022).

    KeyGen is the seed paper's (abstract images, labels drawn uniformly and independently
    of every model, so chance agreement is exactly 1/|L| and the null is exact). Mark
    trains from scratch with triggers in every batch, and adds the key's loss at noisy
    weights w + e, e ~ N(0, sigma^2 I) on every parameter, so the mark holds in a ball
    of weights around w rather than at w alone: the paper's embedding, which alternates
    a task step and a step on the key's loss averaged over noisy copies, is folded here
    into one objective per batch (cross-entropy of the batch at w, plus the key rows'
    cross-entropy at w + e, averaged over ``noise_copies``, each key row weighing
    ``noise_weight`` times what it weighs in the batch at w). The
    noisy forward pass sees the whole batch, so BatchNorm's batch statistics are the
    task's, and writes its running statistics to a copy, so they move once per step.

    Evidence is the plain trigger agreement, k of n under the exact binomial. The
    certificate is the paper's: the marked model's noisy copies (``certify_samples``)
    give, for any weight change of l2 norm up to r, a lower bound on the triggers the
    median-smoothed model keeps (``arena.core.smoothing``); every match reports the
    attack's weight change beside it and checks it on the attacked model. The certificate
    is over parameters: an attack that moved BatchNorm's running statistics is outside it.
    The paper's noise level depends on its models and data; ``sigma`` is a parameter.
    """

    family = "trigger set (abstract images, random labels), certified over weights"
    paper = "Bansal et al., ICML 2022"
    Params = CertifiedParams

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return abstract_trigger_set(
            ctx, self.params.trigger_size or ctx.protocol.trigger_size, trigger_dir=None
        )

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        settings = with_budget(ctx.protocol.training, self.params.epochs, self.params.lr)
        per_batch = self.params.triggers_per_batch or ctx.protocol.triggers_per_batch
        return self.train_with_key(model, key, ctx, settings, per_batch, "mark with noise")

    def objective(self, key: TriggerKey, ctx: Context) -> BatchLoss:
        noise = ctx.generator(f"certified:noise:{key.fingerprint}")
        sigma, copies, weight = (
            self.params.sigma,
            self.params.noise_copies,
            self.params.noise_weight,
        )

        def loss(model: nn.Module, images, labels, appended: int) -> torch.Tensor:
            total = F.cross_entropy(model(images), labels)
            if appended == 0 or weight == 0:
                return total
            parameters = dict(model.named_parameters())
            buffers = {name: value.clone() for name, value in model.named_buffers()}
            noisy_losses = []
            for _ in range(copies):
                noisy = {
                    name: value + sigma * _gaussian(value, noise)
                    for name, value in parameters.items()
                }
                logits = functional_call(model, {**noisy, **buffers}, (images,))
                noisy_losses.append(F.cross_entropy(logits[-appended:], labels[-appended:]))
            # Each key row at the noisy weights weighs what it weighs in the batch's mean at
            # w: a plain mean over the few key rows would outweigh the task 20-fold.
            share = appended / len(images)
            return total + weight * share * torch.stack(noisy_losses).mean()

        return loss

    def certificate(self, model: nn.Module, key: TriggerKey, ctx: Context) -> Certificate:
        key.open()
        images, labels = self._key_tensors(key, ctx)
        return certify(
            model,
            images,
            labels,
            sigma=self.params.sigma,
            samples=self.params.certify_samples,
            confidence=self.params.confidence,
            generator=ctx.generator(f"certified:certify:{key.fingerprint}"),
            device=ctx.device,
        )

    def smoothed_agreement(
        self, model: nn.Module, key: TriggerKey, ctx: Context, certificate: Certificate
    ) -> torch.Tensor:
        key.open()
        images, labels = self._key_tensors(key, ctx)
        return noisy_agreement(
            model,
            images,
            labels,
            certificate.sigma,
            self.params.check_samples,
            ctx.generator(f"certified:check:{key.fingerprint}"),
            ctx.device,
        )

    @staticmethod
    def _key_tensors(key: TriggerKey, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels)
        return images, key.tensors()[1]


def _gaussian(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, drawn on the CPU from ``generator`` (so
    a run is reproducible on any device) and moved to ``like``'s device."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
