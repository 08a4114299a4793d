"""A small conv-BN-ReLU backbone for the embedded 96-128 px synthetic dataset, trained from scratch.

A full-resolution first conv keeps the fine part textures (dots, stripes, checkers) that tell
paired classes apart; shallow = OS-4 features (48 ch); deep = OS-8 features (128 ch) after dilated
3x3 convs that widen the receptive field to about 130 px. Cheap enough that the whole pipeline runs on a CPU in
minutes: the head, not this backbone, dominates the cost.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss.model.backbones.base import Backbone
from wsss.model.layers import conv_bn_relu, kaiming_init


class SmallNet(Backbone):
    output_stride = 8

    def __init__(self, shallow_channels: int = 48, deep_channels: int = 128) -> None:
        super().__init__()
        self.shallow_channels = shallow_channels
        self.deep_channels = deep_channels
        mid = (3 * deep_channels) // 4
        self.stem = nn.Sequential(conv_bn_relu(3, 24, 3), conv_bn_relu(24, 32, 3, stride=2))
        self.stage2 = nn.Sequential(conv_bn_relu(32, shallow_channels, 3, stride=2),
                                    conv_bn_relu(shallow_channels, shallow_channels, 3))
        self.stage3 = nn.Sequential(
            conv_bn_relu(shallow_channels, mid, 3, stride=2),
            conv_bn_relu(mid, mid, 3),
            conv_bn_relu(mid, deep_channels, 3, dilation=2),
            conv_bn_relu(deep_channels, deep_channels, 3, dilation=4),
        )
        kaiming_init(self)

    def early_modules(self) -> list[nn.Module]:
        return [self.stem]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shallow = self.stage2(self.stem(x))
        return {"shallow": shallow, "deep": self.stage3(shallow)}
