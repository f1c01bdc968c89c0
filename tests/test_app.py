"""APP (Gan et al., ICCV 2023): the adversarial weight perturbation, the objective built on
it, its BatchNorm handling, the key, the parameters, and a mark on ``smoke``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.models import create_model
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.storage.clean import trained_clean
from arena.util.errors import ArenaError
from defenses.app import (
    adversarial_perturbation,
    app_loss,
    batch_statistics_of,
    perturbed_parameters,
    perturbed_weights,
    watermark_loss,
)

SMOKE = get_protocol("smoke")
KEY_ROWS = 5


def smoke_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """45 owner's images with 5 key images appended, as the training loop hands them."""
    ctx = Context(protocol=SMOKE, seed=seed)
    images, labels = defenses.get("app")().sample_triggers(ctx)
    owner = ctx.splits.owner
    key_images = to_model_input(images[:KEY_ROWS], SMOKE.image_size, SMOKE.channels)
    key_labels = torch.as_tensor(labels[:KEY_ROWS], dtype=torch.long)
    return torch.cat([owner.images[:45], key_images]), torch.cat([owner.labels[:45], key_labels])


def smoke_model(seed: int = 0) -> nn.Module:
    """A fresh smoke model in training mode whose every weight has a gradient: timm zeroes
    the scale of each residual block's last BatchNorm, cutting its branch off until it
    has trained."""
    model = Context(protocol=SMOKE, seed=seed).new_model()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return model.train()


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The running means and variances (BatchNorm counts its batches itself)."""
    return {name: tensor for name, tensor in buffers(model).items() if "num_batches" not in name}


def same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        torch.allclose(first[name].float(), second[name].float(), atol=1e-6) for name in first
    )


def gradients(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, parameters = zip(*model.named_parameters(), strict=True)
    return dict(zip(names, torch.autograd.grad(loss, parameters, allow_unused=True), strict=True))


# --- the perturbation --------------------------------------------------------------------


@pytest.mark.parametrize("clean_batchnorm", [False, True])
def test_the_perturbation_stays_in_each_layers_ball_and_raises_the_watermark_loss(
    clean_batchnorm,
):
    model, (images, labels) = smoke_model(), smoke_batch()
    before = buffers(model)
    epsilon = 0.02
    delta = adversarial_perturbation(model, images, labels, KEY_ROWS, epsilon, clean_batchnorm)

    parameters = dict(model.named_parameters())
    normalisation = {
        name
        for name in parameters
        if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.BatchNorm2d)
    }
    assert normalisation and not normalisation & delta.keys()  # BatchNorm is not perturbed
    assert set(delta) == set(perturbed_parameters(model)) == set(parameters) - normalisation
    for name, step in delta.items():
        # On the sphere of the relative ball, not inside it: one full step.
        ratio = float(step.norm() / (epsilon * parameters[name].detach().norm()))
        assert ratio == pytest.approx(1.0, rel=1e-4), name
        assert not step.requires_grad

    def loss_at(steps: dict[str, torch.Tensor]) -> float:
        weights = perturbed_weights(model, steps)
        return float(
            watermark_loss(model, images, labels, KEY_ROWS, clean_batchnorm, weights).detach()
        )

    at_w = float(watermark_loss(model, images, labels, KEY_ROWS, clean_batchnorm).detach())
    generator = torch.Generator().manual_seed(0)
    random = {}
    for name, step in delta.items():
        noise = torch.randn(step.shape, generator=generator)
        random[name] = noise * step.norm() / noise.norm()
    # The ascent step raises the key images' loss, and far more than a random step of the
    # same size in every layer does.
    assert loss_at(delta) > at_w + 0.5
    assert loss_at(delta) - at_w > 5 * abs(loss_at(random) - at_w)
    assert same(before, buffers(model))  # no running statistics, no batch counts changed


def test_frozen_parameters_and_zero_gradients_make_no_step():
    model, (images, labels) = smoke_model(), smoke_batch()
    model.fc.weight.requires_grad_(False)  # not trained, so not perturbed
    delta = adversarial_perturbation(model, images, labels, KEY_ROWS, 0.02)
    assert "fc.weight" not in delta and "fc.bias" in delta
    # A model that answers every key image with its label at certainty has no gradient:
    # no step, and no division by zero.
    agreed = labels.clone()
    agreed[-KEY_ROWS:] = labels[-1]
    with torch.no_grad():
        model.fc.bias.copy_(F.one_hot(labels[-1], 10).float() * 1e4)
    delta = adversarial_perturbation(model, images, agreed, KEY_ROWS, 0.02)
    assert delta and all(torch.equal(step, torch.zeros_like(step)) for step in delta.values())
    model.fc.bias.data.mul_(1e3)  # a norm of 1e7: scaled before divided, 0 * inf = nan
    delta = adversarial_perturbation(model, images, agreed, KEY_ROWS, 0.02)
    assert torch.equal(delta["fc.bias"], torch.zeros_like(delta["fc.bias"]))


# --- the objective -----------------------------------------------------------------------


def test_the_objective_is_the_batch_loss_plus_the_perturbed_key_loss():
    model, (images, labels) = smoke_model(), smoke_batch()
    share = KEY_ROWS / len(images)
    weight = 2.0
    state = copy.deepcopy(model.state_dict())

    loss = app_loss(model, images, labels, KEY_ROWS, epsilon=0.02, watermark_weight=weight)
    model.load_state_dict(state)
    plain = F.cross_entropy(model(images), labels)
    model.load_state_dict(state)
    delta = adversarial_perturbation(model, images, labels, KEY_ROWS, 0.02)
    perturbed = watermark_loss(
        model, images, labels, KEY_ROWS, weights=perturbed_weights(model, delta)
    )
    assert float(loss) == pytest.approx(float(plain + weight * share * perturbed), rel=1e-5)

    # Its gradient is not cross-entropy's, nor that of the same objective unperturbed:
    # the perturbation, not the extra weight on the key, changes it.
    model.load_state_dict(state)
    app = gradients(
        model, app_loss(model, images, labels, KEY_ROWS, epsilon=0.02, watermark_weight=weight)
    )
    model.load_state_dict(state)
    flat = gradients(
        model, app_loss(model, images, labels, KEY_ROWS, epsilon=0.0, watermark_weight=weight)
    )
    model.load_state_dict(state)
    cross_entropy = gradients(model, F.cross_entropy(model(images), labels))
    perturbed_names = perturbed_parameters(model)
    for other in (flat, cross_entropy):
        difference = sum(float((app[name] - other[name]).norm()) for name in perturbed_names)
        assert difference > 1e-3 * sum(float(app[name].norm()) for name in perturbed_names)
    # BatchNorm's scale and shift get the task loss's gradient only (the authors' freeze_bn).
    for name in set(app) - set(perturbed_names):
        assert torch.allclose(app[name], cross_entropy[name], atol=1e-6), name


@pytest.mark.parametrize("clean_batchnorm", [False, True])
def test_the_objective_updates_the_running_statistics_once(clean_batchnorm):
    model, (images, labels) = smoke_model(), smoke_batch()
    reference = copy.deepcopy(model)
    app_loss(
        model,
        images,
        labels,
        KEY_ROWS,
        epsilon=0.02,
        watermark_weight=1.0,
        clean_batchnorm=clean_batchnorm,
    )
    # As one ordinary forward pass: of the whole batch, or under c-BN of the owner's
    # images alone (the statistics the key images were normalised with).
    reference(images if not clean_batchnorm else images[:-KEY_ROWS])
    assert same(buffers(model), buffers(reference))


def test_without_key_images_the_objective_is_cross_entropy():
    model, (images, labels) = smoke_model(), smoke_batch()
    loss = app_loss(model, images, labels, 0, epsilon=0.02, watermark_weight=1.0)
    assert float(loss) == pytest.approx(float(F.cross_entropy(model(images), labels)), rel=1e-5)


# --- c-BN --------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["test_resnet.r160_in1k", "test_efficientnet.r160_in1k"])
def test_c_bn_normalises_every_row_with_the_owners_images_statistics(architecture):
    """torch's BatchNorm2d (resnet) and timm's BatchNormAct2d (efficientnet) alike."""
    torch.manual_seed(0)
    model = create_model(architecture, num_classes=10, channels=1, image_size=16).train()
    images, _ = smoke_batch()
    rows = len(images) - KEY_ROWS
    changed = images.clone()
    changed[-1] = 1 - changed[-1]
    before = running_statistics(model)
    with torch.no_grad():
        with batch_statistics_of(rows):
            logits, other = model(images), model(changed)
        assert same(before, running_statistics(model))  # not updated unless asked
        alone = model(images[:rows])
    assert torch.allclose(logits[:rows], alone, atol=1e-4)  # the owner's rows: as alone
    # A key row is normalised with the owner's statistics, not the other key rows'.
    assert torch.allclose(logits[:-1], other[:-1], atol=1e-5)
    assert not torch.allclose(logits[-1], other[-1], atol=1e-3)
    with pytest.raises(ValueError, match="at least one owner's image"):
        with batch_statistics_of(0):
            pass


def test_c_bn_leaves_evaluation_mode_alone():
    model, (images, _) = smoke_model(), smoke_batch()
    model.eval()
    with torch.no_grad():
        plain = model(images)
        with batch_statistics_of(len(images) - KEY_ROWS):
            inside = model(images)
    assert torch.equal(plain, inside)


# --- the key and the parameters ----------------------------------------------------------


def test_the_key_is_the_seed_papers_abstract_images_with_uniform_labels():
    ctx = Context(protocol=SMOKE, seed=3)
    scheme = defenses.get("app")
    assert scheme.exact_null and scheme.labels_independent and scheme.starts_from == "scratch"
    images, labels = scheme().sample_triggers(ctx)
    seed_images, seed_labels = defenses.get("backdoor-wm")().sample_triggers(ctx)
    assert np.array_equal(images, seed_images) and np.array_equal(labels, seed_labels)
    assert images.shape == (SMOKE.trigger_size, 1, SMOKE.image_size, SMOKE.image_size)
    assert images.dtype == np.uint8 and labels.min() >= 0 and labels.max() < SMOKE.num_classes
    key = scheme({"trigger_size": 12, "subsets": 3}).keygen(ctx)
    assert len(key) == 12 and key.vk.subsets == 3


@pytest.mark.parametrize(
    "params, message",
    [
        ({"epsilon": 0}, "epsilon must lie in \\(0, 1\\], got 0"),
        ({"epsilon": 1.5}, "epsilon must lie in \\(0, 1\\], got 1.5"),
        ({"watermark_weight": 0}, "watermark_weight must lie in \\(0, 1,000\\]"),
        ({"watermark_weight": -1}, "watermark_weight must lie in"),
        ({"triggers_per_batch": 0}, "triggers_per_batch must lie in"),
        ({"clean_batchnorm": "maybe"}, "expected true or false"),
        ({"eps": 0.02}, "epsilon"),  # did you mean
    ],
)
def test_invalid_parameters_are_refused(params, message):
    with pytest.raises(ArenaError, match=message):
        defenses.get("app")(params)


# --- a mark on smoke ---------------------------------------------------------------------


def test_the_marked_model_verifies_and_a_clean_model_does_not(train_seed):
    ctx = Context(protocol=SMOKE, seed=train_seed, device=torch.device("cpu"))
    scheme = defenses.get("app")()
    key = scheme.keygen(ctx)
    marked = scheme.mark(ctx.owner_model(), key, ctx)
    evidence = scheme.evidence(marked, key, ctx)
    # Measured on seeds 0-2: 20, 20 and 17 of 20 (chance: 2; verified from 7).
    assert evidence.verified and evidence.successes >= 14, evidence
    # The owner's clean model, same initialisation and data order: 5, 1 and 2 of 20.
    clean = scheme.evidence(trained_clean(ctx), key, ctx)
    assert not clean.verified, clean
