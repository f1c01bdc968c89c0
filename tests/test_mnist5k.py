"""End to end on the default protocol: the issue's bars for both backdoor defenses.

Slow (minutes on a 2-core CPU): run with ``python -m pytest -m slow``; CI runs them.
"""

from __future__ import annotations

import os

import pytest
import torch

from arena.match import MatchSpec, run_match
from arena.store import ArtifactCache, ResultStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # one real training job: use every core
    root = tmp_path_factory.mktemp("mnist5k")
    try:
        yield ResultStore(root / "results.sqlite"), ArtifactCache(root / "cache")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("defense", ["backdoor-wm", "backdoor-wm-pretrained"])
def test_mark_meets_the_bars_on_mnist5k(defense, shared, train_seed):
    store, cache = shared
    record = run_match(
        MatchSpec(defense=defense, attack="none", protocol="mnist5k", seed=train_seed),
        store=store,
        cache=cache,
    )
    clean, marked = record["clean"], record["marked"]
    assert clean["test_acc"] >= 0.97
    assert marked["test_acc"] >= clean["test_acc"] - 0.01
    evidence = marked["evidence"]
    assert evidence["successes"] / evidence["trials"] >= 0.95
    assert evidence["p_value"] < 1e-20 and evidence["verified"]
    # The same key on the clean model: chance agreement, not verified.
    assert not clean["evidence"]["verified"]
