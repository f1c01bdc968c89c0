"""The artifact cache: models and keys named by what determines them, written once,
checked on every load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from arena.util.errors import ArtifactError
from arena.util.files import content_hash, file_lock, file_sha256
from arena.util.jsonio import read_json, write_json_atomic
from arena.util.paths import default_cache_dir


class ArtifactCache:
    """Models and keys in folders named by the hash of what determines them."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def folder(self, kind: str, spec: dict[str, Any]) -> Path:
        digest = content_hash({"kind": kind, **spec})
        return self.root / kind / digest[:2] / digest

    @contextmanager
    def lock(self, folder: Path) -> Iterator[None]:
        """Hold ``folder``'s lock while it is made: a second run that needs the same
        artifact waits, then finds it finished, instead of making a second one."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(folder.parent / f"{folder.name}.lock"):
            yield

    def check(self, folder: Path, *, discarded: bool = False) -> dict[str, Any] | None:
        """The metadata of a finished entry whose model file is intact; None if unfinished.

        A missing or altered model file is an error, never silently retrained or used. An
        entry whose model was discarded (``discard_model``) counts as finished only with
        ``discarded``; otherwise it is one to make again.
        """
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            return None  # the metadata is written last: no metadata, no finished entry
        model_path = folder / "model.safetensors"
        meta = read_json(meta_path)
        if meta.get("discarded"):
            return meta if discarded else None
        hint = f"delete {folder} to train it again"
        if not model_path.exists():
            raise ArtifactError(f"cached model {model_path} is missing; {hint}")
        if file_sha256(model_path) != meta.get("sha256"):
            raise ArtifactError(
                f"cached model {model_path} is corrupt (its SHA-256 does not match {meta_path}); "
                f"{hint}"
            )
        return meta

    def load_model(self, folder: Path, model: nn.Module) -> dict[str, Any] | None:
        """Fill ``model`` from ``folder``; None when nothing is cached there yet."""
        meta = self.check(folder)
        if meta is not None:
            load_model_file(folder / "model.safetensors", model)
        return meta

    def discard_model(self, folder: Path) -> None:
        """Delete ``folder``'s model file and keep its metadata, marked ``discarded``: the
        record of what was made (its spec, SHA-256 and cost) stays, the space does not.
        The metadata is marked first, so an interruption leaves a discarded entry."""
        with self.lock(folder):
            meta = self.check(folder)
            if meta is None:
                return
            write_json_atomic(folder / "meta.json", {**meta, "discarded": True})
            (folder / "model.safetensors").unlink(missing_ok=True)

    def save_model(self, folder: Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the model, then its metadata (with the file's SHA-256); return that."""
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / "model.safetensors"
        temporary = folder / ".model.safetensors.tmp"
        save_file(_state_for_file(model), str(temporary))
        os.replace(temporary, model_path)
        meta = {**meta, "sha256": file_sha256(model_path)}
        write_json_atomic(folder / "meta.json", meta)
        return meta

    def model(
        self,
        folder: Path,
        build: Callable[[], nn.Module],
        train: Callable[[nn.Module], dict[str, Any]],
        spec: dict[str, Any],
    ) -> tuple[nn.Module, dict[str, Any], bool]:
        """The cached model in ``folder``, or ``train(build())`` saved there first.

        Returns the model, its metadata and whether it came from the cache.
        """
        model = build()
        meta = self.load_model(folder, model)
        if meta is not None:
            return model, meta, True
        with self.lock(folder):
            meta = self.load_model(folder, model)  # finished by a run that held the lock
            if meta is not None:
                return model, meta, True
            start = time.perf_counter()
            info = train(model)
            model = info.pop("model", model)
            seconds = time.perf_counter() - start  # what producing it cost, kept for cache hits
            meta = {"spec": spec, "created_at": time.time(), "seconds": seconds, **info}
            return model, self.save_model(folder, model, meta), False


def _state_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: store plain copies.
    return {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def load_model_file(path: Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model`` strictly, with a one-line error if it does not fit."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path} is not a readable safetensors file: {error}") from None
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ArtifactError(f"{path} does not fit the model: {detail}") from None
