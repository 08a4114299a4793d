"""Pixel-adaptive mask refinement (PAMR).

Affinities between each pixel and its 8 stencil neighbours at several dilations are derived from
the colour guidance image, normalised with a softmax over all neighbours, and then used to
propagate the masks a fixed number of times. Borders use replicate padding throughout.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import WsssError

STENCIL = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
SIGMA_SCALE = 0.1
SIGMA_EPS = 1e-8


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours of a 3x3 stencil for every dilation, in dilation order."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in STENCIL]


def _shifted(padded: Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The view of ``padded`` whose pixel (y, x) holds the original pixel (y + dy, x + dx), clamped."""
    dy, dx = offset
    h, w = size
    return padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


class PAMR(nn.Module):
    """Refine (B, C, H, W) masks with affinities from a (B, K, H, W) guidance image of the same size.

    ``std_unbiased`` picks the sample (N-1) or population (N) standard deviation of the local
    stencil values that scales the colour differences.
    """

    def __init__(self, iters: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), std_unbiased: bool = True):
        super().__init__()
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise WsssError(f"key 'train.pamr_iters': {iters!r} must be a non-negative integer")
        dilations = list(dilations)
        if not dilations or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
            raise WsssError(f"key 'train.pamr_dilations': {dilations!r} must be a non-empty list of positive integers")
        self.iters = iters
        self.dilations = dilations
        self.std_unbiased = bool(std_unbiased)
        self.offsets = neighbour_offsets(dilations)
        self.pad = max(dilations)

    def extra_repr(self) -> str:
        return f"iters={self.iters}, dilations={self.dilations}, std_unbiased={self.std_unbiased}"

    @torch.no_grad()
    def affinities(self, guidance: Tensor) -> Tensor:
        """Softmax-normalised affinities (B, P, H, W) to the P = 8 * len(dilations) neighbours."""
        x = guidance.float()
        size = tuple(x.shape[-2:])
        padded = F.pad(x, [self.pad] * 4, mode="replicate")
        neighbours = [_shifted(padded, self.pad, o, size) for o in self.offsets]

        # Each dilation's 3x3 stencil includes the centre, so the centre counts once per dilation.
        n_centre = len(self.dilations)
        n_values = len(neighbours) + n_centre
        total = x * n_centre
        for v in neighbours:
            total.add_(v)
        mean = total.div_(n_values)
        sq = (x - mean).pow_(2).mul_(n_centre)
        for v in neighbours:
            sq.add_((v - mean).pow_(2))
        sigma = (sq / (n_values - (1 if self.std_unbiased else 0))).sqrt()

        # Colour differences scaled per channel, then averaged over the channels.
        scale = 1.0 / ((SIGMA_EPS + SIGMA_SCALE * sigma) * x.shape[1])
        kernel = torch.stack([(v - x).abs().mul_(scale).sum(1) for v in neighbours], dim=1)
        return kernel.neg_().softmax(dim=1)

    @torch.no_grad()
    def propagate(self, masks: Tensor, alpha: Tensor) -> Tensor:
        """Apply ``iters`` steps of m_i <- sum_j alpha_ij m_j."""
        m = masks.float()
        size = tuple(m.shape[-2:])
        for _ in range(self.iters):
            padded = F.pad(m, [self.pad] * 4, mode="replicate")
            out = torch.zeros_like(m)
            for p, offset in enumerate(self.offsets):
                out.addcmul_(alpha[:, p : p + 1], _shifted(padded, self.pad, offset, size))
            m = out
        return m

    @torch.no_grad()
    def forward(self, guidance: Tensor, masks: Tensor) -> Tensor:
        if guidance.dim() != 4 or masks.dim() != 4:
            raise WsssError(
                f"PAMR: guidance {tuple(guidance.shape)} and masks {tuple(masks.shape)} must be 4-D (B, ., H, W)"
            )
        if guidance.shape[0] != masks.shape[0] or guidance.shape[-2:] != masks.shape[-2:]:
            raise WsssError(
                f"PAMR: guidance {tuple(guidance.shape)} must match masks {tuple(masks.shape)} "
                "in batch and spatial size (resize the guidance to the mask resolution)"
            )
        return self.propagate(masks, self.affinities(guidance))
