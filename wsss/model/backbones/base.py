"""The interface every backbone implements: two feature maps and the freezing rules."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor returning ``{"shallow": OS-4 features, "deep": last-stage features}``.

    Subclasses set ``shallow_channels``, ``deep_channels``, ``output_stride`` and implement
    ``early_modules()`` (the layers ``freeze_early`` freezes). All backbone parameters count as
    "pretrained" for the optimiser groups, whether or not weights were actually loaded.
    """

    shallow_channels: int
    deep_channels: int
    output_stride: int

    def __init__(self) -> None:
        super().__init__()
        self.freeze_bn = False
        self.freeze_early = False

    def early_modules(self) -> Iterable[nn.Module]:
        return ()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pretrained_parameter_names(self) -> set[str]:
        """Names (relative to this module) of the parameters an ImageNet weights file provides."""
        return {name for name, _ in self.named_parameters()}

    def set_freezing(self, freeze_bn: bool, freeze_early: bool) -> "Backbone":
        """Freeze BatchNorms (eval mode, affine not optimised) and/or the early layers; every other
        backbone parameter becomes trainable."""
        self.freeze_bn = freeze_bn
        self.freeze_early = freeze_early
        for p in self.parameters():
            p.requires_grad_(True)
        if freeze_bn:
            for bn in self._batchnorms():
                for p in bn.parameters():
                    p.requires_grad_(False)
        if freeze_early:
            for module in self.early_modules():
                for p in module.parameters():
                    p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode:
            if self.freeze_bn:
                for bn in self._batchnorms():
                    bn.eval()
            if self.freeze_early:
                for module in self.early_modules():
                    module.eval()
        return self

    def _batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
