"""Small CIFAR-10 and STL-10 folders in the on-disk formats torchvision reads.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` ... ``data_batch_5`` and
``test_batch``, pickles of a dict with ``data`` (N x 3072 uint8: the red, green and blue
32 x 32 planes, each row by row) and ``labels``; ``batches.meta`` with ``label_names``.
STL-10 (``stl10_binary``): ``train_X.bin`` / ``test_X.bin``, raw uint8 images of
3 x 96 x 96 stored column by column, ``train_y.bin`` / ``test_y.bin`` with one byte per
label, 1-10, and ``class_names.txt``.

The images are learnable: each class has its own colour and a bright square at its own
place, plus noise, so a model that reads images and labels the way the real files mean
them scores far above chance, and one that scrambles them does not.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
STL10_CLASSES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)


def class_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 (N, 3, size, size): a colour and a square per class, with noise."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).integers(40, 216, size=(10, 3))
    images = rng.normal(0, 25, size=(len(labels), 3, size, size))
    images += colours[labels][:, :, None, None]
    square = size // 4
    for index, label in enumerate(labels):
        row, column = divmod(int(label), 4)  # the square's place: 3 rows of 4 cells
        top, left = row * square + square // 2, column * square
        images[index, :, top : top + square, left : left + square] = 255
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def balanced_labels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(count) % 10)


def write_cifar10(root: Path, per_batch: int = 80, test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five train batches of ``per_batch`` images and a
    test batch of ``test``; the folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        count = test if name == "test_batch" else per_batch
        labels = balanced_labels(count, seed + index)
        images = class_images(labels, 32, seed + 100 + index)
        batch = {
            "batch_label": f"fixture batch {index + 1}",
            "labels": labels.tolist(),
            "data": images.reshape(count, 3 * 32 * 32),
            "filenames": [f"fixture_{index}_{item}.png" for item in range(count)],
        }
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=2)
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump(meta, file, protocol=2)
    return folder


def write_stl10(root: Path, train: int = 200, test: int = 200, seed: int = 0) -> Path:
    """``root/stl10_binary`` with ``train`` and ``test`` labelled 96 x 96 images; the
    folder. No unlabeled images: the arena never reads them."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", train, 0), ("test", test, 1)):
        labels = balanced_labels(count, seed + 10 + offset)
        images = class_images(labels, 96, seed + 20 + offset)
        write_stl10_images(folder / f"{split}_X.bin", images)
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return folder


def write_stl10_images(path: Path, images: np.ndarray) -> None:
    """(N, 3, H, W) uint8 as STL-10 stores them: each channel column by column."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def read_cifar10_labels(folder: Path) -> np.ndarray:
    """Every label in the fixture's files, train batches then test, as written."""
    labels = []
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "rb") as file:
            labels.extend(pickle.load(file)["labels"])
    return np.asarray(labels)
