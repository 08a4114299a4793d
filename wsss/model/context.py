"""Context modules on the deep features: ASPP (SSSS), FCA (WS-FCN) and the paper's Table II alternatives.

Every module maps ``(B, in_ch, h, w)`` to ``(B, width, h, w)`` with ``width = model.head_channels``
(256 in the paper). Their BatchNorms keep their initial running stats (always eval mode), so each
acts as a learnable per-channel affine, as in the public code; FCA's output BN can instead use
batch statistics (``model.fca_bn``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import WsssError
from wsss.model.layers import ImagePooling, batch_norm, conv_bn_relu, kaiming_init, resize_to


class ASPP(nn.Module):
    """DeepLabv3 ASPP: 1x1, three atrous 3x3 and image pooling, concat -> 1x1 -> BN -> ReLU -> Dropout 0.5."""

    def __init__(self, in_ch: int, width: int, dilations: list[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, width, 1, frozen_stats=True)]
            + [conv_bn_relu(in_ch, width, 3, dilation=d, frozen_stats=True) for d in dilations]
        )
        self.pool = ImagePooling(in_ch, width)
        self.project = conv_bn_relu(width * (len(dilations) + 2), width, 1, frozen_stats=True)
        self.dropout = nn.Dropout(0.5)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [branch(x) for branch in self.branches] + [self.pool(x)]
        return self.dropout(self.project(torch.cat(feats, 1)))


class StripBranch(nn.Module):
    """Two separable paths (k x 1 then 1 x k, and 1 x k then k x 1), dilated, summed; bias-free."""

    def __init__(self, in_ch: int, width: int, kernel: int, dilation: int):
        super().__init__()
        pad = dilation * (kernel - 1) // 2

        def col(cin: int) -> nn.Conv2d:
            return nn.Conv2d(cin, width, (kernel, 1), padding=(pad, 0), dilation=dilation, bias=False)

        def row(cin: int) -> nn.Conv2d:
            return nn.Conv2d(cin, width, (1, kernel), padding=(0, pad), dilation=dilation, bias=False)

        self.path_a = nn.Sequential(col(in_ch), row(width))
        self.path_b = nn.Sequential(row(in_ch), col(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path_a(x) + self.path_b(x)


class ChannelAttention(nn.Module):
    """sigmoid(MLP(GAP(x)) + MLP(GMP(x))), MLP = 1x1 -> ReLU -> 1x1 without reduction or bias."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(width, width, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialRecalibration(nn.Module):
    """SRM: x + sigmoid(conv3x3([mean_c(x); max_c(x)])) * x."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)
        return x + torch.sigmoid(self.conv(stats)) * x


FCA_BN = ("frozen", "batch")


class FCA(nn.Module):
    """Flexible context aggregation: strip branches re-weighted by one shared channel attention,
    image pooling, concat -> 1x1 -> BN, optional SRM, Dropout 0.5.

    ``bn`` is the output BatchNorm's mode: ``frozen`` (the public code: initial running stats, a
    learnable affine) or ``batch`` (batch statistics). The strip branches are linear and bias-free,
    so with ``frozen`` nothing bounds the output's scale; on a backbone trained from scratch it can
    grow until SF2's semantic flow samples outside the map (docs/model.md, the benchmark section of the README).
    """

    def __init__(self, in_ch: int, width: int, branches: list[list[int]], srm: bool = True, bn: str = "frozen"):
        super().__init__()
        if bn not in FCA_BN:
            raise WsssError(f"key 'model.fca_bn': unknown mode {bn!r} (valid: {', '.join(FCA_BN)})")
        self.branches = nn.ModuleList([StripBranch(in_ch, width, k, d) for k, d in branches])
        self.attention = ChannelAttention(width)
        self.pool = ImagePooling(in_ch, width)
        self.fuse = nn.Conv2d(width * (len(branches) + 1), width, 1, bias=False)
        self.bn = batch_norm(width, frozen_stats=bn == "frozen")
        self.srm = SpatialRecalibration() if srm else None
        self.dropout = nn.Dropout(0.5)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for branch in self.branches:
            y = branch(x)
            feats.append(self.attention(y) * y)
        feats.append(self.pool(x))
        y = self.bn(self.fuse(torch.cat(feats, 1)))
        if self.srm is not None:
            y = self.srm(y)
        return self.dropout(y)


class PPM(nn.Module):
    """PSPNet pyramid pooling: bins 1/2/3/6, each pooled -> 1x1 (in/4) -> BN -> ReLU -> upsampled;
    concatenated with the input -> 3x3 -> width -> BN -> ReLU -> Dropout 0.5."""

    def __init__(self, in_ch: int, width: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        reduced = in_ch // len(bins)
        self.stages = nn.ModuleList([conv_bn_relu(in_ch, reduced, 1, frozen_stats=True) for _ in bins])
        self.bottleneck = conv_bn_relu(in_ch + reduced * len(bins), width, 3, frozen_stats=True)
        self.dropout = nn.Dropout(0.5)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [resize_to(stage(F.adaptive_avg_pool2d(x, b)), size) for b, stage in zip(self.bins, self.stages)]
        return self.dropout(self.bottleneck(torch.cat([x, *pyramid], 1)))


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block on the deep features (bias-free 1x1 embeddings of width in/2,
    scaled dot-product attention, zero-initialised output conv so the block starts as the identity),
    then 1x1 -> width -> BN -> ReLU -> Dropout 0.5."""

    def __init__(self, in_ch: int, width: int):
        super().__init__()
        inner = in_ch // 2
        self.theta = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.phi = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.g = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.out = nn.Conv2d(inner, in_ch, 1, bias=False)
        self.project = conv_bn_relu(in_ch, width, 1, frozen_stats=True)
        self.dropout = nn.Dropout(0.5)
        kaiming_init(self)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)            # B, N, D
        k = self.phi(x).flatten(2)                                # B, D, N
        v = self.g(x).flatten(2).transpose(1, 2)                  # B, N, D
        attn = torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, h, w)
        return self.dropout(self.project(x + self.out(y)))


class LargeConv(nn.Module):
    """One dense large-kernel (7x7) conv in -> width -> BN -> ReLU -> Dropout 0.5."""

    def __init__(self, in_ch: int, width: int, kernel: int = 7):
        super().__init__()
        self.conv = conv_bn_relu(in_ch, width, kernel, frozen_stats=True)
        self.dropout = nn.Dropout(0.5)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(x))


CONTEXTS: dict[str, Callable[[int, dict], nn.Module]] = {
    "aspp": lambda c, m: ASPP(c, m["head_channels"], m["aspp_dilations"]),
    "fca": lambda c, m: FCA(c, m["head_channels"], m["fca_branches"], srm=True, bn=m["fca_bn"]),
    "fca_nosrm": lambda c, m: FCA(c, m["head_channels"], m["fca_branches"], srm=False, bn=m["fca_bn"]),
    "ppm": lambda c, m: PPM(c, m["head_channels"]),
    "nonlocal": lambda c, m: NonLocal(c, m["head_channels"]),
    "largeconv": lambda c, m: LargeConv(c, m["head_channels"]),
}


def context_name(model_cfg: dict) -> str:
    """``model.context``, with ``auto`` resolved from ``model.fca`` / ``model.fca_srm``."""
    name = model_cfg.get("context", "auto")
    if name == "auto":
        if not model_cfg["fca"]:
            return "aspp"
        return "fca" if model_cfg.get("fca_srm", True) else "fca_nosrm"
    return name


def build_context(model_cfg: dict, in_ch: int) -> nn.Module:
    name = context_name(model_cfg)
    if name not in CONTEXTS:
        raise WsssError(f"key 'model.context': unknown context module {name!r} (valid: auto, {', '.join(CONTEXTS)})")
    return CONTEXTS[name](in_ch, model_cfg)
