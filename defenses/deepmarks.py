"""Chen, Rouhani, Fu, Zhao and Koushanfar, "DeepMarks: A Secure Fingerprinting Framework for
Digital Rights Management of Deep Learning Models", ICMR 2019.
https://doi.org/10.1145/3323873.3325042
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import ExtraLoss
from arena.util.errors import ArenaError
from defenses.white_box import (
    WhiteBoxDefense,
    WhiteBoxKey,
    filter_projection,
    projected_filter_bits,
    projected_filter_loss,
)

PLANE_ORDERS = (2, 3, 5)  # primes whose planes keep another user's copy unverified


@dataclass(frozen=True)
class DeepMarksParams:
    order: int = param(
        5,
        help="q, a prime: the code is the projective plane of order q, q^2+q+1 bits and "
        "users (5: the paper's 31-bit code of a (31, 6, 1) design)",
        min=2,
    )
    layer: str | None = param(
        None,
        help="a Conv2d's module path such as layer2.0.conv2; None: chosen from the model",
    )
    strength: float = param(
        0.01, help="lambda, the weight of the embedding regularizer (Uchida et al.'s 0.01)", above=0
    )

    def check(self) -> None:
        if self.order not in PLANE_ORDERS:
            raise ValueError(
                f"order must be one of {', '.join(map(str, PLANE_ORDERS))} (a prime whose "
                "plane gives codes another user's copy does not verify), got "
                f"{self.order}"
            )
        if self.layer is not None and not self.layer.strip():
            raise ValueError("layer must be a module path such as 'layer2.0.conv2', or left out")


@register_defense("deepmarks")
class DeepMarks(WhiteBoxDefense):
    """A fingerprint per user, from an anti-collusion code (Chen et al., ICMR 2019).

    The owner distributes one copy per user, each carrying that user's codevector of an
    AND anti-collusion code built on a balanced incomplete block design: here the
    projective plane of prime order q, a (q^2+q+1, q+1, 1) design whose blocks are its
    lines; user j's code is the complement of line j's incidence vector, so two users'
    codes agree on exactly q^2+q+1 - 2q bits (21 of 31 for q = 5), and averaging the
    copies of up to q colluders leaves the AND of their codes, whose zeros name them.
    The code is embedded as Uchida et al. embed bits (the paper's embedding): a
    regularizer ``lambda * sum_j BCE(sigmoid(X w)_j, c_j)`` on the weights of one
    convolution averaged over its filters, X a secret standard normal matrix shared by
    every user's copy; extraction reads ``X w > 0``.

    KeyGen draws X and the user this copy is for; ``other_copy_key`` gives the key of
    another user's copy (same X, another codevector), which every match marks too, so
    the record shows that one user's copy is told apart from another's. The null is
    exact although codes are not random: X is drawn independently of every model, so an
    unmarked model's bits are independent fair coins whatever pattern they are compared
    with. The user's copy verifies only if enough of its code's bits match; another
    user's copy matches q^2+q+1 - 2q of them (p = 0.035 for q = 5), short of alpha.
    Orders above 5 are refused: codes of q = 7 agree on 43 of 57 bits, which verifies.
    """

    family = "weight regularizer fingerprint (anti-collusion code per user)"
    paper = "Chen et al., ICMR 2019"
    Params = DeepMarksParams

    def keygen(self, ctx: Context) -> WhiteBoxKey:
        codes = plane_codes(self.params.order)
        rng = ctx.rng("keygen")
        layer, projection = filter_projection(ctx, self.params.layer, codes.shape[1], rng)
        user = int(rng.integers(0, len(codes)))
        return WhiteBoxKey.create(self.name, layer, projection, codes[user])

    def other_copy_key(self, key: WhiteBoxKey, ctx: Context) -> WhiteBoxKey:
        codes = plane_codes(self.params.order)
        user = _user_of(codes, key.bits)
        other = (user + 1 + int(ctx.rng("other-user").integers(0, len(codes) - 1))) % len(codes)
        return WhiteBoxKey.create(self.name, key.layer, key.projection, codes[other])

    def regularizer(self, key: WhiteBoxKey, ctx: Context) -> ExtraLoss:
        return projected_filter_loss(key, self.params.strength, ctx)

    def extract_bits(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> np.ndarray | None:
        return projected_filter_bits(model, key)


def plane_codes(order: int) -> np.ndarray:
    """The AND anti-collusion code of the projective plane of prime order ``order``: one
    row per user (a line of the plane), 1 where the line misses the point, 0 on it."""
    points = _normalised(order)
    incidence = (points @ points.T) % order == 0  # point i on line j (lines: the same set)
    return (~incidence).astype(np.uint8)


def _normalised(order: int) -> np.ndarray:
    """The q^2+q+1 points of PG(2, q): nonzero vectors of GF(q)^3 whose first nonzero
    coordinate is 1."""
    found = []
    for x in range(order):
        for y in range(order):
            for z in range(order):
                vector = (x, y, z)
                first = next((value for value in vector if value), 0)
                if first == 1:
                    found.append(vector)
    return np.array(found, dtype=np.int64)


def _user_of(codes: np.ndarray, bits: np.ndarray) -> int:
    matches = np.flatnonzero((codes == bits).all(axis=1))
    if len(matches) != 1:
        raise ArenaError("the key's bits are not a codevector of this scheme's code")
    return int(matches[0])
