"""Model files as the vendor publishes them: safetensors weights with a model card that
names the protocol, checked before any model is built.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from arena.core.keys import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
)
from arena.core.models import create_model
from arena.core.protocols import Protocol
from arena.storage.artifacts import load_model_file
from arena.util.errors import ArenaError, ArtifactError
from arena.util.files import _publish
from arena.util.jsonio import read_json, write_json_atomic

MODEL_CARD_FORMAT = "arena-model/1"


def save_model(model: nn.Module, path: Path, protocol: Protocol) -> None:
    """Write the weights and their model card; an existing file is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    save_file(state, temporary)
    _publish(Path(temporary), path, "marked model")
    write_json_atomic(
        card_path(path),
        {
            "format": MODEL_CARD_FORMAT,
            "model": protocol.model,
            "num_classes": protocol.num_classes,
            "channels": protocol.channels,
            "image_size": protocol.image_size,
            "protocol": protocol.name,
        },
    )


def card_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def read_card(model_path: Path) -> dict[str, Any]:
    """The model card beside ``model_path`` ({} if there is none), every field checked."""
    path = card_path(model_path)
    if not path.exists():
        return {}
    card = read_json(path)
    from arena.core.data import FOLDER_PREFIX
    from arena.core.protocols import PROTOCOLS

    fields: dict[str, tuple[type, Callable[[Any], bool], str]] = {
        "format": (str, lambda v: v == MODEL_CARD_FORMAT, repr(MODEL_CARD_FORMAT)),
        "model": (str, lambda v: 0 < len(v) <= 200, "a timm model name"),
        "protocol": (
            str,
            lambda v: v in PROTOCOLS or (v.startswith(FOLDER_PREFIX) and len(v) <= 300),
            f"a protocol ({', '.join(PROTOCOLS)}, or {FOLDER_PREFIX}<name>)",
        ),
        "num_classes": (int, lambda v: 2 <= v <= MAX_CLASSES, f"2-{MAX_CLASSES:,}"),
        "channels": (int, lambda v: 1 <= v <= MAX_CHANNELS, f"1-{MAX_CHANNELS}"),
        "image_size": (int, lambda v: 1 <= v <= MAX_IMAGE_SIDE, f"1-{MAX_IMAGE_SIDE}"),
    }
    for name, (kind, fits, allowed) in fields.items():
        if name not in card:  # a card is whole or it is not ours: nothing falls back
            raise ArtifactError(f"model card {path} has no {name!r}")
        value = card[name]
        if isinstance(value, bool) or not isinstance(value, kind) or not fits(value):
            raise ArtifactError(f"model card {path}: {name} must be {allowed}, got {value!r}")
    return card


def suspect_protocol(model_path: Path, requested: str | None) -> Protocol:
    """The protocol to verify ``model_path`` under: the one its model card names, which
    ``requested`` (a --protocol given by the user) must agree with; else ``requested``,
    else the default."""
    from arena.core.protocols import PROTOCOLS, get_protocol

    card = read_card(model_path) if model_path.is_file() else {}
    named = card.get("protocol")
    if named in PROTOCOLS:
        if requested is not None and requested != named:
            raise ArenaError(
                f"the model card of {model_path} says it was made under protocol {named!r}, "
                f"not {requested!r}; drop --protocol or pass --protocol {named}"
            )
        return get_protocol(named)
    base = get_protocol(requested or "mnist5k")
    if named is None:
        return base
    # A model marked on an image folder: the requested protocol's budgets and alpha, the
    # card's input and classes (and its own name, so no calibration of another applies).
    return dataclasses.replace(
        base,
        name=named,
        num_classes=card.get("num_classes", base.num_classes),
        channels=card.get("channels", base.channels),
        image_size=card.get("image_size", base.image_size),
    )


def load_model(path: Path, protocol: Protocol, architecture: str | None = None) -> nn.Module:
    """Rebuild the architecture (model card, else ``architecture`` on ``protocol``) and
    load the weights from safetensors or a plain state dict; or run an ONNX file
    (``.onnx``) with onnxruntime.

    The card must fit the protocol (its input size, channels and classes: a model is
    never silently resized), and the file must hold exactly the tensors of that
    architecture, which is checked on a skeleton without memory before the model is
    built, so no card can make the verifier allocate what the file does not hold.
    """
    if not path.exists():
        raise ArenaError(f"model file {path} does not exist")
    if not path.is_file():
        raise ArenaError(f"model file {path} is not a regular file")
    if path.suffix == ".onnx":
        return OnnxModel(path, protocol)
    card = read_card(path)
    name = architecture or card.get("model") or protocol.model
    shape = {
        "num_classes": card.get("num_classes", protocol.num_classes),
        "channels": card.get("channels", protocol.channels),
        "image_size": card.get("image_size", protocol.image_size),
    }
    expected = {
        "num_classes": protocol.num_classes,
        "channels": protocol.channels,
        "image_size": protocol.image_size,
    }
    for field, value in shape.items():
        if value != expected[field]:
            raise ArenaError(
                f"the model card of {path} gives {field} {value}, protocol "
                f"{protocol.name!r} has {expected[field]}; verify it under its own protocol"
            )
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = create_model(name, **shape)
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if path.suffix == ".safetensors":
        _check_shapes(path, name, _safetensors_shapes(path), wanted)
        model = create_model(name, **shape)
        load_model_file(path, model)
        return model
    state = _read_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path} does not hold a state dict of tensors")
    _check_shapes(path, name, {k: tuple(v.shape) for k, v in state.items()}, wanted)
    model = create_model(name, **shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{path} does not fit {name}: {str(error).splitlines()[0]}") from None
    return model


def _read_state(path: Path) -> Any:
    """``torch.load`` without unpickling objects: memory-mapped, or read whole for a file
    in the legacy (non-zip) format, which cannot be mapped."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal, whose advice is to turn the check off
        raise ArtifactError(
            f"{path} is not a readable state dict: it needs pickle to load, which arena "
            "never does (save a state dict of tensors, or a .safetensors file)"
        ) from None
    except Exception as error:  # a truncated file, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ArtifactError(f"{path} is not a readable state dict: {detail}") from None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares in its header; nothing is loaded."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # a header that is no safetensors header
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(f"{path} is not a readable safetensors file: {detail}") from None


def _check_shapes(
    path: Path,
    name: str,
    found: dict[str, tuple[int, ...]],
    wanted: dict[str, tuple[int, ...]],
) -> None:
    """Refuse a file whose tensors are not exactly those of architecture ``name``."""
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(found) if wanted[k] != found[k])
    if missing or extra or wrong:
        first = (
            f"tensor {wrong[0]} is {list(found[wrong[0]])}, {name} needs {list(wanted[wrong[0]])}"
            if wrong
            else f"{len(missing)} tensors missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} unexpected tensors (e.g. {extra[0]})"
        )
        raise ArtifactError(f"{path} does not fit {name}: {first}")


ONNX_OPSET = 17  # what torch's exporter and onnxruntime 1.18 and later both support


def export_onnx(model_path: Path, out: Path, protocol: Protocol) -> Path:
    """Write the model of ``model_path`` as an ONNX file (batch size free) with its model
    card; an existing file is never replaced."""
    import warnings

    if out.suffix != ".onnx":
        raise ArenaError(f"--out must name a .onnx file, got {out}")
    for path in (out, card_path(out)):
        if path.exists() or path.is_symlink():
            raise ArenaError(f"{path} exists; refusing to overwrite it")
    model = load_model(model_path, protocol).eval()
    if isinstance(model, OnnxModel):
        raise ArenaError(f"{model_path} is an ONNX file already")
    example = torch.zeros(1, protocol.channels, protocol.image_size, protocol.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter, which needs no package beyond onnx; torch warns
            # that the torch.export-based one is now its default.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                temporary,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _publish(Path(temporary), out, "ONNX model")
    card = read_card(model_path) or {
        "format": MODEL_CARD_FORMAT,
        "model": protocol.model,
        "num_classes": protocol.num_classes,
        "channels": protocol.channels,
        "image_size": protocol.image_size,
        "protocol": protocol.name,
    }
    write_json_atomic(card_path(out), card)
    return out


MAX_ONNX_BYTES = 4 << 30


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime (CUDA when it has the provider, else the CPU), as a
    model: forward(images) -> logits. Its input must be (N, C, H, W) float of the
    protocol's shape; its ledger fingerprint is the SHA-256 of the file."""

    def __init__(self, path: Path, protocol: Protocol) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise ArenaError(
                "ONNX models need onnxruntime: pip install 'watermark-arena[onnx]'"
            ) from None
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise ArtifactError(f"{path} is {size:,} bytes, more than an ONNX model read here")
        self.path = path
        self._fingerprint = _file_sha256(path)
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=[*providers, "CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's own exception types
            detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ArtifactError(f"{path} is not a model onnxruntime can run: {detail}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ArtifactError(f"{path} must take one input (images), takes {len(inputs)}")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        wanted = [protocol.channels, protocol.image_size, protocol.image_size]
        if len(shape) != 4 or shape[1:] != wanted or "float" not in inputs[0].type:
            raise ArtifactError(
                f"{path} takes {inputs[0].type} of shape {shape}, protocol {protocol.name!r} "
                f"has float images of shape [N, {', '.join(map(str, wanted))}]"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        classes = outputs[0].shape[-1] if outputs[0].shape else None
        if not isinstance(classes, int):  # a free class dimension: ask the model
            probe = torch.zeros(self.fixed_batch or 1, *wanted)
            classes = int(self._run(probe).shape[-1])
        self.num_classes = classes

    def ledger_fingerprint(self) -> str:
        return self._fingerprint

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.detach().float().cpu().numpy()
        try:
            (logits, *_) = self.session.run(None, {self.input_name: batch})
        except Exception as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ArtifactError(f"onnxruntime failed on {self.path}: {detail}") from None
        return torch.as_tensor(logits).float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        step = self.fixed_batch or max(len(images), 1)
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            short = step - len(chunk) if self.fixed_batch else 0
            if short:  # a fixed batch size: pad the last chunk, keep its own rows
                chunk = torch.cat([chunk, chunk.new_zeros(short, *chunk.shape[1:])])
            parts.append(self._run(chunk)[: step - short])
        return torch.cat(parts).to(images.device) if parts else torch.empty(0)


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256(b"arena-onnx/1\0")
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
