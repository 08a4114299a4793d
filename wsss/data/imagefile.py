"""Decoding image files (photos and masks) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from PIL import Image

from wsss.errors import WsssError

T = TypeVar("T")


def decode(path: str | Path, kind: str, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` applied to the fully decoded file at ``path`` (a ``kind`` file: image, mask).

    A missing, truncated or corrupt file is a WsssError naming it; a WsssError raised by
    ``convert`` (e.g. a wrong image mode) passes through unchanged.
    """
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: {kind} file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return convert(image)
    except WsssError:
        raise
    except Exception as exc:  # PIL raises many types for truncated or corrupt files
        raise WsssError(f"{path}: cannot read {kind} (truncated or corrupt): {exc}") from None
