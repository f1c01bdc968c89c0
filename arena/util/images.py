"""Folders of images read into the arena's uint8 N x C x H x W arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arena.util.errors import ArenaError


def load_image_folder(
    folder: Path, size: int, channels: int, what: str = "trigger image"
) -> np.ndarray:
    """A user's own images (PNG, JPEG, ...), resized to the protocol's input."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ArenaError(f"{what} folder {folder} does not exist")
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in suffixes)
    if not files:
        raise ArenaError(f"no images ({', '.join(sorted(suffixes))}) in {folder}")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path in files:
        try:
            with Image.open(path) as opened:
                picture = opened.convert(mode).resize((size, size), Image.BILINEAR)
        except Exception as error:
            raise ArenaError(f"cannot read {what} {path}: {error}") from None
        array = np.asarray(picture, dtype=np.uint8)
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(images)
