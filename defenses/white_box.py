"""What the white-box schemes share: a committed projection key and bit evidence.

A white-box scheme hides bits in a model's internals: a secret projection of one layer's
weights (Uchida et al.) or activations (DeepSigns), thresholded at zero, reproduces the
owner's secret bits. The marking key ``mk`` holds the projection matrix, the bits, the
layer's module path and, for DeepSigns, the key images. The public verification key
``vk`` names the scheme, the layer and the number of bits, and commits to the whole
marking key with SHA-256 over a 32-byte nonce, so a key altered after it was committed
cannot be used. Evidence: ``k`` of ``n`` bits match, tested against chance 0.5.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.keys import NONCE_BYTES, Key, KeyExhibit, commit
from arena.core.models import default_conv_layer, find_layer
from arena.core.plugin import Defense
from arena.core.stats import Evidence
from arena.core.training import ExtraLoss, train
from arena.util.errors import ArenaError, KeyTamperedError
from arena.util.jsonio import read_json, write_json_atomic

MARKING_KEY_FORMAT = "arena-white-box-marking-key/1"
VERIFICATION_KEY_FORMAT = "arena-white-box-verification-key/1"
BIT_NULL_P = 0.5  # an unmarked model's bit matches a secret random bit by chance


@dataclass(frozen=True, eq=False)
class WhiteBoxKey(Key):
    """A white-box marking key ``mk`` and the commitment its verification key holds."""

    scheme: str
    layer: str  # module path in the timm model, e.g. ``layer2.0.conv2``
    projection: np.ndarray  # float32 (rows, features)
    bits: np.ndarray  # uint8 0/1, a multiple of ``rows`` long (one row block per class)
    nonce: bytes
    commitment: str = ""
    images: np.ndarray | None = None  # uint8 (k, C, H, W): DeepSigns' key images
    classes: np.ndarray | None = None  # int64 (k,): their classes

    def __post_init__(self) -> None:
        rows = self.projection.shape[0] if self.projection.ndim == 2 else 0
        if rows == 0 or len(self.bits) == 0 or len(self.bits) % rows:
            raise ValueError(f"{len(self.bits)} bits do not fit a {self.projection.shape} matrix")
        if not set(np.unique(self.bits)) <= {0, 1} or len(self.nonce) != NONCE_BYTES:
            raise ValueError("bits must be 0 or 1 and the nonce 32 bytes")
        if self.images is not None and (
            self.images.ndim != 4 or self.classes is None or len(self.classes) != len(self.images)
        ):
            raise ValueError("key images must be (k, C, H, W), with one class each")

    @classmethod
    def create(
        cls,
        scheme: str,
        layer: str,
        projection: np.ndarray,
        bits: np.ndarray,
        images: np.ndarray | None = None,
        classes: np.ndarray | None = None,
    ) -> WhiteBoxKey:
        """Commit to a fresh key with a random nonce."""
        key = cls(
            scheme=scheme,
            layer=layer,
            projection=np.ascontiguousarray(projection, dtype=np.float32),
            bits=np.asarray(bits, dtype=np.uint8),
            nonce=secrets.token_bytes(NONCE_BYTES),
            images=None if images is None else np.ascontiguousarray(images, dtype=np.uint8),
            classes=None if classes is None else np.asarray(classes, dtype=np.int64),
        )
        return dataclasses.replace(key, commitment=key.opening())

    def payload(self) -> dict[str, Any]:
        """The marking key without its nonce: what the commitment binds."""
        record = {
            "format": MARKING_KEY_FORMAT,
            "scheme": self.scheme,
            "layer": self.layer,
            "bits": "".join(str(int(bit)) for bit in self.bits),
            "projection": _encode_array(self.projection, "<f4"),
        }
        if self.images is not None:
            record["images"] = _encode_array(self.images, "u1")
            record["classes"] = [int(label) for label in self.classes]
        return record

    def opening(self) -> str:
        return commit(self.nonce, b"arena-white-box/1" + _canonical(self.payload()))

    def open(self) -> None:
        """Raise ``KeyTamperedError`` unless this ``mk`` opens the ``vk`` commitment."""
        if self.opening() != self.commitment:
            raise KeyTamperedError(
                "the marking key does not open the verification key's commitment: one was altered"
            )

    def exhibit(self) -> KeyExhibit:
        read = "activations" if self.images is not None else "weights"
        return KeyExhibit(
            images=self.images,
            labels=self.classes,
            label_kind="class",
            bits=self.bits,
            where=f"a secret projection of {self.layer}'s {read}",
        )

    def verification_key_dict(self) -> dict[str, Any]:
        return {
            "format": VERIFICATION_KEY_FORMAT,
            "scheme": self.scheme,
            "layer": self.layer,
            "bits": len(self.bits),
            "commitment": self.commitment,
        }

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(_canonical(self.verification_key_dict())).hexdigest()

    def save(self, directory: Path | str) -> None:
        """Write ``mk.json`` (secret, mode 0600, atomically) and ``vk.json`` (public)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        marking_key = {**self.payload(), "nonce": self.nonce.hex()}
        write_json_atomic(directory / "mk.json", marking_key, mode=0o600)
        write_json_atomic(directory / "vk.json", self.verification_key_dict(), mode=0o644)

    @classmethod
    def load(cls, directory: Path | str) -> WhiteBoxKey:
        directory = Path(directory)
        return cls.from_files(directory / "mk.json", directory / "vk.json")

    @classmethod
    def public_fingerprint(cls, vk_path: Path) -> str:
        vk = read_json(vk_path)
        try:
            if vk.get("format") != VERIFICATION_KEY_FORMAT:
                raise ValueError(f"format is {vk.get('format')!r}")
            public = {
                "format": VERIFICATION_KEY_FORMAT,
                "scheme": str(vk["scheme"]),
                "layer": str(vk["layer"]),
                "bits": int(vk["bits"]),
                "commitment": str(vk["commitment"]),
            }
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise KeyTamperedError(f"verification key {vk_path} is malformed: {error}") from None
        return hashlib.sha256(_canonical(public)).hexdigest()

    @classmethod
    def from_files(cls, mk_path: Path, vk_path: Path) -> WhiteBoxKey:
        """Read both files and open the commitment; tampering with either fails here."""
        vk, mk = read_json(vk_path), read_json(mk_path)
        try:
            formats = (vk.get("format"), mk.get("format"))
            if formats != (VERIFICATION_KEY_FORMAT, MARKING_KEY_FORMAT):
                raise ValueError(f"unknown formats {formats}")
            has_images = "images" in mk  # DeepSigns' key images and their classes
            key = cls(
                scheme=str(mk["scheme"]),
                layer=str(mk["layer"]),
                projection=_decode_array(mk["projection"], "<f4"),
                bits=np.array([int(bit) for bit in mk["bits"]], dtype=np.uint8),
                nonce=bytes.fromhex(mk["nonce"]),
                commitment=str(vk["commitment"]),
                images=_decode_array(mk["images"], "u1") if has_images else None,
                classes=np.array(mk["classes"], dtype=np.int64) if has_images else None,
            )
            public = (str(vk["scheme"]), str(vk["layer"]), int(vk["bits"]))
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise KeyTamperedError(f"key {mk_path} / {vk_path} is malformed: {error}") from None
        if public != (key.scheme, key.layer, len(key.bits)):
            raise KeyTamperedError(
                f"the verification key names {public}, the marking key "
                f"{(key.scheme, key.layer, len(key.bits))}"
            )
        key.open()
        return key


class WhiteBoxDefense(Defense):
    """Base class of schemes whose key is a secret projection of one layer and bits.

    A scheme supplies ``regularizer`` (the loss term that embeds its bits) and
    ``extract_bits``; marking from scratch and the bit evidence are the same for all.
    """

    access = "white-box"
    key_type = WhiteBoxKey

    def regularizer(self, key: WhiteBoxKey, ctx: Context) -> ExtraLoss:
        raise NotImplementedError

    def extract_bits(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> np.ndarray | None:
        """The bits the model carries, or None when it lacks the key's layer or shape."""
        raise NotImplementedError

    def mark(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> nn.Module:
        owner = ctx.splits.owner
        train(
            model,
            owner.images,
            owner.labels,
            ctx.protocol.training,
            device=ctx.device,
            generator=ctx.owner_generator(),
            description="mark from scratch",
            progress=ctx.progress,
            extra_loss=self.regularizer(key, ctx),
            augment=ctx.protocol.augment,
        )
        return model

    def evidence(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> Evidence:
        key.open()  # Verify opens the commitment before it reads the model
        extracted = self.extract_bits(model, key, ctx)
        # An attacker who swapped the architecture leaves no bits to read: none match.
        matching = 0
        if extracted is not None and extracted.shape == key.bits.shape:
            matching = int((extracted == key.bits).sum())
        return Evidence(matching, len(key.bits), BIT_NULL_P, ctx.protocol.alpha)


def filter_projection(
    ctx: Context, layer: str | None, rows: int, rng: np.random.Generator
) -> tuple[str, np.ndarray]:
    """Uchida et al.'s key layer and secret matrix X: ``layer`` (default: the model's
    middle convolution with at least ``rows`` weights per filter) and a standard normal
    ``rows`` x M matrix drawn from ``rng``, M the layer's weights per filter. Refused when
    M < rows: only then can a full-rank X reach every bit string."""
    model = ctx.new_model("keygen")  # read for its structure only
    layer = layer or default_conv_layer(model, min_inputs=rows)
    inputs = filter_mean(conv_weight(find_layer(model, layer), layer)).numel()
    if rows > inputs:
        raise ArenaError(
            f"layer {layer!r} has {inputs} weights per filter, fewer than the {rows} bits "
            "to embed; choose a larger layer or fewer bits"
        )
    return layer, rng.standard_normal((rows, inputs))


def projected_filter_loss(key: WhiteBoxKey, strength: float, ctx: Context) -> ExtraLoss:
    """Uchida et al.'s embedding regularizer: ``strength * sum_j BCE(sigmoid(X w)_j, b_j)``,
    ``w`` the key's convolution weights averaged over its output filters."""
    projection = torch.as_tensor(key.projection, device=ctx.device)
    targets = torch.as_tensor(key.bits, dtype=torch.float32, device=ctx.device)

    def embedding_loss(model: nn.Module) -> torch.Tensor:
        weights = filter_mean(conv_weight(find_layer(model, key.layer), key.layer))
        logits = projection @ weights
        return strength * F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")

    return embedding_loss


def projected_filter_bits(model: nn.Module, key: WhiteBoxKey) -> np.ndarray | None:
    """The bits ``X w > 0`` a model carries in the key's convolution, or None when it has
    no convolution of that shape there."""
    layer = layer_or_none(model, key.layer)
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        return None
    weights = filter_mean(weight.detach().float().cpu())
    if weights.numel() != key.projection.shape[1]:
        return None
    return (torch.as_tensor(key.projection) @ weights > 0).numpy().astype(np.uint8)


def conv_weight(module: nn.Module, path: str) -> torch.Tensor:
    """The 4-D weight (out, in, k_h, k_w) of the convolution at ``path``."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Conv2d) or weight is None:
        raise ArenaError(f"layer {path!r} is a {type(module).__name__}, not a Conv2d")
    return weight


def filter_mean(weight: torch.Tensor) -> torch.Tensor:
    """Uchida et al.'s w: the weights averaged over the output filters, flattened (M,)."""
    return weight.mean(dim=0).flatten()


def layer_or_none(model: nn.Module, path: str) -> nn.Module | None:
    """The layer at ``path`` in a model under test, or None when it has none there."""
    try:
        return find_layer(model, path)
    except ArenaError:
        return None


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _encode_array(array: np.ndarray, dtype: str) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return {"dtype": dtype, "shape": list(array.shape), "data": base64.b64encode(data).decode()}


def _decode_array(record: dict[str, Any], dtype: str) -> np.ndarray:
    if record["dtype"] != dtype:
        raise ValueError(f"expected an array of {dtype}, got {record['dtype']!r}")
    data = base64.b64decode(record["data"], validate=True)
    return np.frombuffer(data, dtype=dtype).reshape([int(n) for n in record["shape"]]).copy()
