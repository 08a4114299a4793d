"""Joint image/mask augmentation for training: the weak network's (random resized crop, flip, colour jitter) and
the second stage's (random scale, padded random crop, flip)."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from wsss.data.dataset import IMAGENET_MEAN
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


class ScaleCropTransform:
    """The second stage's DeepLab augmentation (deeplab-pytorch's VOC configuration, torchvision's
    segmentation reference): image and mask scaled by a factor drawn uniformly from ``scale`` (image
    bilinear, mask nearest), padded on the right and bottom up to ``crop_size`` (the image with the
    ImageNet mean colour, 0 after normalisation; the mask with ``ignore_index``), a random square
    ``crop_size`` crop, then a horizontal flip with probability ``hflip``.

    Called with PIL images, returns PIL images; randomness comes from torch's generator.
    """

    def __init__(self, crop_size: int, scale: Sequence[float], hflip: float, ignore_index: int):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise WsssError(f"key 'retrain.scale': {list(scale)} must be two positive numbers, min <= max")
        self.crop_size, self.scale = int(crop_size), (float(scale[0]), float(scale[1]))
        self.hflip, self.ignore_index = float(hflip), int(ignore_index)
        self.fill = tuple(round(255 * m) for m in IMAGENET_MEAN)

    @classmethod
    def from_config(cls, cfg: dict) -> "ScaleCropTransform":
        """Build from the resolved configuration's ``retrain`` section."""
        r = cfg["retrain"]
        return cls(r["crop_size"], r["scale"], r["hflip"], cfg["eval"]["ignore_index"])

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        low, high = self.scale
        factor = low + (high - low) * torch.rand(1).item()
        size = [max(1, round(image.height * factor)), max(1, round(image.width * factor))]
        image = F.resize(image, size, InterpolationMode.BILINEAR)
        mask = F.resize(mask, size, InterpolationMode.NEAREST)
        pad = [0, 0, max(0, self.crop_size - size[1]), max(0, self.crop_size - size[0])]  # left, top, right, bottom
        if pad[2] or pad[3]:
            image, mask = F.pad(image, pad, fill=self.fill), F.pad(mask, pad, fill=self.ignore_index)
        top = int(torch.randint(image.height - self.crop_size + 1, (1,)))
        left = int(torch.randint(image.width - self.crop_size + 1, (1,)))
        image = F.crop(image, top, left, self.crop_size, self.crop_size)
        mask = F.crop(mask, top, left, self.crop_size, self.crop_size)
        if torch.rand(1).item() < self.hflip:
            image, mask = F.hflip(image), F.hflip(mask)
        return image, mask

    def __repr__(self) -> str:
        return f"ScaleCropTransform(crop_size={self.crop_size}, scale={self.scale}, hflip={self.hflip})"
