"""The results database under concurrent writers, and the artifact cache's checks."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch import nn

from arena.core.context import Context
from arena.core.environment import PRECISION_VARIABLE
from arena.core.protocols import get_protocol
from arena.storage import clean
from arena.storage.artifacts import ArtifactCache, load_model_file
from arena.storage.clean import artifact_base
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError, ArtifactError
from arena.util.version import __version__


def _record(seed: int) -> dict:
    return {
        "protocol": "smoke",
        "protocol_version": 1,
        "model": "m",
        "defense": "d",
        "attack": "a",
        "seed": seed,
        "defense_params": {},
        "attack_params": {},
        "threat_model": {},
        "versions": {},
        "value": seed,
    }


def _write_many(path: str, start: int) -> None:
    store = ResultStore(path)
    for seed in range(start, start + 25):
        store.save(f"match-{seed}", _record(seed))


def test_concurrent_processes_lose_no_row(tmp_path):
    path = str(tmp_path / "results.sqlite")
    ResultStore(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, 25 * i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    seeds = sorted(record["seed"] for record in ResultStore(path).records("smoke"))
    assert seeds == list(range(100))


def test_saving_a_match_again_replaces_its_row(store):
    store.save("same", _record(1))
    store.save("same", {**_record(1), "value": 2})
    (record,) = store.records()
    assert record["value"] == 2


def test_artifact_round_trip_and_content_addressing(cache):
    model = nn.Linear(3, 2)
    folder = cache.folder("clean", {"protocol": "p", "seed": 0})
    assert folder == cache.folder("clean", {"seed": 0, "protocol": "p"})  # order-free
    assert folder != cache.folder("clean", {"protocol": "p", "seed": 1})
    calls = []

    def train(fresh: nn.Module) -> dict:
        calls.append(1)
        fresh.load_state_dict(model.state_dict())
        return {"steps": 3}

    first, meta, hit = cache.model(folder, lambda: nn.Linear(3, 2), train, spec={"seed": 0})
    again, _, hit_again = cache.model(folder, lambda: nn.Linear(3, 2), train, spec={"seed": 0})
    assert (hit, hit_again, len(calls)) == (False, True, 1)
    assert meta["steps"] == 3 and len(meta["sha256"]) == 64
    assert torch.equal(again.weight, model.weight)


def test_a_bfloat16_model_is_cached_apart_and_float32_names_stay(monkeypatch, tmp_path):
    protocol = get_protocol("smoke")
    fp32 = artifact_base(protocol, 0, "fp32")
    # The names float32 models had before bfloat16 existed: caches stay valid.
    assert fp32 == {"protocol": protocol.fingerprint, "seed": 0, "arena": __version__}
    assert artifact_base(protocol, 0, "bf16") == {**fp32, "precision": "bf16"}
    # A run asking for bfloat16 trains its own clean model, not the float32 one.
    cache, ctx = ArtifactCache(tmp_path), Context(protocol=protocol, seed=0)
    monkeypatch.setattr(clean, "train_clean", lambda model, ctx: {})
    _, meta, hit = clean.clean_model(ctx, cache)
    monkeypatch.setenv(PRECISION_VARIABLE, "bf16")
    _, bf16_meta, bf16_hit = clean.clean_model(ctx, cache)
    assert (hit, bf16_hit) == (False, False) and bf16_meta["spec"]["precision"] == "bf16"
    assert "precision" not in meta["spec"]


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x80\x04 this is not a safetensors file")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_model_file(bogus, nn.Linear(3, 2))


def test_a_model_of_another_shape_is_refused(tmp_path, cache):
    folder = cache.folder("clean", {"x": 1})
    cache.save_model(folder, nn.Linear(3, 2), {})
    with pytest.raises(ArtifactError, match="does not fit the model"):
        load_model_file(folder / "model.safetensors", nn.Linear(4, 2))


def test_a_corrupt_results_database_is_a_clear_error(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ArenaError, match="unreadable"):
        ResultStore(path)
