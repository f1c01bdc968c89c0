"""KeyGen pieces: abstract trigger images, hash commitments and key files.

The marking key ``mk`` holds the trigger images ``T``, their labels ``T_L`` and one
32-byte nonce per image and per label. The verification key ``vk`` is public: the
SHA-256 commitment ``H(nonce || encoding)`` to every image and every label. Verify
opens every commitment before it queries a model, so a key altered after it was
committed cannot be used.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import json
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from arena.util.errors import ArenaError, KeyTamperedError
from arena.util.jsonio import read_json, write_json_atomic

if TYPE_CHECKING:
    pass


MARKING_KEY_FORMAT = "arena-marking-key/1"


VERIFICATION_KEY_FORMAT = "arena-verification-key/1"


NONCE_BYTES = 32


# What a key file may claim, far above any real key: more is refused before anything is
# allocated. A JSON file (key, proof, model card) is read only up to MAX_JSON_BYTES.
MAX_CLASSES = 100_000


MAX_TRIGGERS = 100_000


MAX_IMAGE_SIDE = 1024


MAX_CHANNELS = 4


def encode_image(image: np.ndarray) -> bytes:
    """Canonical bytes of a uint8 (C, H, W) image: a tag, its shape, its pixels."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ArenaError(f"trigger images must be uint8 (C, H, W), got {image.dtype} {image.shape}")
    return (
        b"arena-image/1" + struct.pack(">3I", *image.shape) + np.ascontiguousarray(image).tobytes()
    )


def encode_label(label: int) -> bytes:
    return b"arena-label/1" + struct.pack(">q", int(label))


def commit(nonce: bytes, encoding: bytes) -> str:
    return hashlib.sha256(nonce + encoding).hexdigest()


def abstract_images(count: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` procedurally drawn abstract images, uint8 (count, channels, size, size).

    Each image layers a smooth colour field, a few filled shapes, a few strokes and
    pixel noise, all drawn from ``rng``: the space of images is so large that two keys
    almost never share one.
    """
    return np.stack([_abstract_image(size, channels, rng) for _ in range(count)])


def _abstract_image(size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.linspace(0.0, 1.0, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    # Smooth colour field: a coarse random grid, bilinearly upsampled.
    coarse = int(rng.integers(2, 6))
    field = torch.as_tensor(rng.random((1, channels, coarse, coarse)), dtype=torch.float32)
    image = torch.nn.functional.interpolate(
        field, size=(size, size), mode="bilinear", align_corners=True
    )[0].numpy()
    for _ in range(int(rng.integers(1, 5))):  # filled ellipses and rectangles
        colour = rng.random((channels, 1, 1))
        cy, cx = rng.random(2)
        ry, rx = rng.uniform(0.08, 0.45, 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        image = np.where(mask[None], colour, image)
    for _ in range(int(rng.integers(1, 5))):  # strokes: thick line segments
        colour = rng.random((channels, 1, 1))
        (y0, x0), (y1, x1) = rng.random((2, 2))
        width = rng.uniform(0.02, 0.08)
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        distance = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
        image = np.where((distance <= width)[None], colour, image)
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.15), image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class KeyExhibit:
    """What a key feeds a model or reads from it, for people to look at (the site's key
    pictures): images with the labels the key pairs them with, and bits."""

    images: np.ndarray | None = None  # uint8 (n, C, H, W)
    labels: np.ndarray | None = None  # int64 (n,): one per image
    label_kind: str = "committed label"  # what the labels are, in words
    controls: tuple[np.ndarray, np.ndarray] | None = None  # control images, true labels
    bits: np.ndarray | None = None  # uint8 0/1: a white-box key's secret bits
    where: str = ""  # what the bits are read from, e.g. a layer's weights


class Key(abc.ABC):
    """A marking key and its public verification key, as a scheme defines them.

    Besides storing and opening itself, a key answers what the core asks of every key
    (so the core never asks which class of key it holds): how many classes its labels
    range over, how many disjoint subsets it verifies in, its committed labels and the
    queries a public label check may test.
    """

    scheme: str
    # True when anyone holding the verification key can check a proof that opens some
    # of its commitments (cut-and-choose, ``arena prove``): trigger-set keys.
    public_verification: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A public identity of the key: the hash of its verification key."""

    @abc.abstractmethod
    def open(self) -> None:
        """Check that the marking key opens every commitment of the verification key;
        ``KeyTamperedError`` otherwise. A key that does not open claims nothing."""

    @abc.abstractmethod
    def save(self, directory: Any) -> None:
        """Write ``mk.json`` (secret) and ``vk.json`` (public) to ``directory``."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Any) -> Key:
        """The key saved in ``directory``, opened."""

    @classmethod
    @abc.abstractmethod
    def from_files(cls, mk_path: Any, vk_path: Any) -> Key:
        """Read ``mk`` and ``vk`` and check that ``mk`` opens ``vk``."""

    @classmethod
    @abc.abstractmethod
    def public_fingerprint(cls, vk_path: Any) -> str:
        """The fingerprint of a verification key file on its own (no ``mk``): what the
        ledger records at registration. A malformed file is refused."""

    def class_count(self) -> int | None:
        """The number of classes the key's labels range over (a model of another number
        of classes is refused); None for keys without class labels (bits)."""
        return None

    def subset_count(self) -> int:
        """How many disjoint subsets the key verifies in (multiple verification)."""
        return 1

    def subset(self, index: int) -> Key:
        """Subset ``index`` as a key of its own."""
        if index != 0:
            raise ArenaError(f"subset {index} does not exist; the key has 1")
        return self

    def committed_labels(self) -> np.ndarray | None:
        """The class labels the key commits to, drawn uniformly for an exact-null scheme
        (checked before a verdict); None for keys without class labels."""
        return None

    def queries(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (uint8 images, labels) a verifier queries the model with, for the public
        label check; None when verification does not query the model (white-box)."""
        return None

    def has_controls(self) -> bool:
        """True when each trigger is paired with a committed control input."""
        return False

    def recorded_params(self) -> dict[str, Any]:
        """The scheme's parameters the key was drawn with, away from the defaults, as its
        verification key records them (empty: the defaults, or a kind of key that does
        not record them)."""
        return {}

    def with_params(self, params: Mapping[str, Any]) -> Key:
        """This key recording ``params`` (before it is published: they are part of its
        identity). Keys that record nothing (white-box keys, whose null is exact and
        whose evidence reads no parameter) return themselves."""
        return self

    def exhibit(self) -> KeyExhibit:
        """What the key feeds or reads from a model, to be looked at (nothing by default)."""
        return KeyExhibit()


@dataclass(frozen=True)
class VerificationKey:
    """The public part: commitments to every trigger image and label."""

    scheme: str
    num_classes: int
    image_shape: tuple[int, int, int]
    image_commitments: tuple[str, ...]
    label_commitments: tuple[str, ...]
    # Multiple verification: the triggers form this many equal, disjoint, consecutive
    # subsets, and each verification reveals one of them.
    subsets: int = 1
    # Schemes whose triggers all carry one label pair trigger i with control input i (the
    # same source image without the trigger pattern, or an ordinary input) and its true
    # label, committed in the same way: the evidence counts a trigger only when the model
    # also answers its control right, so a model that answers the target class to
    # everything is not a marked model.
    controls: VerificationKey | None = None
    # The scheme's parameters set away from its defaults when the key was drawn (``arena
    # keygen -D``): part of the key's identity, so a verifier decides with the scheme as
    # it was configured (its null is that configuration's calibration). None: defaults.
    params: Mapping[str, Any] | None = None

    @property
    def subset_size(self) -> int:
        return len(self.image_commitments) // self.subsets

    def subset_indices(self, index: int) -> range:
        """The positions of subset ``index``'s triggers."""
        if not 0 <= index < self.subsets:
            raise ArenaError(
                f"subset {index} does not exist; the key has {self.subsets} (0-{self.subsets - 1})"
            )
        return range(index * self.subset_size, (index + 1) * self.subset_size)

    def select(self, indices: Sequence[int]) -> VerificationKey:
        """The commitments at ``indices`` as a single-subset key of their own."""
        return dataclasses.replace(
            self,
            image_commitments=tuple(self.image_commitments[i] for i in indices),
            label_commitments=tuple(self.label_commitments[i] for i in indices),
            subsets=1,
            controls=self.controls.select(indices) if self.controls else None,
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of this key: its public identity."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VERIFICATION_KEY_FORMAT,
            "scheme": self.scheme,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "commitments": [
                {"image": image, "label": label}
                for image, label in zip(self.image_commitments, self.label_commitments)
            ],
            # Written only when there are several, so single-subset keys keep their identity.
            **({"subsets": self.subsets} if self.subsets > 1 else {}),
            # Written only when there are controls, so keys without them keep their identity.
            **({"controls": self.controls.to_dict()["commitments"]} if self.controls else {}),
            # Written only when set, so keys of a scheme at its defaults keep their identity.
            **({"params": dict(self.params)} if self.params else {}),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str = "verification key") -> VerificationKey:
        try:
            if record.get("format") != VERIFICATION_KEY_FORMAT:
                raise ValueError(f"format is {record.get('format')!r}")
            commitments = record["commitments"]
            image_commitments = tuple(str(entry["image"]) for entry in commitments)
            label_commitments = tuple(str(entry["label"]) for entry in commitments)
            for digest in image_commitments + label_commitments:
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"{digest!r} is not a SHA-256 hex digest")
            if not 1 <= len(image_commitments) <= MAX_TRIGGERS:
                raise ValueError(
                    f"it commits to {len(image_commitments)} triggers (1-{MAX_TRIGGERS:,} allowed)"
                )
            subsets = int(record.get("subsets", 1))
            if subsets < 1 or len(image_commitments) % subsets:
                raise ValueError(f"{len(image_commitments)} triggers do not split into {subsets}")
            controls = None
            if "controls" in record:
                inner = {k: v for k, v in record.items() if k not in ("controls", "params")}
                controls = cls.from_dict({**inner, "commitments": record["controls"]}, source)
                if len(controls.image_commitments) != len(image_commitments):
                    raise ValueError(
                        f"{len(controls.image_commitments)} controls for "
                        f"{len(image_commitments)} triggers"
                    )
            return cls(
                scheme=str(record["scheme"]),
                num_classes=check_num_classes(record["num_classes"]),
                image_shape=check_image_shape(record["image_shape"]),
                image_commitments=image_commitments,
                label_commitments=label_commitments,
                subsets=subsets,
                controls=controls,
                params=_check_params(record.get("params")),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise KeyTamperedError(f"{source} is malformed: {error}") from None


def _check_params(value: Any) -> dict[str, Any] | None:
    """A key's recorded scheme parameters: names to plain JSON scalars, or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError(f"params must be a non-empty object, got {value!r}")
    for name, item in value.items():
        if not isinstance(name, str) or not (item is None or isinstance(item, str | int | float)):
            raise ValueError(f"params must map names to numbers, strings or null: {name!r}")
    return dict(value)


def check_num_classes(value: Any) -> int:
    """A key's class count: an integer from 2 to ``MAX_CLASSES``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_classes must be an integer, got {value!r}")
    if not 2 <= value <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in [2, {MAX_CLASSES:,}], got {value}")
    return value


def check_image_shape(value: Any) -> tuple[int, int, int]:
    """A trigger image's (C, H, W): integers, 1-4 channels, sides 1 to ``MAX_IMAGE_SIDE``."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"image_shape must be [channels, height, width], got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"image_shape must hold integers, got {value!r}")
    channels, height, width = value
    if not (1 <= channels <= MAX_CHANNELS and 1 <= height <= MAX_IMAGE_SIDE >= width >= 1):
        raise ValueError(
            f"image_shape {list(value)} is out of range (1-{MAX_CHANNELS} channels, sides "
            f"1-{MAX_IMAGE_SIDE})"
        )
    return channels, height, width


@dataclass(frozen=True, eq=False)
class TriggerKey(Key):
    """A trigger-set marking key ``mk`` with its verification key ``vk``."""

    scheme: str
    num_classes: int
    images: np.ndarray  # uint8 (n, C, H, W)
    labels: np.ndarray  # int64 (n,)
    image_nonces: tuple[bytes, ...]
    label_nonces: tuple[bytes, ...]
    vk: VerificationKey
    # Control input i (with its true label) for trigger i, committed like the triggers;
    # see ``VerificationKey.controls``. None for schemes that need no controls.
    controls: TriggerKey | None = None

    @classmethod
    def create(
        cls,
        scheme: str,
        num_classes: int,
        images: np.ndarray,
        labels: np.ndarray,
        subsets: int = 1,
        controls: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> TriggerKey:
        """Commit to ``images`` and ``labels`` (and ``controls``, one control image and
        label per trigger) with fresh random nonces."""
        if subsets < 1 or len(images) % subsets:
            raise ArenaError(f"{len(images)} triggers do not split into {subsets} equal subsets")
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
        if len(images) != len(labels) or len(images) == 0:
            raise ArenaError(
                f"a key needs as many labels as images, got {len(images)} and {len(labels)}"
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ArenaError(f"trigger labels must lie in [0, {num_classes})")
        image_nonces = tuple(secrets.token_bytes(NONCE_BYTES) for _ in images)
        label_nonces = tuple(secrets.token_bytes(NONCE_BYTES) for _ in labels)
        vk = VerificationKey(
            scheme=scheme,
            num_classes=num_classes,
            image_shape=tuple(int(v) for v in images.shape[1:]),
            image_commitments=tuple(
                commit(nonce, encode_image(image)) for nonce, image in zip(image_nonces, images)
            ),
            label_commitments=tuple(
                commit(nonce, encode_label(label)) for nonce, label in zip(label_nonces, labels)
            ),
            subsets=subsets,
        )
        control_key = None
        if controls is not None:
            control_key = cls.create(scheme, num_classes, *controls, subsets=subsets)
            if len(control_key) != len(labels) or control_key.vk.image_shape != vk.image_shape:
                raise ArenaError(
                    f"a key needs one control image of the triggers' shape per trigger, got "
                    f"{len(control_key)} of shape {control_key.vk.image_shape} for {len(labels)}"
                )
            vk = dataclasses.replace(vk, controls=control_key.vk)
        return cls(scheme, num_classes, images, labels, image_nonces, label_nonces, vk, control_key)

    @classmethod
    def forged(
        cls, key: TriggerKey, rng: np.random.Generator, vk_record: dict[str, Any] | None = None
    ) -> TriggerKey:
        """The key a forger saves to claim a model marked with a key of this type, built
        around ``key``: the plain trigger key of images and labels the forger chose.
        ``vk_record`` is the victim's published verification key when the forger reuses
        its commitments (forge-from-vk). A subclass whose keys commit to more (BlackMarks's
        cluster map) adds a forger's choice of it, so a forgery is judged on its evidence
        and not refused for its file format."""
        return key

    def subset(self, index: int) -> TriggerKey:
        """Subset ``index`` of a multiple-verification key, as a key of its own."""
        return self.select(self.vk.subset_indices(index))

    def select(self, indices: Sequence[int]) -> TriggerKey:
        """The triggers at ``indices`` (with their commitments) as a key of its own."""
        indices = list(indices)
        return dataclasses.replace(
            self,
            images=self.images[indices],
            labels=self.labels[indices],
            image_nonces=tuple(self.image_nonces[i] for i in indices),
            label_nonces=tuple(self.label_nonces[i] for i in indices),
            vk=self.vk.select(indices),
            controls=self.controls.select(indices) if self.controls else None,
        )

    def __len__(self) -> int:
        return len(self.labels)

    public_verification: ClassVar[bool] = True

    def class_count(self) -> int:
        return self.num_classes

    def subset_count(self) -> int:
        return self.vk.subsets

    def committed_labels(self) -> np.ndarray:
        return self.labels

    def queries(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images, self.labels

    def has_controls(self) -> bool:
        return self.controls is not None

    def recorded_params(self) -> dict[str, Any]:
        return dict(self.vk.params or {})

    def with_params(self, params: Mapping[str, Any]) -> TriggerKey:
        vk = dataclasses.replace(self.vk, params=dict(params) or None)
        return dataclasses.replace(self, vk=vk)

    def exhibit(self) -> KeyExhibit:
        controls = self.controls
        return KeyExhibit(
            images=self.images,
            labels=self.labels,
            controls=None if controls is None else (controls.images, controls.labels),
        )

    @property
    def fingerprint(self) -> str:
        return self.vk.fingerprint

    def open(self, vk: VerificationKey | None = None) -> None:
        """Open every commitment of ``vk`` (by default the key's own) against this ``mk``.

        Raises ``KeyTamperedError`` naming the first commitment that does not open.
        """
        vk = vk or self.vk
        if vk.scheme != self.scheme:
            raise KeyTamperedError(
                f"the verification key is for scheme {vk.scheme!r}, not {self.scheme!r}"
            )
        if len(vk.image_commitments) != len(self) or len(vk.label_commitments) != len(self):
            raise KeyTamperedError(
                f"the verification key commits to {len(vk.image_commitments)} triggers, "
                f"the marking key holds {len(self)}"
            )
        for index in range(len(self)):
            image_opening = commit(self.image_nonces[index], encode_image(self.images[index]))
            if image_opening != vk.image_commitments[index]:
                raise KeyTamperedError(
                    f"trigger {index}: the image does not open its commitment; the marking "
                    "key or the verification key was altered"
                )
            label_opening = commit(self.label_nonces[index], encode_label(self.labels[index]))
            if label_opening != vk.label_commitments[index]:
                raise KeyTamperedError(
                    f"trigger {index}: the label does not open its commitment; the marking "
                    "key or the verification key was altered"
                )
        if (self.controls is None) != (vk.controls is None):
            raise KeyTamperedError(
                "the verification key and the marking key disagree on whether the triggers "
                "have controls; one of them was altered"
            )
        if self.controls is not None:
            try:
                self.controls.open(vk.controls)
            except KeyTamperedError as error:
                raise KeyTamperedError(f"control of {error}") from None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Trigger images as float model inputs in [0, 1], and their labels."""
        return torch.as_tensor(self.images).float() / 255.0, torch.as_tensor(self.labels)

    # --- files --------------------------------------------------------------------

    def marking_key_dict(self) -> dict[str, Any]:
        return {
            "format": MARKING_KEY_FORMAT,
            "scheme": self.scheme,
            "num_classes": self.num_classes,
            "image_shape": list(self.images.shape[1:]),
            "triggers": [
                {
                    "image": base64.b64encode(image.tobytes()).decode(),
                    "label": int(label),
                    "image_nonce": image_nonce.hex(),
                    "label_nonce": label_nonce.hex(),
                }
                for image, label, image_nonce, label_nonce in zip(
                    self.images, self.labels, self.image_nonces, self.label_nonces
                )
            ],
            **({"controls": self.controls.marking_key_dict()["triggers"]} if self.controls else {}),
        }

    def save(self, directory: Path | str) -> None:
        """Write ``mk.json`` (secret, mode 0600, atomically) and ``vk.json`` (public)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / "mk.json", self.marking_key_dict(), mode=0o600)
        write_json_atomic(directory / "vk.json", self.vk.to_dict(), mode=0o644)

    @classmethod
    def load(cls, directory: Path | str) -> TriggerKey:
        directory = Path(directory)
        return cls.from_files(directory / "mk.json", directory / "vk.json")

    # The verification key class a key of this type publishes: a subclass whose keys
    # commit to more (a cluster map, an API secret) names its own.
    vk_type: ClassVar[type[VerificationKey]] = VerificationKey

    @classmethod
    def public_fingerprint(cls, vk_path: Path) -> str:
        return cls.vk_type.from_dict(read_json(vk_path), source=str(vk_path)).fingerprint

    @classmethod
    def from_files(cls, mk_path: Path, vk_path: Path) -> TriggerKey:
        """Read both files and open every commitment; tampering fails here."""
        vk = cls.vk_type.from_dict(read_json(vk_path), source=str(vk_path))
        record = read_json(mk_path)
        try:
            key = cls._from_record(record, vk)._read_extras(record)
        except (KeyError, TypeError, ValueError, OverflowError, ArenaError) as error:
            raise KeyTamperedError(f"marking key {mk_path} is malformed: {error}") from None
        key.open(vk)
        return key

    def _read_extras(self, record: dict[str, Any]) -> TriggerKey:
        """This key with what a subclass keeps in ``mk.json`` beyond the triggers (read
        from ``record``); raise ``ValueError`` (or ``KeyError``) when it is malformed."""
        return self

    @classmethod
    def _from_record(cls, record: dict[str, Any], vk: VerificationKey) -> TriggerKey:
        if record.get("format") != MARKING_KEY_FORMAT:
            raise ValueError(f"format is {record.get('format')!r}")
        controls = None
        if record.get("controls") is not None:
            if vk.controls is None:
                raise ValueError("it holds controls its verification key does not commit to")
            inner = {k: v for k, v in record.items() if k != "controls"}
            controls = cls._from_record({**inner, "triggers": record["controls"]}, vk.controls)
        # The header is bound to the verification key: the same classes and image shape
        # (the image commitments bind each image's own shape, the labels are checked below).
        num_classes = check_num_classes(record["num_classes"])
        if num_classes != vk.num_classes:
            raise ValueError(
                f"it has {num_classes} classes and its verification key {vk.num_classes}; "
                "one of them was altered"
            )
        shape = check_image_shape(record["image_shape"])
        if shape != vk.image_shape:
            raise ValueError(
                f"its image shape {list(shape)} differs from its verification key's "
                f"{list(vk.image_shape)}; one of them was altered"
            )
        triggers = record["triggers"]
        if not isinstance(triggers, list) or not triggers:
            raise ValueError("it holds no list of triggers")
        for t in triggers:
            label = t["label"]
            if isinstance(label, bool) or not isinstance(label, int):
                raise ValueError(f"trigger label {label!r} is not an integer")
            if not 0 <= label < num_classes:
                raise ValueError(f"trigger label {label} is not a class (0-{num_classes - 1})")
        images = np.stack(
            [
                np.frombuffer(base64.b64decode(t["image"], validate=True), dtype=np.uint8).reshape(
                    shape
                )
                for t in triggers
            ]
        )
        labels = np.array([t["label"] for t in triggers], dtype=np.int64)
        image_nonces = tuple(bytes.fromhex(t["image_nonce"]) for t in triggers)
        label_nonces = tuple(bytes.fromhex(t["label_nonce"]) for t in triggers)
        return cls(
            scheme=str(record["scheme"]),
            num_classes=num_classes,
            images=images,
            labels=labels,
            image_nonces=image_nonces,
            label_nonces=label_nonces,
            vk=vk,
            controls=controls,
        )
