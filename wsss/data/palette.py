"""PASCAL VOC mask files: the colour palette, writing class-index arrays as palette PNGs, reading them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.imagefile import decode
from wsss.errors import WsssError

IGNORE = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC palette as a flat [r, g, b, ...] list.

    Entry i takes the bits of i three at a time, spreading bit 0 of each triple to red, bit 1 to
    green and bit 2 to blue, from the most significant colour bit down. Entry 255 is (224, 224, 192).
    """
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        value = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette.extend(rgb)
    return palette


_PALETTE = voc_palette()
_PALETTE_ARRAY = np.array(_PALETTE, dtype=np.uint8).reshape(256, 3)


def colorize(mask: np.ndarray) -> np.ndarray:
    """An RGB (H, W, 3) uint8 rendering of a class-index mask in VOC colours."""
    return _PALETTE_ARRAY[np.asarray(mask, dtype=np.uint8)]


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a 2-D class-index array (values 0..255) as a VOC palette PNG."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise WsssError(f"{path}: a mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise WsssError(f"{path}: mask values must lie in 0..255")
        mask = mask.astype(np.uint8)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(_PALETTE)
    image.save(path, format="PNG", optimize=False)


def _class_indices(image: Image.Image) -> np.ndarray:
    if image.mode not in ("P", "L"):
        raise WsssError(
            f"{image.filename}: a mask must be a palette (P) or greyscale (L) PNG of class indices, "
            f"got mode {image.mode} (colour-coded masks are not class indices)"
        )
    return np.array(image, dtype=np.uint8)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG (palette or greyscale) as a uint8 array of class indices."""
    return decode(path, "mask", _class_indices)
