"""Joint image/mask augmentation for training (random resized crop, horizontal flip, colour jitter)."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from wsss.errors import WsssError


class TrainTransform:
    """RandomResizedCrop (image bicubic, as the public SSSS / WS-FCN ``transforms.py``; mask nearest)
    to a square ``crop_size``, flip with probability ``hflip``, then ColorJitter(brightness,
    contrast, saturation, hue) on the image only.

    Called with PIL images, returns PIL images; randomness comes from torch's generator, so each
    data-loader worker draws its own.
    """

    def __init__(self, crop_size: int, scale: Sequence[float], ratio: Sequence[float], hflip: float,
                 color_jitter: Sequence[float]):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise WsssError(f"crop scale range {list(scale)} must be two numbers with 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise WsssError(f"crop ratio range {list(ratio)} must be two positive numbers, min <= max")
        if len(color_jitter) != 4:
            raise WsssError(f"color_jitter {list(color_jitter)} must be [brightness, contrast, saturation, hue]")
        self.crop_size = int(crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.jitter = T.ColorJitter(*[float(v) for v in color_jitter])

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainTransform":
        """Build from the resolved configuration's ``train`` section."""
        t = cfg["train"]
        return cls(t["crop_size"], t["crop_scale"], t["crop_ratio"], t["hflip"], t["color_jitter"])

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        top, left, height, width = T.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        size = [self.crop_size, self.crop_size]
        image = F.resized_crop(image, top, left, height, width, size, InterpolationMode.BICUBIC)
        mask = F.resized_crop(mask, top, left, height, width, size, InterpolationMode.NEAREST)
        if torch.rand(1).item() < self.hflip:
            image, mask = F.hflip(image), F.hflip(mask)
        return self.jitter(image), mask

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, jitter={self.jitter})")
