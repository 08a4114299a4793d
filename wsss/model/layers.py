"""Small building blocks shared by the backbones, context modules and fusion modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that always normalises with its initial running stats (mean 0, var 1).

    It never switches to batch statistics, whatever the module mode, so it acts as a learnable
    per-channel affine; the running buffers stay in the state dict for compatibility.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


def batch_norm(channels: int, frozen_stats: bool = False) -> nn.BatchNorm2d:
    """A BatchNorm with batch statistics, or with ``frozen_stats`` a ``FrozenStatsBatchNorm2d``."""
    return FrozenStatsBatchNorm2d(channels) if frozen_stats else nn.BatchNorm2d(channels)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1, stride: int = 1,
                 bias: bool = False, frozen_stats: bool = False) -> nn.Sequential:
    """Conv (``same`` padding) -> BatchNorm -> ReLU."""
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, dilation=dilation, bias=bias),
        batch_norm(out_ch, frozen_stats),
        nn.ReLU(inplace=True),
    )


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal conv weights, zero conv biases, unit/zero BatchNorm affine."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (a no-op when the size already matches)."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> BN (frozen stats) -> ReLU, broadcast back to the input size."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = conv_bn_relu(in_ch, out_ch, 1, frozen_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])
