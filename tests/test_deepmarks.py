"""DeepMarks: the anti-collusion code of a projective plane, one copy per user, and a
second user's copy told apart from the first's on smoke."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.eval.match import MatchSpec, play_match
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from defenses.deepmarks import plane_codes


@pytest.mark.parametrize("order", [2, 3, 5])
def test_the_code_is_a_projective_plane_and_and_of_colluders_names_them(order):
    codes = plane_codes(order)
    users = order**2 + order + 1
    assert codes.shape == (users, users)
    lines = 1 - codes  # incidence: every line has q+1 points, two lines share one
    assert (lines.sum(axis=1) == order + 1).all()
    for first, second in itertools.combinations(range(users), 2):
        assert int((lines[first] & lines[second]).sum()) == 1
        # Two users' codes agree on all bits but the 2q where exactly one line passes.
        assert int((codes[first] == codes[second]).sum()) == users - 2 * order
    # Averaging up to q colluders' copies leaves the AND of their codes; its zeros are
    # the union of their lines, which no other line lies inside (two lines share one
    # point, so q lines cover at most q of another line's q+1 points).
    rng = np.random.default_rng(order)
    for size in range(1, order + 1):
        colluders = set(rng.choice(users, size=size, replace=False).tolist())
        combined = np.bitwise_and.reduce(codes[sorted(colluders)], axis=0)
        accused = {user for user in range(users) if not (combined & lines[user]).any()}
        assert accused == colluders


def test_another_users_key_shares_the_projection_and_is_another_codevector():
    defense = defenses.get("deepmarks")()
    ctx = Context(protocol=get_protocol("smoke"), seed=3)
    key = defense.keygen(ctx)
    other = defense.other_copy_key(key, ctx)
    codes = plane_codes(5)
    assert np.array_equal(other.projection, key.projection) and other.layer == key.layer
    assert not np.array_equal(other.bits, key.bits)
    assert any(np.array_equal(other.bits, code) for code in codes)
    assert other.fingerprint != key.fingerprint


@pytest.mark.parametrize("order", [7, 4, 1])
def test_orders_whose_codes_would_verify_another_user_are_refused(order):
    with pytest.raises(Exception, match="order"):
        defenses.get("deepmarks")({"order": order})


def test_a_users_copy_verifies_and_another_users_copy_does_not(tmp_path, train_seed):
    record = play_match(
        MatchSpec(defense="deepmarks", attack="none", protocol="smoke", seed=train_seed),
        store=ResultStore(tmp_path / "r.sqlite"),
        cache=ArtifactCache(tmp_path / "cache"),
    )
    assert record.marked.evidence.verified and record.marked.evidence.successes >= 29
    assert not record.clean.evidence.verified
    other = record.other_user
    assert other is not None and not other.verified
    # A fully marked other copy carries its own code: 21 of 31 bits agree with ours.
    assert 17 <= other.successes <= 24
