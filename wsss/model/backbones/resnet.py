"""torchvision ResNet-50 / ResNet-101 with layer4 at stride 1 (no dilation): output stride 16.

shallow = layer1 output (256 ch, OS 4); deep = layer4 output (2048 ch, OS 16). The classifier
(``fc``) is dropped; the remaining parameter names are torchvision's, so its ImageNet state dict
loads once ``fc.*`` is removed.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from wsss.model.backbones.base import Backbone

_BUILDERS = {"resnet50": tv_resnet.resnet50, "resnet101": tv_resnet.resnet101}


class ResNet(Backbone):
    shallow_channels = 256
    deep_channels = 2048
    output_stride = 16

    def __init__(self, depth_name: str):
        super().__init__()
        net = _BUILDERS[depth_name](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        first = self.layer4[0]
        first.conv2.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        first.stride = 1

    def early_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        shallow = self.layer1(x)
        deep = self.layer4(self.layer3(self.layer2(shallow)))
        return {"shallow": shallow, "deep": deep}


def torchvision_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``name`` (from the torch hub cache, else downloaded)."""
    weights = {"resnet50": tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
               "resnet101": tv_resnet.ResNet101_Weights.IMAGENET1K_V1}[name]
    return weights.get_state_dict(progress=False)


def torchvision_weights_url(name: str) -> str:
    return {"resnet50": tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
            "resnet101": tv_resnet.ResNet101_Weights.IMAGENET1K_V1}[name].url
