"""Device choice from a params value (auto | cpu | cuda)."""

from __future__ import annotations

import torch

from wsss.errors import WsssError


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WsssError("device 'cuda' was asked for (train.device / infer.device) but no CUDA GPU is available")
    return torch.device(name)
