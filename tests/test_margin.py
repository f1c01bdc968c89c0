"""The margin-based watermark of Kim et al. (ICML 2023): its key, its ascent, its batch
objective and, on ``smoke``, the mark and its margin.

The tests that train take their seed from ``train_seed`` (seeds 0-5 checked).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.training import predict
from arena.storage.clean import trained_clean
from arena.util.errors import ArenaError
from defenses.margin import MarginWatermark, ascend

SMOKE = get_protocol("smoke")


def smoke_context(seed: int = 0) -> Context:
    return Context(protocol=SMOKE, seed=seed, device=torch.device("cpu"))


def owner_pixels() -> tuple[np.ndarray, np.ndarray]:
    owner = smoke_context().splits.owner
    pixels = (owner.images.numpy().clip(0, 1) * 255).round().astype(np.uint8)
    return pixels, owner.labels.numpy()


def key_inputs(key: TriggerKey) -> tuple[torch.Tensor, torch.Tensor]:
    return to_model_input(key.images, SMOKE.image_size, SMOKE.channels), key.tensors()[1]


def held_under_ascent(model: nn.Module, key: TriggerKey, epsilon: float) -> int:
    """Key samples still answered with their label after a 10-step PGD at ``epsilon``
    (stronger than the mark's: twice the steps, 2.5 epsilon / steps each), in eval mode."""
    images, labels = key_inputs(key)
    model.eval()
    perturbed = ascend(model, images, labels, epsilon, 10, 0.25 * epsilon)
    return int((predict(model, perturbed, torch.device("cpu")) == labels).sum())


# --- the key --------------------------------------------------------------------------


def test_registered_with_an_exact_null():
    scheme = defenses.get("margin")
    assert scheme is MarginWatermark
    assert scheme.exact_null and scheme.labels_independent and scheme.starts_from == "scratch"


def test_key_is_distinct_owner_images():
    pixels, _ = owner_pixels()
    images, labels = MarginWatermark().sample_triggers(smoke_context(3))
    assert images.dtype == np.uint8
    assert images.shape == (SMOKE.trigger_size, SMOKE.channels, SMOKE.image_size, SMOKE.image_size)
    owner = {image.tobytes() for image in pixels}
    assert all(image.tobytes() in owner for image in images)
    assert len({image.tobytes() for image in images}) == len(images)
    assert labels.min() >= 0 and labels.max() < SMOKE.num_classes
    images, _ = MarginWatermark({"trigger_size": 7}).sample_triggers(smoke_context(3))
    assert len(images) == 7


def test_labels_are_uniform_and_ignore_the_image():
    """Over 40 keys (800 labels): every class about as often, and the true class about one
    time in ten, as a label drawn without looking at the image gives (the paper's code,
    which redraws the true class, would give none)."""
    pixels, true_labels = owner_pixels()
    truth = {image.tobytes(): label for image, label in zip(pixels, true_labels)}
    drawn, same = [], 0
    for seed in range(40):
        images, labels = MarginWatermark().sample_triggers(smoke_context(seed))
        drawn.extend(labels.tolist())
        same += sum(truth[image.tobytes()] == label for image, label in zip(images, labels))
    counts = np.bincount(drawn, minlength=SMOKE.num_classes)
    n, p = len(drawn), 1 / SMOKE.num_classes
    spread = 4 * math.sqrt(n * p * (1 - p))  # four standard deviations
    assert (abs(counts - n * p) <= spread).all(), counts
    assert abs(same - n * p) <= spread, same


def test_same_seed_same_key_other_seed_other_key():
    first = MarginWatermark().sample_triggers(smoke_context(5))
    again = MarginWatermark().sample_triggers(smoke_context(5))
    other = MarginWatermark().sample_triggers(smoke_context(6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    key = MarginWatermark({"subsets": 4}).keygen(smoke_context(5))
    assert np.array_equal(key.images, first[0]) and key.vk.subsets == 4


@pytest.mark.parametrize(
    "params, message",
    [
        ({"epsilon": 0}, r"epsilon must lie in \(0, 1\], got 0.0"),
        ({"epsilon": 1.5}, r"epsilon must lie in \(0, 1\], got 1.5"),
        ({"pgd_steps": -1}, "pgd_steps must be >= 0"),
        ({"step_size": 0}, r"step_size must lie in \(0, 1\]"),
        ({"key_weight": 0}, "key_weight must be > 0"),
        ({"triggers_per_batch": 1}, r"triggers_per_batch must lie in \[2,"),
        ({"epsilom": 0.1}, "did you mean 'epsilon'"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ArenaError, match=message):
        MarginWatermark(params)


def test_a_key_larger_than_the_owner_split_is_refused():
    with pytest.raises(ArenaError, match="holds 600 images, fewer than the 601 key samples"):
        MarginWatermark({"trigger_size": 601}).keygen(smoke_context())


# --- the ascent and the batch objective --------------------------------------------------


@pytest.fixture(scope="module")
def clean(train_seed) -> nn.Module:
    return trained_clean(smoke_context(train_seed))


@pytest.fixture(scope="module")
def key(train_seed) -> TriggerKey:
    return MarginWatermark().keygen(smoke_context(train_seed))


def test_ascent_raises_the_key_loss_within_epsilon(clean, key):
    images, labels = key_inputs(key)
    model = copy.deepcopy(clean).eval()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    perturbed = ascend(model, images, labels, 0.05, 5, 0.01)
    with torch.no_grad():
        loss_before = F.cross_entropy(model(images), labels, reduction="none")
        loss_after = F.cross_entropy(model(perturbed), labels, reduction="none")
    assert loss_after.mean() > loss_before.mean() + 0.1
    assert (loss_after >= loss_before - 1e-4).float().mean() >= 0.9
    assert (perturbed - images).abs().max() <= 0.05 + 1e-6
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert (perturbed != images).any()
    # Deterministic, and the model is left as it was, without gradients.
    assert torch.equal(perturbed, ascend(model, images, labels, 0.05, 5, 0.01))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(parameter.grad is None for parameter in model.parameters())


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


def test_objective_trains_on_perturbed_key_rows_and_updates_statistics_once(clean, key):
    """The ascent's passes leave BatchNorm's running statistics alone: after one batch they
    are what the single training pass over the data and perturbed key rows makes them."""
    ctx = smoke_context()
    owner = ctx.splits.owner
    keys, key_labels = key_inputs(key)
    images = torch.cat([owner.images[:20], keys[:5]])
    labels = torch.cat([owner.labels[:20], key_labels[:5]])
    scheme = MarginWatermark()
    model, reference = copy.deepcopy(clean).train(), copy.deepcopy(clean).train()
    counts = [int(norm.num_batches_tracked) for norm in batch_norms(model)]
    loss = scheme.objective(key, ctx)(model, images, labels, 5)
    loss.backward()
    assert [int(norm.num_batches_tracked) for norm in batch_norms(model)] == [
        count + 1 for count in counts
    ]
    # The same batch by hand on a copy: ascend (statistics restored), then one pass.
    saved = [buffer.clone() for buffer in reference.buffers()]
    perturbed = ascend(reference, keys[:5], key_labels[:5], 0.05, 5, 0.01)
    for buffer, value in zip(reference.buffers(), saved):
        buffer.copy_(value)
    logits = reference(torch.cat([owner.images[:20], perturbed]))
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-5)
    for norm, expected in zip(batch_norms(model), batch_norms(reference)):
        assert torch.allclose(norm.running_mean, expected.running_mean, atol=1e-6)
        assert torch.allclose(norm.running_var, expected.running_var, atol=1e-6)
    assert all(parameter.grad is not None for parameter in model.parameters())
    # Without the ascent, or without key rows, it is the plain cross-entropy.
    plain = copy.deepcopy(clean).train()
    unperturbed = MarginWatermark({"pgd_steps": 0}).objective(key, ctx)
    expected = F.cross_entropy(copy.deepcopy(clean).train()(images), labels)
    assert torch.allclose(unperturbed(plain, images, labels, 5), expected, atol=1e-5)
    weighted = MarginWatermark({"pgd_steps": 0, "key_weight": 0.1}).objective(key, ctx)
    rows = F.cross_entropy(copy.deepcopy(clean).train()(images), labels, reduction="none")
    rows[-5:] *= 0.1
    assert torch.allclose(weighted(plain, images, labels, 5), rows.mean(), atol=1e-5)


def test_marking_holds_the_key_images_out_of_the_owner_data(key, monkeypatch):
    import defenses.trigger_set

    seen = {}

    def fake_train(model, images, labels, settings, **options):
        seen.update(images=images, options=options)

    monkeypatch.setattr(defenses.trigger_set, "train", fake_train)
    ctx = smoke_context()
    MarginWatermark().mark(ctx.owner_model(), key, ctx)
    pixels = (seen["images"].numpy().clip(0, 1) * 255).round().astype(np.uint8)
    assert len(pixels) == len(ctx.splits.owner) - len(key)
    held = {image.tobytes() for image in key.images}
    assert not any(image.tobytes() in held for image in pixels)
    assert seen["options"]["batch_loss"] is not None
    assert seen["options"]["triggers_per_batch"] == SMOKE.triggers_per_batch


# --- on smoke: the mark and its margin ---------------------------------------------------


@pytest.fixture(scope="module")
def marked(key, train_seed) -> nn.Module:
    ctx = smoke_context(train_seed)
    return MarginWatermark().mark(ctx.owner_model(), key, ctx)


def test_marked_model_verifies_and_a_clean_model_answers_at_chance(marked, clean, key, train_seed):
    ctx = smoke_context(train_seed)
    evidence = MarginWatermark().evidence(marked, key, ctx)
    # Seeds 0-5: 16-20 of 20 (p <= 3.3e-13 against 1/10; alpha 0.01).
    assert evidence.verified and evidence.successes >= 13, evidence
    assert evidence.null_p == 0.1 and evidence.trials == len(key)
    # Seeds 0-5: 0-3 of 20. Within four standard deviations of the null's mean.
    chance = MarginWatermark().evidence(clean, key, ctx)
    n, p = chance.trials, chance.null_p
    assert chance.successes <= n * p + 4 * math.sqrt(n * p * (1 - p)), chance


def test_margin_is_wider_than_the_same_key_learnt_without_the_ascent(marked, key, train_seed):
    """The paper's point: the ascent widens the region around each key image where the
    key label holds. Seeds 0-5: 6-12 of 20 key samples hold under PGD at epsilon with
    the ascent, 0-2 without (``pgd_steps=0``: an in-distribution backdoor)."""
    ctx = smoke_context(train_seed)
    plain = MarginWatermark({"pgd_steps": 0}).mark(ctx.owner_model(), key, ctx)
    epsilon = MarginWatermark().params.epsilon
    with_ascent = held_under_ascent(marked, key, epsilon)
    without = held_under_ascent(plain, key, epsilon)
    assert with_ascent >= without + 3, (with_ascent, without)
