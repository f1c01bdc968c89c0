"""End to end on the default protocol: the issue's bars for both backdoor defenses.

Slow (minutes on a 2-core CPU): run with ``python -m pytest -m slow``; CI runs them.
"""

from __future__ import annotations

import os

import pytest
import torch

from arena.eval.match import MatchSpec, run_match
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore

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
    # Bars with a margin. mnist5k v1 (5 epochs), seeds 0-2 at 2 threads: clean
    # 0.963-0.973, the marked models within 0.9 points of it, 94-100 of 100 triggers. v2
    # (30 epochs), seed 0 at the arena's 2 threads: clean 0.988, backdoor-wm 0.981 with
    # 100/100, the same key on the clean model 9/100.
    assert clean["test_acc"] >= 0.95
    assert marked["test_acc"] >= clean["test_acc"] - 0.03
    evidence = marked["evidence"]
    assert evidence["successes"] / evidence["trials"] >= 0.9
    assert evidence["p_value"] < 1e-20 and evidence["verified"]
    # The same key on the clean model: chance agreement (random labels: 10 of 100 on
    # average, 22 would be 4 standard deviations above).
    assert clean["evidence"]["successes"] <= 22
