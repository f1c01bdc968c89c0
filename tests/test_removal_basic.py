"""The weight-editing removal attacks on the smoke protocol: pruning, fine-pruning,
quantization, weight shifting and label smoothing do what their docstrings say."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attacks.removal.common as common
from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.core.registry import attacks
from arena.core.training import TrainReport
from arena.util.errors import ArenaError
from attacks.removal.fine_prune import mean_activations

SMOKE = get_protocol("smoke")


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(protocol=SMOKE, seed=0, device=torch.device("cpu"))


def attack(name: str, **params):
    return attacks.get(name)(params)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def zero_masks(model: nn.Module) -> list[torch.Tensor]:
    return [weight == 0 for weight in weights(model)]


def assert_plain_weights(model: nn.Module) -> None:
    """No pruning reparametrization left: the state dict is a fresh model's."""
    keys = set(model.state_dict())
    assert not any(key.endswith(("_orig", "_mask")) for key in keys)
    assert keys == set(Context(protocol=SMOKE).new_model().state_dict())


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
def test_prune_reaches_global_sparsity_exactly_and_permanently(ctx, sparsity):
    model = ctx.new_model()
    outcome = attack("prune", sparsity=sparsity).run(model, ctx)
    total = sum(weight.numel() for weight in weights(model))
    zeros = sum(int(mask.sum()) for mask in zero_masks(model))
    assert zeros == round(sparsity * total)
    assert outcome.info["zero_weights"] == zeros and outcome.info["weights"] == total
    assert outcome.info["sparsity"] == pytest.approx(sparsity, abs=1 / total)
    assert_plain_weights(model)


def test_prune_fine_tuning_keeps_the_pruned_weights_zero(ctx):
    untuned, tuned = ctx.new_model(), ctx.new_model()
    attack("prune", sparsity=0.6).run(untuned, ctx)
    outcome = attack("prune", sparsity=0.6, epochs=1).run(tuned, ctx)
    assert outcome.info["steps"] > 0
    for before, after in zip(zero_masks(untuned), zero_masks(tuned), strict=True):
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(weights(untuned), weights(tuned)))
    assert_plain_weights(tuned)


def test_fine_prune_zeroes_the_least_active_channels_of_the_last_conv(ctx):
    model = ctx.new_model()
    activity = mean_activations(model, "layer4.0.conv2", ctx.splits.attacker.images, ctx.device)
    outcome = attack("fine-prune", fraction=0.5, epochs=1).run(model, ctx)
    info = outcome.info
    assert info["layer"] == "layer4.0.conv2"  # the last conv outside the shortcut
    conv = model.get_submodule("layer4.0.conv2")
    count = math.floor(0.5 * conv.out_channels)
    assert info["pruned_count"] == count == len(info["pruned_channels"])
    expected = torch.argsort(activity, stable=True)[:count].sort().values.tolist()
    assert info["pruned_channels"] == expected
    assert info["steps"] > 0
    # The chosen channels are zero after fine-tuning, and only those.
    pruned = torch.zeros(conv.out_channels, dtype=torch.bool)
    pruned[info["pruned_channels"]] = True
    per_channel = conv.weight.detach().flatten(start_dim=1).abs().amax(dim=1)
    assert torch.all(per_channel[pruned] == 0)
    assert torch.all(per_channel[~pruned] > 0)
    assert_plain_weights(model)


def test_fine_prune_layer_is_overridable_and_checked(ctx):
    outcome = attack("fine-prune", layer="layer3.0.conv3", epochs=0).run(ctx.new_model(), ctx)
    assert outcome.info["layer"] == "layer3.0.conv3" and outcome.info["channels"] == 192
    with pytest.raises(ArenaError, match="did you mean"):
        attack("fine-prune", layer="layer4.0.conv9", epochs=0).run(ctx.new_model(), ctx)
    with pytest.raises(ArenaError, match="needs a Conv2d"):
        attack("fine-prune", layer="fc", epochs=0).run(ctx.new_model(), ctx)


@pytest.mark.parametrize(("bits", "epochs"), [(2, 0), (4, 0), (8, 0), (4, 1)])
def test_quantize_leaves_at_most_2_to_the_bits_values_per_tensor(ctx, bits, epochs):
    model = ctx.new_model()
    originals = [weight.detach().clone() for weight in weights(model)]
    outcome = attack("quantize", bits=bits, epochs=epochs).run(model, ctx)
    for weight in weights(model):
        assert weight.unique().numel() <= 2**bits
    assert outcome.info["bits"] == bits and outcome.info["max_abs_error"] > 0
    if epochs == 0:
        largest_step = max(float(w.abs().max()) / (2 ** (bits - 1) - 1) for w in originals)
        assert outcome.info["max_abs_error"] <= largest_step / 2 + 1e-6
        changes = [float((w - o).abs().max()) for w, o in zip(weights(model), originals)]
        assert max(changes) == pytest.approx(outcome.info["max_abs_error"])


def filters(model: nn.Module) -> list[torch.Tensor]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [conv.weight.detach().flatten(start_dim=1).clone() for conv in convs]


def test_weight_shift_without_noise_is_the_exact_mean_shift(ctx):
    model = ctx.new_model()
    before, head = filters(model), model.fc.weight.detach().clone()
    attack("weight-shift", strength=1.5, noise=0.0, epochs=0).run(model, ctx)
    for old, new in zip(before, filters(model), strict=True):
        assert torch.allclose(new, old - 1.5 * old.mean(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(model.fc.weight, head)  # only convolutions are shifted


def test_weight_shift_noise_is_gaussian_in_units_of_the_filter_std(ctx):
    model = ctx.new_model()
    before = filters(model)
    attack("weight-shift", strength=1.5, noise=0.5, epochs=0).run(model, ctx)
    standardized = []
    for old, new in zip(before, filters(model), strict=True):
        std = old.std(dim=1, keepdim=True, correction=0)
        residual = new - (old - 1.5 * old.mean(dim=1, keepdim=True))
        standardized.append((residual / (0.5 * std)).flatten())
    z = torch.cat(standardized)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_label_smooth_fine_tunes_all_layers_with_its_smoothing(ctx, monkeypatch):
    calls = []

    def record(*args, **kwargs) -> TrainReport:
        calls.append((args, kwargs))
        return TrainReport(steps=0, seconds=0.0, final_loss=0.0)

    monkeypatch.setattr(common, "train", record)
    attack("label-smooth", smoothing=0.2, lr=0.02).run(ctx.new_model(), ctx)
    ((args, kwargs),) = calls
    _, images, labels, settings = args
    assert settings.label_smoothing == 0.2 and settings.lr == 0.02
    assert settings.epochs == SMOKE.attack_epochs
    assert kwargs.get("trainable", "all") == "all"
    assert torch.equal(images, ctx.splits.attacker.images)
    assert torch.equal(labels, ctx.splits.attacker.labels)


def test_threat_models_follow_the_fine_tuning_budget(ctx):
    none = attack("prune").threat_model(ctx)
    assert (none.data, none.labels, none.epochs, none.query_budget) == ("none", "none", 0, None)
    tuned = attack("quantize", epochs=2).threat_model(ctx)
    assert (tuned.data, tuned.labels, tuned.epochs) == ("attacker-split", "true", 2)
    looks = attack("fine-prune", epochs=0).threat_model(ctx)
    assert (looks.data, looks.labels, looks.epochs) == ("attacker-split", "none", 0)
    for name in ("weight-shift", "label-smooth", "fine-prune"):
        default = attack(name).threat_model(ctx)
        assert default.epochs == SMOKE.attack_epochs and default.query_budget is None


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("prune", {"sparsity": 1.0}, r"sparsity must lie in \[0, 1\)"),
        ("prune", {"sparsity": -0.1}, "sparsity"),
        ("fine-prune", {"fraction": 0.0}, r"fraction must lie in \(0, 1\)"),
        ("quantize", {"bits": 1}, r"bits must lie in \[2, 16\]"),
        ("weight-shift", {"strength": -1.0}, "strength must be >= 0"),
        ("weight-shift", {"noise": -0.5}, "noise must be >= 0"),
        ("label-smooth", {"smoothing": 1.0}, r"smoothing must lie in \(0, 1\)"),
        ("label-smooth", {"epochs": -1}, r"epochs must lie in \[0, 10,000\]"),
        ("quantize", {"lr": 0.0}, "lr must be > 0"),
        ("quantize", {"sparsity": 0.5}, "unknown parameter"),
        ("prune", {"sparsity": "half"}, "parameter 'sparsity'"),
    ],
)
def test_bad_parameters_are_rejected_clearly(name, params, message):
    with pytest.raises(ArenaError, match=message) as error:
        attack(name, **params)
    assert f"attack {name!r}" in str(error.value) or "unknown parameter" in str(error.value)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("prune", {"epochs": 1}),
        ("fine-prune", {"epochs": 1}),
        ("quantize", {"epochs": 1}),
        ("weight-shift", {"epochs": 1}),
        ("label-smooth", {"epochs": 1}),
    ],
)
def test_same_seed_same_attacked_model(ctx, name, params):
    def attacked(seed: int) -> dict[str, torch.Tensor]:
        run_ctx = Context(protocol=SMOKE, seed=seed, device=torch.device("cpu"))
        model = attack(name, **params).run(ctx.new_model(), run_ctx).model
        assert_plain_weights(model)
        return model.state_dict()

    # The same model attacked under another seed differs: the attack draws its own randomness.

    first, second, other = attacked(1), attacked(1), attacked(2)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
