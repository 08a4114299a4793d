"""Fusion of the context output (deep, OS 8/16) with the shallow features (OS 4).

Each module is called as ``fusion(shallow, context)`` and returns the pair ``(x1, x2)`` that
enters the stochastic gate: ``x1`` the deep-branch features, ``x2`` the shallow-branch features,
both ``(B, width, H/4, W/4)``.

- ``gci``: the SSSS baseline (skip connection + global cue injection);
- ``sf2``: WS-FCN's semantic-flow alignment + cross-feature fusion (product of the two streams);
- ``sum`` / ``mul`` / ``concat``: the paper's Table II alternatives: the cross-feature module
  without alignment (the context output is upsampled bilinearly) joining the two streams by
  summation, multiplication, or concatenation followed by a 3x3 conv.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import WsssError
from wsss.model.layers import conv_bn_relu, kaiming_init, resize_to


class GCI(nn.Module):
    """Global cue injection: a global max-pooled (gamma, beta) from x modulates the normalised shallow features."""

    def __init__(self, shallow_ch: int, width: int):
        super().__init__()
        self.film = conv_bn_relu(width, 2 * width, 1)
        self.shallow = nn.Sequential(nn.Conv2d(shallow_ch, width, 1, bias=False), nn.BatchNorm2d(width, affine=False))
        self.out = conv_bn_relu(width, width, 1)

    def forward(self, shallow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(x).amax(dim=(2, 3), keepdim=True).chunk(2, dim=1)
        s = self.shallow(shallow)
        return self.out(F.relu(s * (gamma + 1) + beta))


class SkipGCI(nn.Module):
    """SSSS: 1x1 skip (48/256 of the width) on shallow, concat with the upsampled context, 3x3 conv = x1;
    GCI(shallow, x1) = x2."""

    def __init__(self, shallow_ch: int, width: int):
        super().__init__()
        skip_ch = max(8, round(width * 48 / 256))
        self.skip = conv_bn_relu(shallow_ch, skip_ch, 1)
        self.merge = conv_bn_relu(width + skip_ch, width, 3)
        self.gci = GCI(shallow_ch, width)
        kaiming_init(self)

    def forward(self, shallow: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.skip(shallow)
        x1 = self.merge(torch.cat([resize_to(context, skip.shape[-2:]), skip], 1))
        return x1, self.gci(shallow, x1)


class SemanticFlowAlign(nn.Module):
    """Predicts a flow field at the shallow resolution and samples the context output along it.

    The reduced context is upsampled to the shallow size bilinearly with ``align_corners=False``
    before the flow is predicted (the public WS-FCN code's ``F.interpolate`` default; the other
    upsamplings of the head use ``align_corners=True``). The context output (not its reduced copy)
    is then sampled with ``grid_sample`` (bilinear, ``align_corners=True``) on the shallow-size grid
    shifted by ``flow / [W, H]``: warp and upsampling in one step.
    """

    def __init__(self, shallow_ch: int, width: int):
        super().__init__()
        half = max(1, width // 2)
        self.reduce_shallow = nn.Conv2d(shallow_ch, half, 1, bias=False)
        self.reduce_context = nn.Conv2d(width, half, 1, bias=False)
        self.flow = nn.Conv2d(2 * half, 2, 3, padding=1, bias=False)

    def forward(self, shallow: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = shallow.shape[-2:]
        low = self.reduce_shallow(shallow)
        high = F.interpolate(self.reduce_context(context), size=(h, w), mode="bilinear", align_corners=False)
        flow = self.flow(torch.cat([high, low], 1)).float()      # sampling positions stay in fp32
        ys = torch.linspace(-1.0, 1.0, h, device=flow.device)
        xs = torch.linspace(-1.0, 1.0, w, device=flow.device)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)       # H, W, (x, y)
        scale = torch.tensor([w, h], device=flow.device, dtype=flow.dtype)
        grid = base.unsqueeze(0) + flow.permute(0, 2, 3, 1) / scale
        warped = F.grid_sample(context.float(), grid, mode="bilinear", align_corners=True)
        return warped.to(context.dtype)


class CrossFeatureFusion(nn.Module):
    """Two streams of 3x3 conv (with bias) + BN + ReLU joined in the middle:

    h1 = f(shallow); h2 = f(h1); v1 = f(deep); v2 = f(v1); fuse = join(h2, v2);
    h4 = f(f(fuse) + h1); v4 = f(f(fuse) + v1); returns (v4, h4).
    ``join`` is the product (SF2), the sum, or a 3x3 conv on the concatenation.
    """

    def __init__(self, shallow_ch: int, width: int, join: str = "mul", align: bool = True):
        super().__init__()
        self.join = join
        self.align = SemanticFlowAlign(shallow_ch, width) if align else None

        def f(cin: int = width) -> nn.Sequential:
            return conv_bn_relu(cin, width, 3, bias=True)

        self.h1, self.h2, self.h3, self.h4 = f(shallow_ch), f(), f(), f()
        self.v1, self.v2, self.v3, self.v4 = f(), f(), f(), f()
        self.join_conv = f(2 * width) if join == "concat" else None
        kaiming_init(self)
        if self.align is not None:  # the public AlignModule keeps PyTorch's default conv init
            for m in self.align.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()

    def forward(self, shallow: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.align is not None:
            deep = self.align(shallow, context)
        else:
            deep = resize_to(context, shallow.shape[-2:])
        h1 = self.h1(shallow)
        h2 = self.h2(h1)
        v1 = self.v1(deep)
        v2 = self.v2(v1)
        if self.join == "mul":
            fuse = h2 * v2
        elif self.join == "sum":
            fuse = h2 + v2
        else:
            fuse = self.join_conv(torch.cat([h2, v2], 1))
        h4 = self.h4(self.h3(fuse) + h1)
        v4 = self.v4(self.v3(fuse) + v1)
        return v4, h4


FUSIONS: dict[str, Callable[[int, int], nn.Module]] = {
    "gci": SkipGCI,
    "sf2": lambda s, w: CrossFeatureFusion(s, w, join="mul", align=True),
    "sum": lambda s, w: CrossFeatureFusion(s, w, join="sum", align=False),
    "concat": lambda s, w: CrossFeatureFusion(s, w, join="concat", align=False),
    "mul": lambda s, w: CrossFeatureFusion(s, w, join="mul", align=False),
}


def fusion_name(model_cfg: dict) -> str:
    """``model.fusion``, with ``auto`` resolved from ``model.sf2``."""
    name = model_cfg.get("fusion", "auto")
    if name == "auto":
        return "sf2" if model_cfg["sf2"] else "gci"
    return name


def build_fusion(model_cfg: dict, shallow_ch: int) -> nn.Module:
    name = fusion_name(model_cfg)
    if name not in FUSIONS:
        raise WsssError(f"key 'model.fusion': unknown fusion module {name!r} (valid: auto, {', '.join(FUSIONS)})")
    return FUSIONS[name](shallow_ch, model_cfg["head_channels"])
