"""The adversarial-example forgery (``forge-adversarial``) on the ``smoke`` protocol."""

from __future__ import annotations

import pytest
import torch

from arena.core.context import Context, Victim
from arena.core.data import to_model_input
from arena.core.models import clone_model
from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.core.training import predict
from arena.storage.clean import train_clean
from arena.util.errors import ArenaError
from attacks.forgery.adversarial import ForgeAdversarial


@pytest.fixture(scope="module")
def ctx(train_seed) -> Context:
    scheme = defenses.get("backdoor-wm")()
    return Context(
        protocol=get_protocol("smoke"),
        seed=train_seed,
        device=torch.device("cpu"),
        victim=Victim(scheme),
    )


@pytest.fixture(scope="module")
def stolen(ctx):
    """A trained smoke model, standing in for the model the attacker stole."""
    model = ctx.owner_model()
    train_clean(model, ctx)
    return model


def test_the_stolen_model_answers_the_forged_key(ctx, stolen):
    before = clone_model(stolen)
    attack = ForgeAdversarial()
    outcome = attack.run(stolen, ctx)
    key = outcome.claim.key
    key.open()  # the forged key is a well-formed key: it opens its own commitments
    assert outcome.claim.registered == "after-theft"
    assert key.scheme == "backdoor-wm" and len(key) == ctx.protocol.trigger_size
    inputs = to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels)
    answered = (predict(stolen, inputs, ctx.device) == key.tensors()[1]).float().mean()
    assert answered >= 0.8, outcome.info  # 20/20 on seeds 0-4
    assert outcome.info["agreement"] == pytest.approx(float(answered))
    assert outcome.info["max_linf"] <= attack.params.eps + 1 / 255  # quantization's half step
    assert outcome.model is stolen
    for tensor, original in zip(stolen.state_dict().values(), before.state_dict().values()):
        assert torch.equal(tensor, original)


def test_it_applies_to_trigger_set_schemes_only():
    attack = ForgeAdversarial()
    assert attack.applies_to(defenses.get("backdoor-wm")) is None
    assert "bit strings" in attack.applies_to(defenses.get("uchida"))
    assert attack.threat == "forgery"


@pytest.mark.parametrize(
    "params",
    [
        {"eps": 0},
        {"eps": 1.5},
        {"eps_step": 0.5},
        {"max_iter": 0},
        {"levels": 0},
        {"trigger_size": 0},
        {"batch_size": 0},
    ],
)
def test_bad_params_are_rejected(params):
    with pytest.raises(ArenaError, match=next(iter(params))):
        attacks.get("forge-adversarial")(params)
