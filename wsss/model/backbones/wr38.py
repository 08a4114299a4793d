"""WideResNet-38 ("model A1", output stride 8) with the PSA/SSSS parameter names.

Pre-activation residual blocks: BN + ReLU come first and that activation feeds both the shortcut
projection (``conv_branch1``, when the shape changes) and the residual branch. Parameter names
(``conv1a``, ``b2.bn_branch2a``, ``b6.conv_branch2b2``, ``bn7``, ...) match the public ImageNet
weights file ``ilsvrc-cls_rna-a1_cls1000_ep-0001.pth``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.model.backbones.base import Backbone


class ResBlock(nn.Module):
    """Two 3x3 convs; the first may be strided and has its own dilation."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int = 1, dilation: int = 1):
        super().__init__()
        self.project = in_ch != out_ch or stride != 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride=stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if self.project:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act) if self.project else x
        branch = self.conv_branch2a(act)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch


class BottleneckBlock(nn.Module):
    """1x1 -> dilated 3x3 -> 1x1 with channel dropout before the last two convs."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act)
        branch = self.conv_branch2a(act)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch


# (name, block constructor arguments); shallow features are tapped after b3_2.
_STAGES: list[tuple[str, tuple]] = [
    ("b2", (64, 128, 128, 2)), ("b2_1", (128, 128, 128)), ("b2_2", (128, 128, 128)),
    ("b3", (128, 256, 256, 2)), ("b3_1", (256, 256, 256)), ("b3_2", (256, 256, 256)),
    ("b4", (256, 512, 512, 2)), *[(f"b4_{i}", (512, 512, 512)) for i in range(1, 6)],
    ("b5", (512, 512, 1024, 1, 1, 2)), ("b5_1", (1024, 512, 1024, 1, 2, 2)), ("b5_2", (1024, 512, 1024, 1, 2, 2)),
]
_SHALLOW_TAP = "b3_2"


class WR38(Backbone):
    """WideResNet-38: shallow = b3_2 output (256 ch, OS 4, raw residual sum); deep = ReLU(bn7) (4096 ch, OS 8)."""

    shallow_channels = 256
    deep_channels = 4096
    output_stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self._stage_names = [name for name, _ in _STAGES]
        for name, args in _STAGES:
            self.add_module(name, ResBlock(*args))
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def early_modules(self) -> list[nn.Module]:
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1a(x)
        shallow = None
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name == _SHALLOW_TAP:
                shallow = x
        x = self.b7(self.b6(x))
        deep = F.relu(self.bn7(x))
        return {"shallow": shallow, "deep": deep}
