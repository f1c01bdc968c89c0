"""The timm model factory (arena.models) and the one training loop (arena.training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from arena.core.keys import abstract_images
from arena.core.models import (
    clone_model,
    create_model,
    head_module,
    head_path,
    head_state,
    load_head_state,
    reinitialize_head,
)
from arena.core.training import TrainSettings, accuracy, predict, predict_logits, train
from arena.util.errors import ArenaError, UnknownNameError

CPU = torch.device("cpu")
SIZE = 16
CLASSES = 10


def tiny_model(name: str = "test_resnet", seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, num_classes=CLASSES, channels=1, image_size=SIZE)


def toy_data(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return images, labels


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_states_equal(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """A shared model for read-only tests; tests that train clone it."""
    return tiny_model()


# --- models --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_create_model_gives_logits(name: str) -> None:
    model = tiny_model(name)
    assert not model.training
    logits = model(torch.rand(3, 1, SIZE, SIZE))
    assert logits.shape == (3, CLASSES)
    assert torch.isfinite(logits).all()


def test_create_model_three_channels() -> None:
    model = create_model("test_resnet", num_classes=4, channels=3, image_size=SIZE)
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 4)


def test_create_model_is_random_per_seed() -> None:
    first, second, other = tiny_model(seed=1), tiny_model(seed=1), tiny_model(seed=2)
    assert_states_equal(state_copy(first), state_copy(second))
    assert not torch.equal(head_state(first)["weight"], head_state(other)["weight"])


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError) as raised:
        create_model("test_resnt", num_classes=CLASSES, channels=1, image_size=SIZE)
    message = str(raised.value)
    assert "unknown timm model 'test_resnt'" in message
    assert "did you mean 'test_resnet'?" in message


def test_head_path_names_the_classifier(resnet: nn.Module) -> None:
    assert head_path(resnet) == "fc"
    assert head_module(resnet) is resnet.fc
    vit = tiny_model("test_vit")
    assert head_path(vit) == "head"
    assert head_module(vit).out_features == CLASSES


def test_head_module_refuses_models_without_a_classifier() -> None:
    with pytest.raises(ArenaError, match="get_classifier"):
        head_module(nn.Linear(4, 2))


def test_reinitialize_head_changes_only_the_head(resnet: nn.Module) -> None:
    model = clone_model(resnet)
    before = state_copy(model)
    reinitialize_head(model, generator_seed=7)
    after = state_copy(model)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert after["fc.weight"].shape == before["fc.weight"].shape
    for name in before:
        if not name.startswith("fc."):
            assert torch.equal(before[name], after[name]), name


def test_reinitialize_head_is_seeded_and_leaves_global_rng_alone(resnet: nn.Module) -> None:
    first, second, third = clone_model(resnet), clone_model(resnet), clone_model(resnet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        reinitialize_head(first, generator_seed=7)
        drawn_after_reinit = torch.rand(3)
        torch.manual_seed(123)
        drawn_plain = torch.rand(3)
    assert torch.equal(drawn_after_reinit, drawn_plain)
    reinitialize_head(second, generator_seed=7)
    reinitialize_head(third, generator_seed=8)
    assert torch.equal(first.fc.weight, second.fc.weight)
    assert not torch.equal(first.fc.weight, third.fc.weight)


def test_head_state_round_trip(resnet: nn.Module) -> None:
    model = clone_model(resnet)
    saved = head_state(model)
    assert set(saved) == {"weight", "bias"}
    inputs = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        logits_before = model(inputs)
    reinitialize_head(model, generator_seed=3)
    assert not torch.equal(model.fc.weight, saved["weight"])
    load_head_state(model, saved)
    assert torch.equal(model.fc.weight, saved["weight"])
    assert torch.equal(model.fc.bias, saved["bias"])
    with torch.no_grad():
        assert torch.equal(model(inputs), logits_before)


def test_head_state_is_a_copy(resnet: nn.Module) -> None:
    model = clone_model(resnet)
    saved = head_state(model)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert not torch.equal(model.fc.weight, saved["weight"])


# --- training ------------------------------------------------------------------------

QUICK = TrainSettings(epochs=2, batch_size=8, lr=0.05)


def test_train_is_deterministic_on_cpu(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    first, second = clone_model(resnet), clone_model(resnet)
    first_report = train(first, images, labels, QUICK, device=CPU, generator=generator(5))
    second_report = train(second, images, labels, QUICK, device=CPU, generator=generator(5))
    assert_states_equal(state_copy(first), state_copy(second))
    assert first_report.final_loss == second_report.final_loss
    # And training did something: the weights moved away from the initial ones.
    assert not torch.equal(first.fc.weight, resnet.fc.weight)
    assert not torch.equal(first.conv1[0].weight, resnet.conv1[0].weight)


def test_train_depends_on_the_generator_seed(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    first, second = clone_model(resnet), clone_model(resnet)
    train(first, images, labels, QUICK, device=CPU, generator=generator(5))
    train(second, images, labels, QUICK, device=CPU, generator=generator(6))
    assert not torch.equal(first.fc.weight, second.fc.weight)


def test_train_report_counts_steps_and_leaves_eval_mode(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    model = clone_model(resnet)
    report = train(model, images, labels, QUICK, device=CPU, generator=generator())
    assert report.steps == 2 * 3  # 2 epochs of ceil(20 / 8) batches
    assert np.isfinite(report.final_loss) and report.final_loss > 0
    assert report.seconds >= 0
    assert not model.training


def test_zero_epochs_change_nothing(resnet: nn.Module) -> None:
    images, labels = toy_data(8)
    model = clone_model(resnet)
    before = state_copy(model)
    report = train(
        model, images, labels, TrainSettings(epochs=0), device=CPU, generator=generator()
    )
    assert report.steps == 0
    assert_states_equal(before, state_copy(model))


def test_train_head_only_freezes_the_body_and_batchnorm_statistics(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    model = clone_model(resnet)
    before = state_copy(model)
    train(model, images, labels, QUICK, device=CPU, generator=generator(), trainable="head")
    after = state_copy(model)
    assert any(name.endswith("running_mean") for name in before)
    for name in before:
        if name.startswith("fc."):
            continue
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["fc.bias"], after["fc.bias"])


def test_train_all_updates_batchnorm_statistics(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    model = clone_model(resnet)
    before = state_copy(model)
    train(model, images, labels, QUICK, device=CPU, generator=generator())
    assert not torch.equal(before["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


def test_a_batch_loss_replaces_the_cross_entropy_and_sees_the_appended_triggers(
    resnet: nn.Module,
) -> None:
    images, labels = toy_data(25)
    triggers = (torch.rand(4, 1, SIZE, SIZE, generator=generator(3)), torch.tensor([1, 2, 3, 4]))
    calls: list[tuple[int, int, bool]] = []

    def only_the_triggers(model: nn.Module, batch, batch_labels, appended: int) -> torch.Tensor:
        calls.append(
            (len(batch), appended, torch.equal(batch_labels[-appended:], batch_labels[-2:]))
        )
        logits = model(batch[-appended:])
        return nn.functional.cross_entropy(logits, batch_labels[-appended:])

    settings = TrainSettings(epochs=1, batch_size=10, lr=0.01)
    runs = []
    for loss in (only_the_triggers, None):
        model = clone_model(resnet)
        train(
            model,
            images,
            labels,
            settings,
            device=CPU,
            generator=generator(),
            triggers=triggers,
            triggers_per_batch=2,
            batch_loss=loss,
        )
        runs.append(state_copy(model))
    assert calls == [(12, 2, True), (12, 2, True), (7, 2, True)]
    changed = [name for name in runs[0] if not torch.equal(runs[0][name], runs[1][name])]
    assert changed  # another objective, other weights
    with pytest.raises(ValueError, match="no temperature"):
        train(
            clone_model(resnet),
            images,
            labels,
            settings,
            device=CPU,
            generator=generator(),
            batch_loss=only_the_triggers,
            temperature=2.0,
        )


def test_triggers_are_appended_to_every_batch(resnet: nn.Module) -> None:
    images, labels = toy_data(25)
    trigger_images = torch.full((4, 1, SIZE, SIZE), 0.5) + torch.arange(4).view(4, 1, 1, 1) / 10
    trigger_labels = torch.tensor([1, 2, 3, 4])
    model = clone_model(resnet)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        report = train(
            model,
            images,
            labels,
            TrainSettings(epochs=2, batch_size=10, lr=0.01),
            device=CPU,
            generator=generator(),
            triggers=(trigger_images, trigger_labels),
            triggers_per_batch=2,
        )
    finally:
        hook.remove()
    assert [len(batch) for batch in seen] == [12, 12, 7] * 2
    assert report.steps == 6
    # The last two rows of every batch are triggers, each trigger seen evenly: 6 batches
    # of 2 draw 12 triggers, three rounds through the 4 triggers.
    counts = torch.zeros(4, dtype=torch.long)
    for batch in seen:
        appended = batch[-2:]
        for row in appended:
            matches = [i for i in range(4) if torch.equal(row, trigger_images[i])]
            assert len(matches) == 1
            counts[matches[0]] += 1
        for row in batch[:-2]:
            assert not any(torch.equal(row, trigger) for trigger in trigger_images)
    assert counts.tolist() == [3, 3, 3, 3]


def test_no_triggers_without_a_count(resnet: nn.Module) -> None:
    images, labels = toy_data(20)
    trigger_images, trigger_labels = torch.zeros(3, 1, SIZE, SIZE), torch.zeros(3).long()
    model = clone_model(resnet)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        train(
            model,
            images,
            labels,
            TrainSettings(epochs=1, batch_size=8),
            device=CPU,
            generator=generator(),
            triggers=(trigger_images, trigger_labels),
            triggers_per_batch=0,
        )
    finally:
        hook.remove()
    assert sizes == [8, 8, 4]


def test_training_with_triggers_learns_the_trigger_labels(train_seed: int) -> None:
    images, labels = toy_data(8, train_seed)
    rng = np.random.default_rng(train_seed)
    trigger_images = torch.as_tensor(abstract_images(4, SIZE, 1, rng)).float() / 255
    trigger_labels = torch.tensor([3, 7, 1, 9])
    model = tiny_model(seed=train_seed)
    assert accuracy(model, trigger_images, trigger_labels, CPU) < 1.0
    # All 4 after 40 epochs on seeds 0-9, but 3 of those 10 still missed one after 30.
    settings = TrainSettings(epochs=60, batch_size=8, lr=0.1, schedule="constant")
    train(
        model,
        images,
        labels,
        settings,
        device=CPU,
        generator=generator(train_seed),
        triggers=(trigger_images, trigger_labels),
        triggers_per_batch=4,
    )
    assert accuracy(model, trigger_images, trigger_labels, CPU) == 1.0


def test_extra_loss_is_added_every_step(train_seed: int) -> None:
    images, labels = toy_data(20, train_seed)
    model, plain = tiny_model(seed=train_seed), tiny_model(seed=train_seed)
    calls: list[int] = []

    def shrink_head(module: nn.Module) -> torch.Tensor:
        calls.append(1)
        return 2.0 * module.fc.weight.pow(2).sum()

    train(plain, images, labels, QUICK, device=CPU, generator=generator(train_seed))
    report = train(
        model,
        images,
        labels,
        QUICK,
        device=CPU,
        generator=generator(train_seed),
        extra_loss=shrink_head,
    )
    assert len(calls) == report.steps
    with torch.no_grad():  # 0.26-0.28 of the plain norm on seeds 0-9
        assert float(model.fc.weight.norm()) < 0.5 * float(plain.fc.weight.norm())


def test_invalid_settings_are_refused(resnet: nn.Module) -> None:
    images, labels = toy_data(4)
    model = clone_model(resnet)
    for settings in (
        TrainSettings(epochs=-1),
        TrainSettings(epochs=1, batch_size=0),
        TrainSettings(epochs=1, lr=0.0),
        TrainSettings(epochs=1, label_smoothing=1.0),
    ):
        with pytest.raises(ValueError):
            train(model, images, labels, settings, device=CPU, generator=generator())
    with pytest.raises(ValueError, match="trainable"):
        train(model, images, labels, QUICK, device=CPU, generator=generator(), trainable="body")


def test_accuracy_is_the_fraction_of_correct_answers(resnet: nn.Module) -> None:
    images, _ = toy_data(10)
    predicted = predict(resnet, images, CPU)
    assert predicted.shape == (10,) and predicted.dtype == torch.int64
    assert accuracy(resnet, images, predicted, CPU) == 1.0
    assert accuracy(resnet, images, (predicted + 1) % CLASSES, CPU) == 0.0
    half = predicted.clone()
    half[:5] = (half[:5] + 1) % CLASSES
    assert accuracy(resnet, images, half, CPU) == pytest.approx(0.5)
    assert accuracy(resnet, images[:0], predicted[:0], CPU) == 0.0


def test_accuracy_on_data_lies_in_the_unit_interval(resnet: nn.Module) -> None:
    images, labels = toy_data(30)
    value = accuracy(resnet, images, labels, CPU)
    assert isinstance(value, float)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(float((predict(resnet, images, CPU) == labels).float().mean()))


def test_predict_logits_batches_agree_with_one_pass(resnet: nn.Module) -> None:
    images, _ = toy_data(7)
    batched = predict_logits(resnet, images, CPU, batch_size=3)
    with torch.no_grad():
        whole = resnet(images)
    assert batched.shape == (7, CLASSES)
    assert torch.allclose(batched, whole, atol=1e-5)


def test_unknown_model_name_far_from_all_is_one_short_line() -> None:
    """timm has over a thousand names: the error lists none of them, only where to look."""
    with pytest.raises(UnknownNameError) as raised:
        create_model("zzzz-qqqq", num_classes=CLASSES, channels=1, image_size=SIZE)
    message = str(raised.value)
    assert message == "unknown timm model 'zzzz-qqqq' (timm.list_models() lists all)"


def test_selected_training_moves_only_the_parameters_the_caller_left_trainable():
    """A plugin that fine-tunes some layers (only BatchNorm, say) freezes the rest with
    requires_grad and asks for trainable="selected"; "all" would unfreeze them."""
    import torch
    from torch import nn

    from arena.core.training import TrainSettings, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if "1." not in name}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("1."))
    images, labels = torch.rand(40, 1, 8, 8), torch.randint(0, 3, (40,))
    before = model[1].weight.detach().clone()
    train(
        model,
        images,
        labels,
        TrainSettings(epochs=2, batch_size=10, lr=0.5),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        trainable="selected",
    )
    assert not torch.equal(model[1].weight, before)
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        train(
            model,
            images,
            labels,
            TrainSettings(epochs=1),
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(0),
            trainable="selected",
        )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_shift_augmentation_is_slicing_image_by_image_in_the_ordinary_layout(
    channels: int, flip: bool
) -> None:
    """One gather gives the crops that slicing each image gives, value for value, and in
    the same memory layout: a (N, 1, H, W) tensor with channels-last strides would make
    the convolutions run other kernels, hence train other bits."""
    import torch.nn.functional as F

    from arena.core.training import _augment

    images = torch.rand(40, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    pad = 4
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (40,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (40,), generator=generator).tolist()
    expected = torch.stack(
        [padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(40)]
    )
    if flip:
        flips = torch.rand(40, generator=generator) < 0.5
        expected[flips] = expected[flips].flip(-1)
    shifted = _augment(images, torch.Generator().manual_seed(2), flip=flip)
    assert torch.equal(shifted, expected)
    assert shifted.stride() == expected.stride() == images.stride()
