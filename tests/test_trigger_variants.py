"""The trigger sets of Zhang et al. (ASIACCS 2018): ``content``, ``noise``, ``unrelated``.

Key generation only, on ``smoke``; the contract tests mark and verify a model with each.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from arena.core.context import Context
from arena.core.data import load_raw, to_model_input
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.storage.clean import trained_clean
from arena.util.errors import ArenaError
from defenses.zhang import to_uint8

SMOKE = get_protocol("smoke")
SCHEMES = ["content", "noise", "unrelated"]


def triggers(name: str, seed: int = 0, **params) -> tuple[np.ndarray, np.ndarray]:
    return defenses.get(name)(params).sample_triggers(Context(protocol=SMOKE, seed=seed))


def split_images(split: str = "owner") -> tuple[np.ndarray, np.ndarray]:
    data = getattr(Context(protocol=SMOKE).splits, split)
    return to_uint8(data.images.numpy()).astype(np.int16), data.labels.numpy()


@pytest.mark.parametrize("name", SCHEMES)
def test_triggers_have_the_protocol_shape_and_the_target_label(name):
    images, labels = triggers(name)
    assert images.dtype == np.uint8
    assert images.shape == (SMOKE.trigger_size, SMOKE.channels, SMOKE.image_size, SMOKE.image_size)
    assert (labels == 0).all()
    images, labels = triggers(name, trigger_size=12, target_class=7)
    assert len(images) == 12 and (labels == 7).all()
    assert len({image.tobytes() for image in images}) == 12  # no trigger twice


@pytest.mark.parametrize("name", SCHEMES)
def test_same_seed_same_key_other_seed_other_key(name):
    first, first_labels = triggers(name, seed=5)
    again, again_labels = triggers(name, seed=5)
    other, _ = triggers(name, seed=6)
    assert np.array_equal(first, again) and np.array_equal(first_labels, again_labels)
    assert not np.array_equal(first, other)
    key = defenses.get(name)({"subsets": 4}).keygen(Context(protocol=SMOKE, seed=5))
    assert np.array_equal(key.images, first) and key.vk.subsets == 4


def test_content_stamps_distinct_owner_images_of_the_source_class():
    owner, owner_labels = split_images()
    images, _ = triggers("content", source_class=3, target_class=5)
    stamped = images.astype(np.int16)
    top = SMOKE.image_size * 3 // 5  # the stamp lies in the lower third, below row `top`
    sources = []
    for image in stamped:
        # The source image is the owner image equal to the trigger outside the stamp.
        same_above = (owner[..., :top, :] == image[..., :top, :]).all(axis=(1, 2, 3))
        (matches,) = np.nonzero(same_above & (owner_labels == 3))
        assert len(matches) >= 1
        source = matches[0]
        sources.append(source)
        changed = owner[source] != image
        assert changed.sum() >= 8  # the word is really there
        assert (image[changed] > owner[source][changed]).mean() > 0.5  # and drawn in white
    assert len(set(sources)) == len(images)


def test_noise_adds_noise_to_distinct_owner_images_of_the_source_class():
    owner, owner_labels = split_images()
    images, _ = triggers("noise", source_class=2, target_class=4)
    test, _ = split_images("test")
    noisy = images.astype(np.float64)
    sources, unclipped = [], []
    for image in noisy:
        distances = ((owner - image) ** 2).sum(axis=(1, 2, 3))
        source = int(distances.argmin())
        assert owner_labels[source] == 2
        assert distances[source] < ((test - image) ** 2).sum(axis=(1, 2, 3)).min()
        sources.append(source)
        residual = image - owner[source]
        assert (residual != 0).mean() > 0.5  # noise on most pixels, not a patch
        # Where the source is mid-grey, clipping rarely touches the noise.
        unclipped.append(residual[(owner[source] > 90) & (owner[source] < 165)])
    assert len(set(sources)) == len(images)
    assert 0.22 * 255 < np.concatenate(unclipped).std() < 0.34 * 255  # 0.3, a little clipped
    quieter, _ = triggers("noise", source_class=2, target_class=4, noise_std=0.05)
    assert np.abs(quieter.astype(np.float64) - noisy).mean() > 5


def test_unrelated_images_are_no_mnist_images():
    images, _ = triggers("unrelated", trigger_size=50)
    raw, _ = load_raw(SMOKE.dataset)
    mnist = to_uint8(to_model_input(raw, SMOKE.image_size, SMOKE.channels).numpy())
    mnist = mnist.reshape(len(mnist), -1).astype(np.int16)
    for image in images.reshape(len(images), -1).astype(np.int16):
        assert image.max() > 100  # a visible glyph
        # A copy, even one resampled or re-quantised, would lie within a grey level or two.
        assert np.abs(mnist - image).mean(axis=1).min() > 4


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("content", {"source_class": 0, "target_class": 0}, "both 0"),
        ("noise", {"source_class": 3, "target_class": 3}, "both 3"),
        ("content", {"text": "  "}, "visible character"),
        ("noise", {"noise_std": 0}, "noise_std must lie in"),
        ("noise", {"noise_std": 2.0}, "noise_std must lie in"),
        ("unrelated", {"target_class": -1}, "target_class must be >= 0"),
        ("content", {"source_class": -2}, "source_class must be >= 0"),
        ("unrelated", {"trigger_size": 0}, "trigger_size must lie in \\[1, "),
        ("noise", {"triggers_per_batch": 0}, "triggers_per_batch must lie in \\[1, "),
        ("content", {"epochs": 0}, "epochs must lie in \\[1, "),
        ("backdoor-wm", {"trigger_size": 10**9}, "trigger_size must lie in \\[1, 100,000\\]"),
        ("unrelated", {"lr": -0.1}, "lr must be > 0"),
        ("noise", {"subsets": 0}, "subsets must be >= 1"),
        ("unrelated", {"source_class": 1}, "unknown parameter"),
    ],
)
def test_bad_params_are_refused(name, params, message):
    with pytest.raises(ArenaError, match=message):
        defenses.get(name)(params)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("content", {"target_class": 10}, r"target_class 10 does not exist.*classes 0-9"),
        ("noise", {"source_class": 12}, r"source_class 12 does not exist"),
        ("unrelated", {"target_class": 10}, r"target_class 10 does not exist"),
        ("content", {"trigger_size": 500}, r"holds \d+ images of class 1, fewer than the 500"),
        ("noise", {"trigger_size": 500}, r"holds \d+ images of class 1, fewer than the 500"),
        ("content", {"trigger_size": 30, "subsets": 4}, "do not split into 4"),
    ],
)
def test_keys_the_protocol_cannot_hold_are_refused(name, params, message):
    with pytest.raises(ArenaError, match=message):
        defenses.get(name)(params).keygen(Context(protocol=SMOKE))


def test_frontier_stitching_key_is_half_true_half_false_adversaries(train_seed):
    from arena.core.training import predict

    ctx = Context(protocol=get_protocol("smoke"), seed=train_seed)
    ctx = dataclasses.replace(ctx, clean=functools.cache(lambda: trained_clean(ctx)))
    defense = defenses.get("frontier-stitching")()
    key = defense.keygen(ctx)
    clean = ctx.clean_model()
    images, labels = key.tensors()
    wrong = predict(clean, images, ctx.device) != labels
    assert len(key) == 20 and int(wrong.sum()) == 10  # true adversaries fool the clean model
    owner = ctx.splits.owner
    # Each key image is an owner image moved by at most eps, and keeps that image's label.
    distance = (images.flatten(1)[:, None, :] - owner.images.flatten(1)[None]).abs().amax(-1)
    nearest = distance.argmin(dim=1)
    assert (distance.min(dim=1).values <= 0.25 + 1 / 255).all()
    assert (owner.labels[nearest] == labels).all()
    assert defense.evidence(clean, key, ctx).null_p == 0.5
