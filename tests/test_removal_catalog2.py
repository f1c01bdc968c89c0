"""Issue 20's removal attacks on the smoke protocol: ``smooth-retrain`` trains a fresh model
on noise-averaged answers, ``regularize`` fine-tunes under its strong decay, and
``permute`` rewrites the weights without changing the function."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attacks.removal.common as common
from arena.core.context import Context
from arena.core.models import clone_model
from arena.core.protocols import get_protocol
from arena.core.registry import attacks
from arena.core.training import TrainReport, accuracy, train
from arena.eval.match import MatchSpec, run_match
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from attacks.removal.common import fresh_model
from attacks.removal.permute import hidden_layers

SMOKE = get_protocol("smoke")


@pytest.fixture(scope="module")
def ctx(train_seed) -> Context:
    return Context(protocol=SMOKE, seed=train_seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def victim(ctx) -> nn.Module:
    """A smoke model trained on the owner's split, as the attacker would steal it."""
    owner = ctx.splits.owner
    model = ctx.new_model("victim")
    train(
        model,
        owner.images,
        owner.labels,
        SMOKE.training,
        device=ctx.device,
        generator=ctx.generator("victim"),
    )
    return model.eval()


def attack(name: str, **params):
    return attacks.get(name)(params)


# --- smooth-retrain -----------------------------------------------------------------------


class Recorder(nn.Module):
    """The victim behind an API that keeps every query it answers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.queries: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.queries.append(images.detach().clone())
        return self.model(images)


def test_smooth_retrain_trains_on_the_victims_answers_averaged_over_noisy_queries(
    ctx, victim, monkeypatch
):
    handed = {}

    def record(run_ctx, architecture, purpose, data, settings, description, **options):
        handed.update(architecture=architecture, data=data, settings=settings, options=options)
        return fresh_model(run_ctx, architecture, purpose), TrainReport(3, 0.0, 0.0)

    monkeypatch.setattr("attacks.removal.smooth_retrain.train_fresh", record)
    api = Recorder(clone_model(victim))
    sigma, samples = 0.2, 5
    smooth = attack("smooth-retrain", sigma=sigma, samples=samples)
    outcome = smooth.run(api, ctx)
    images = ctx.splits.attacker.images
    queries = torch.cat(api.queries)
    # Exactly the declared budget, and never one of the attacker's images as it is.
    assert len(queries) == smooth.threat_model(ctx).query_budget == samples * len(images)
    assert outcome.info["queries"] == len(queries)
    noisy = queries.view(samples, *images.shape)
    assert all(not torch.equal(copy, images) for copy in noisy)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    # The noise is Gaussian of standard deviation sigma: on background pixels (0), the
    # unclipped half is sigma * |z|, whose mean is sigma * sqrt(2 / pi).
    background = noisy[:, images == 0]
    assert abs(float((background > 0).float().mean()) - 0.5) < 0.01
    half_normal_mean = float(background[background > 0].mean())
    assert half_normal_mean == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.02)
    # The soft labels are the mean softmax of the victim over each image's noisy copies.
    with torch.no_grad():
        expected = torch.stack([torch.softmax(victim(copy), dim=1) for copy in noisy]).mean(0)
    trained_images, soft_labels = handed["data"]
    assert torch.equal(trained_images, images)  # clean images, noise-averaged labels
    assert soft_labels.shape == (len(images), SMOKE.num_classes)
    assert torch.allclose(soft_labels, expected, atol=1e-5)
    assert torch.allclose(soft_labels.sum(dim=1), torch.ones(len(images)), atol=1e-5)
    assert not torch.equal(soft_labels.argmax(1), ctx.splits.attacker.labels)  # the victim's
    assert handed["architecture"] is None and handed["settings"].epochs == SMOKE.training.epochs
    assert handed["options"] == {"generator_purpose": "attack:smooth-retrain"}


def test_smooth_retrain_returns_a_fresh_model_never_the_victims_weights(ctx, victim):
    untrained = attack("smooth-retrain", epochs=0).run(clone_model(victim), ctx).model
    expected = fresh_model(ctx, None, "attack:smooth-retrain:model").state_dict()
    state = untrained.state_dict()
    assert all(torch.equal(state[name], expected[name]) for name in expected)
    theirs = victim.state_dict()
    assert not any(torch.equal(state[name], theirs[name]) for name in theirs if "weight" in name)


def test_smooth_retrain_learns_the_task_on_smoke(ctx, victim):
    """20 epochs, since 200 images teach a fresh model little in smoke's 6: 76.0, 79.5 and
    80.0% test accuracy on seeds 0, 1, 2 (the victims: 91.5, 90.0, 91.0%); chance is 10%."""
    outcome = attack("smooth-retrain", epochs=20).run(clone_model(victim), ctx)
    assert outcome.model is not victim and outcome.info["steps"] == 20 * 4
    test = ctx.splits.test
    assert accuracy(outcome.model, test.images, test.labels, ctx.device) >= 0.5


def test_smooth_retrain_threat_model_and_access(ctx):
    smooth = attacks.get("smooth-retrain")
    assert smooth.holds_weights is False
    threat = smooth({"samples": 7}).threat_model(ctx)
    assert (threat.data, threat.labels) == ("unlabeled", "victim-soft")
    assert threat.query_budget == 7 * SMOKE.attacker_size
    assert threat.epochs == SMOKE.training.epochs


# --- regularize ---------------------------------------------------------------------------


def test_regularize_fine_tunes_all_layers_under_its_decay(ctx, monkeypatch):
    calls = []

    def record(*args, **kwargs) -> TrainReport:
        calls.append((args, kwargs))
        return TrainReport(steps=4, seconds=0.0, final_loss=0.0)

    monkeypatch.setattr(common, "train", record)
    outcome = attack("regularize").run(ctx.new_model(), ctx)
    ((args, kwargs),) = calls  # no recovery phase by default
    _, images, labels, settings = args
    assert settings.weight_decay == 0.3 and settings.lr == 0.01
    assert settings.epochs == SMOKE.attack_epochs and settings.optimizer == "sgd"
    assert kwargs.get("trainable", "all") == "all"
    assert torch.equal(images, ctx.splits.attacker.images)
    assert torch.equal(labels, ctx.splits.attacker.labels)
    assert outcome.info["steps"] == 4

    calls.clear()
    attack("regularize", weight_decay=0.5, epochs=2, recover_epochs=3).run(ctx.new_model(), ctx)
    (decay, _), (recover, _) = calls
    assert (decay[3].weight_decay, decay[3].epochs) == (0.5, 2)
    assert (recover[3].weight_decay, recover[3].epochs) == (5e-4, 3)


def test_regularize_shrinks_the_weights_that_plain_fine_tuning_keeps(ctx, victim):
    """The same fine-tuning with the ordinary decay (5e-4) against the attack's 0.3: the
    strong decay leaves the weights 7.8% smaller in norm (a ratio of 0.9225 on seeds 0, 1
    and 2), the ordinary one changes it by 0.02% at most."""

    def norm(model: nn.Module) -> float:
        return math.sqrt(sum(float(p.detach().square().sum()) for p in model.parameters()))

    before = norm(victim)
    decayed = attack("regularize").run(clone_model(victim), ctx).model
    plain = attack("regularize", weight_decay=5e-4, recover_weight_decay=0).run(
        clone_model(victim), ctx
    )
    assert norm(plain.model) == pytest.approx(before, rel=0.005)
    assert norm(decayed) < 0.95 * before


def test_regularize_threat_model_counts_both_phases(ctx):
    threat = attack("regularize", recover_epochs=2).threat_model(ctx)
    assert (threat.data, threat.labels) == ("attacker-split", "true")
    assert threat.epochs == SMOKE.attack_epochs + 2


# --- permute ------------------------------------------------------------------------------


def _busy_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters for an untrained model, so
    a rewrite that forgot one of them would show in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))
                module.running_mean.copy_(torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("dummy_channels", [0, 1, 3])
@pytest.mark.parametrize("protocol", ["smoke", "mnist5k"])
def test_permute_preserves_the_logits(protocol, dummy_channels):
    """On smoke's trained-size model and on mnist5k's resnet18, in eval mode."""
    chosen = get_protocol(protocol)
    run_ctx = Context(protocol=chosen, seed=0, device=torch.device("cpu"))
    model = _busy_batch_norms(run_ctx.new_model(), seed=1)
    size = chosen.image_size
    images = torch.rand(16, chosen.channels, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(images)
    permute = attack("permute", dummy_channels=dummy_channels)
    outcome = permute.run(clone_model(model), run_ctx)
    with torch.no_grad():
        after = outcome.model.eval()(images)
    scale = float(before.abs().max())
    assert float((after - before).abs().max()) <= 1e-5 * scale
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert outcome.info["hidden_layers"] == len(hidden_layers(model))
    assert outcome.info["dummy_channels"] == dummy_channels * len(hidden_layers(model))


def test_permute_finds_the_hidden_channels_of_blocks_and_the_deep_stem(ctx):
    found = hidden_layers(ctx.new_model())
    assert [(h.producer, h.norm, h.consumer) for h in found] == [
        ("conv1.0", "conv1.1", "conv1.3"),  # the deep stem's Sequential
        ("conv1.3", "conv1.4", "conv1.6"),
        ("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"),  # BasicBlock
        ("layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2"),
        ("layer3.0.conv1", "layer3.0.bn1", "layer3.0.conv2"),  # Bottleneck: two
        ("layer3.0.conv2", "layer3.0.bn2", "layer3.0.conv3"),
        ("layer4.0.conv1", "layer4.0.bn1", "layer4.0.conv2"),
    ]
    resnet18 = Context(protocol=get_protocol("mnist5k")).new_model()
    consumers = [h.consumer for h in hidden_layers(resnet18)]
    assert consumers == [f"layer{s}.{b}.conv2" for s in range(1, 5) for b in range(2)]


def test_permute_really_moves_the_hidden_weights_and_only_those(ctx, victim):
    model = clone_model(victim)
    outcome = attack("permute", dummy_channels=0).run(model, ctx)
    old, new = victim.state_dict(), model.state_dict()
    layers = hidden_layers(victim)
    hidden = {f"{h.producer}.weight" for h in layers} | {f"{h.consumer}.weight" for h in layers}
    hidden |= {f"{h.norm}.{part}" for h in layers for part in ("weight", "bias")}
    hidden |= {f"{h.norm}.{part}" for h in layers for part in ("running_mean", "running_var")}
    for name in old:
        if name in hidden:
            assert not torch.equal(old[name], new[name]), name
        else:  # the residual stream, the downsample paths and the head stay as they were
            assert torch.equal(old[name], new[name]), name
    assert outcome.info["channels_moved"] >= 0.9 * outcome.info["hidden_channels"]
    # Every producer filter is still there, moved: the rows are a permutation (of the
    # producers that are not also a consumer, whose columns were rescaled as well).
    consumers = {layer.consumer for layer in layers}
    for layer in [layer for layer in layers if layer.producer not in consumers]:
        before = old[f"{layer.producer}.weight"].flatten(1)
        after = new[f"{layer.producer}.weight"].flatten(1)
        matches = (after[:, None, :] == before[None, :, :]).all(dim=2)
        assert torch.equal(matches.sum(dim=1), torch.ones(len(after), dtype=torch.long))


def test_permute_rescales_across_the_relu_within_its_bound(ctx, victim):
    model = clone_model(victim)
    attack("permute", permute=False, max_scale=4.0, dummy_channels=0).run(model, ctx)
    layer = hidden_layers(victim)[3]  # layer2.0: conv1 -> bn1 -> conv2
    old, new = victim.get_submodule(layer.norm), model.get_submodule(layer.norm)
    scales = new.weight.detach() / old.weight.detach()
    assert torch.allclose(new.bias.detach() / old.bias.detach(), scales, rtol=1e-4)
    assert float(scales.min()) >= 0.25 - 1e-6 and float(scales.max()) <= 4 + 1e-6
    assert float(scales.max() / scales.min()) > 2  # really rescaled
    consumer_before = victim.get_submodule(layer.consumer).weight.detach()
    consumer_after = model.get_submodule(layer.consumer).weight.detach()
    assert torch.allclose(consumer_after * scales[None, :, None, None], consumer_before, atol=1e-6)
    producer = victim.get_submodule(layer.producer).weight
    assert torch.equal(model.get_submodule(layer.producer).weight, producer)  # not permuted


def test_permute_dummy_channels_are_silent_and_reload_through_build(ctx, victim):
    model = clone_model(victim)
    permute = attack("permute", dummy_channels=2)
    permute.run(model, ctx)
    producers = {layer.producer for layer in hidden_layers(victim)}
    for layer in hidden_layers(victim):
        before = victim.get_submodule(layer.consumer).in_channels
        consumer = model.get_submodule(layer.consumer)
        assert consumer.in_channels == model.get_submodule(layer.producer).out_channels
        assert consumer.in_channels == before + 2
        if layer.consumer in producers:
            continue  # its own dummy filters read every input, dummies included
        # Exactly two input channels of the consumer carry no weight at all: the dummies.
        silent = consumer.weight.detach().abs().sum(dim=(0, 2, 3)) == 0
        assert int(silent.sum()) == 2
    with pytest.raises(RuntimeError, match="size mismatch"):
        ctx.new_model().load_state_dict(model.state_dict())
    container = permute.build(ctx, ctx.new_model)
    container.load_state_dict(model.state_dict())  # strict


def test_permute_through_matches_keeps_black_box_evidence_and_is_cached(warm_cache, tmp_path):
    """backdoor-wm's trigger evidence and test accuracy are exactly the marked model's;
    the widened attacked model is stored, and a second run reloads it through ``build``."""
    store = ResultStore(tmp_path / "r.sqlite")
    spec = MatchSpec(defense="backdoor-wm", attack="permute", protocol="smoke", seed=0)
    record = run_match(spec, store=store, cache=warm_cache)
    assert record["attacked"]["evidence"] == record["marked"]["evidence"]
    assert record["attacked"]["test_acc"] == record["marked"]["test_acc"]
    assert record["attack_succeeded"] is False
    again = run_match(spec, store=ResultStore(tmp_path / "again.sqlite"), cache=warm_cache)
    assert record["cached"]["attacked"] is False and again["cached"]["attacked"] is True
    assert again["attacked"]["evidence"] == record["attacked"]["evidence"]
    assert again["attacked"]["test_acc"] == record["attacked"]["test_acc"]


@pytest.mark.parametrize("dummy_channels", [0, 1])
def test_permute_on_white_box_schemes(train_seed, tmp_path, dummy_channels):
    """uchida reads its bits from a block's inner convolution, which permute rewrites:
    with a dummy channel its layer has another shape and no bit is read; permutation and
    scaling alone leave a fraction near chance (151, 119, 148 of 256 on seeds 0-2: still
    verified on 0 and 2, since what the per-channel kernels share stays in place).
    DeepSigns reads a block's output, which no hidden-channel rewrite changes: its bits
    are the marked model's, exactly."""
    from arena.storage.artifacts import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    store = ResultStore(tmp_path / "r.sqlite")
    params = {"dummy_channels": dummy_channels}

    def played(defense: str) -> dict:
        spec = MatchSpec(
            defense=defense,
            attack="permute",
            protocol="smoke",
            seed=train_seed,
            attack_params=params,
        )
        return run_match(spec, store=store, cache=cache)

    uchida = played("uchida")
    marked, attacked = uchida["marked"], uchida["attacked"]
    assert marked["evidence"]["verified"] and marked["evidence"]["successes"] >= 240
    assert attacked["test_acc"] == marked["test_acc"]
    bits = attacked["evidence"]["successes"]
    if dummy_channels:
        assert bits == 0 and uchida["attack_succeeded"] is True
    else:
        assert abs(bits - 128) <= 4 * 8  # within 4 standard deviations of chance, 128 +- 8
        assert bits < marked["evidence"]["successes"] - 60
    deepsigns = played("deepsigns")
    assert deepsigns["attacked"]["evidence"] == deepsigns["marked"]["evidence"]
    assert deepsigns["attack_succeeded"] is False


def test_permute_declares_no_data_and_refuses_what_it_cannot_rewrite(ctx):
    permute = attacks.get("permute")
    assert permute.holds_weights is True
    threat = permute().threat_model(ctx)
    assert (threat.data, threat.labels, threat.epochs, threat.query_budget) == (
        "none",
        "none",
        0,
        None,
    )
    flat = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(ArenaError, match="no hidden channels it can rewrite"):
        permute().run(flat, ctx)


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("smooth-retrain", {"sigma": -0.1}, "sigma must be > 0"),
        ("smooth-retrain", {"sigma": 0}, "sigma must be > 0"),
        ("smooth-retrain", {"samples": 0}, r"samples must lie in \[1, 10,000\]"),
        ("smooth-retrain", {"epochs": -1}, "epochs"),
        ("regularize", {"weight_decay": 0}, "weight_decay must be > 0"),
        ("regularize", {"weight_decay": -1}, "weight_decay must be > 0"),
        ("regularize", {"recover_epochs": -1}, "recover_epochs"),
        ("regularize", {"weight_decay": 0.01, "recover_weight_decay": 0.1}, "must be below"),
        ("permute", {"max_scale": 0.5}, r"max_scale must lie in \[1, 1,000"),
        ("permute", {"dummy_channels": -1}, "dummy_channels"),
        ("permute", {"permute": False, "max_scale": 1, "dummy_channels": 0}, "unchanged"),
        ("permute", {"shuffle": True}, "unknown parameter"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(name, params, message):
    with pytest.raises(ArenaError, match=message) as error:
        attack(name, **params)
    assert "\n" not in str(error.value)
