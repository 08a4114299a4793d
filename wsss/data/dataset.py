"""Reading any VOC-format root: images, masks, image-level labels; and checking one up front."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from wsss.data.imagefile import decode
from wsss.data.palette import IGNORE, load_mask
from wsss.errors import WsssError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def split_path(root: str | Path, split: str) -> Path:
    return Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_split(root: str | Path, split: str) -> list[str]:
    """Image names of a split: the first token of each non-blank line; missing or empty is an error."""
    path = split_path(root, split)
    if not path.is_file():
        raise WsssError(f"{path}: split file not found (split '{split}')")
    try:
        names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise WsssError(f"{path}: not a text file of image names: {exc}") from None
    if not names:
        raise WsssError(f"{path}: split '{split}' is empty")
    return names


def read_image(path: str | Path) -> Image.Image:
    """A fully decoded RGB image; a missing, truncated or corrupt file is a WsssError naming it."""
    return decode(path, "image", lambda image: image.convert("RGB"))


def check_mask(mask: np.ndarray, image_size: tuple[int, int], num_classes: int, path: str | Path) -> None:
    """Refuse a mask whose size differs from its image's (W, H) or whose values are not classes or 255."""
    if mask.shape != (image_size[1], image_size[0]):
        raise WsssError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                        f"{image_size[0]}x{image_size[1]} (WxH)")
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = np.nonzero(counts[num_classes:IGNORE])[0]
    if bad.size:
        raise WsssError(f"{path}: mask value {int(bad[0]) + num_classes} is outside the classes "
                        f"0..{num_classes - 1} and {IGNORE} (ignore)")


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot float32 vector over the foreground classes 1..num_classes-1 present in ``mask``."""
    present = np.bincount(mask.ravel(), minlength=256)[1:num_classes] > 0
    return present.astype(np.float32)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float 3xHxW tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(raw: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of a 3xHxW (or Bx3xHxW) tensor in [0, 1]."""
    return (raw - _MEAN.to(raw.device)) / _STD.to(raw.device)


class VOCSegmentation(Dataset):
    """One split of a VOC-format root (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).

    Each item is a dict: ``image`` (normalised float 3xHxW), ``raw`` (the same pixels in [0, 1]),
    ``mask`` (int64 HxW, 255 = ignore), ``labels`` (float32 multi-hot over the num_classes-1
    foreground classes, from the whole un-augmented mask) and ``name``. ``transform`` takes and
    returns a (PIL image, PIL mask) pair; without one the full image is returned. ``mask_dir``: the
    folder of masks under ``root`` (``SegmentationClassAug`` for VOC's training masks, SBD first), or
    a folder anywhere (a ``Path``: the second stage's pseudo-masks).
    """

    def __init__(self, root: str | Path, split: str, num_classes: int,
                 transform: Callable[[Image.Image, Image.Image], tuple[Image.Image, Image.Image]] | None = None,
                 mask_dir: str | Path = "SegmentationClass"):
        self.root = Path(root)
        self.mask_dir = mask_dir
        self.split = split
        self.num_classes = int(num_classes)
        self.transform = transform
        self.names = read_split(self.root, split)
        missing = [p for name in self.names for p in (self.image_path(name), self.mask_path(name)) if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise WsssError(f"{missing[0]}: listed in {split_path(self.root, split)} but not found{more}")

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        folder = self.mask_dir if isinstance(self.mask_dir, Path) else self.root / self.mask_dir
        return folder / f"{name}.png"

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The checked (PIL RGB image, uint8 mask) pair of item ``index``, untransformed."""
        name = self.names[index]
        image = read_image(self.image_path(name))
        mask = load_mask(self.mask_path(name))
        check_mask(mask, image.size, self.num_classes, self.mask_path(name))
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        labels = labels_from_mask(mask, self.num_classes)
        if self.transform is not None:
            image, mask_image = self.transform(image, Image.fromarray(mask))
            mask = np.asarray(mask_image, dtype=np.uint8)
        raw = to_tensor(image)
        return {
            "image": normalize(raw),
            "raw": raw,
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "name": self.names[index],
        }


def verify_root(root: str | Path, splits: Iterable[str], num_classes: int, progress: bool = True) -> dict[str, int]:
    """Check every listed image and mask of ``splits`` under ``root``; return the split sizes.

    Raises one WsssError listing the problems found (each naming its file).
    """
    root = Path(root)
    if not root.is_dir():
        raise WsssError(f"{root}: dataset folder not found")
    sizes, names = {}, {}
    for split in splits:
        listed = read_split(root, split)
        sizes[split] = len(listed)
        names.update(dict.fromkeys(listed))
    problems: list[str] = []
    for name in tqdm(names, desc=f"verify {root.name}", unit="img", disable=not progress):
        image_path = root / "JPEGImages" / f"{name}.jpg"
        mask_path = root / "SegmentationClass" / f"{name}.png"
        try:
            image = read_image(image_path)
            mask = load_mask(mask_path)
            check_mask(mask, image.size, num_classes, mask_path)
        except WsssError as exc:
            problems.append(str(exc))
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise WsssError(f"{len(problems)} bad file(s) in {root}: {shown}{more}")
    return sizes
