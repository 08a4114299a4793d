"""The stochastic gate (SG) that mixes the deep-branch and shallow-branch features."""

from __future__ import annotations

import torch
from torch import nn

from wsss.errors import WsssError


class StochasticGate(nn.Module):
    """Training: ``m * (x1 - psi * x2) / (1 - psi) + (1 - m) * x2`` with a per-element
    ``m ~ Bernoulli(1 - psi)``, so that ``E[out] = x1``. Evaluation: ``(1 - psi) * x1 + psi * x2``.
    """

    def __init__(self, psi: float = 0.3):
        super().__init__()
        if not 0.0 <= psi < 1.0:
            raise WsssError(f"key 'model.psi': {psi!r} must be in [0, 1)")
        self.psi = float(psi)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        psi = self.psi
        if not self.training:
            return (1.0 - psi) * x1 + psi * x2
        keep = (torch.rand_like(x1) >= psi).to(x1.dtype)
        return keep * (x1 - psi * x2) / (1.0 - psi) + (1.0 - keep) * x2

    def extra_repr(self) -> str:
        return f"psi={self.psi}"
