"""Image-level class scores from dense logits: nGWP plus the focal mask-size penalty.

The logits carry the background at channel 0; the scores cover the foreground channels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.errors import WsssError


def ngwp(logits: Tensor, masks: Tensor) -> Tensor:
    """Normalised global weighted pooling: sum_i x[c,i] m[c,i] / (1 + sum_i m[c,i]), shape (B, C)."""
    x = logits.float().flatten(2)
    m = masks.float().flatten(2)
    return (x * m).sum(-1) / (1.0 + m.sum(-1))


def focal_penalty(mean_mask: Tensor, focal_p: float, focal_lambda: float) -> Tensor:
    """Mask-size penalty (1 - mbar)^p * log(lambda + mbar) for mean mask values ``mbar``."""
    return (1.0 - mean_mask).pow(focal_p) * torch.log(focal_lambda + mean_mask)


def check_focal(focal_p: float, focal_lambda: float) -> None:
    if not focal_p >= 0:
        raise WsssError(f"key 'model.focal_p': {focal_p!r} must be >= 0")
    if not focal_lambda > 0:
        raise WsssError(f"key 'model.focal_lambda': {focal_lambda!r} must be > 0")


def class_scores(logits: Tensor, masks: Tensor, focal_p: float, focal_lambda: float) -> Tensor:
    """Foreground class scores (B, C-1) = nGWP + focal penalty, from logits and their softmax masks."""
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise WsssError(f"class_scores: logits must be (B, C>=2, h, w), got {tuple(logits.shape)}")
    if masks.shape != logits.shape:
        raise WsssError(
            f"class_scores: masks {tuple(masks.shape)} and logits {tuple(logits.shape)} differ in shape"
        )
    check_focal(focal_p, focal_lambda)
    pooled = ngwp(logits, masks)
    penalty = focal_penalty(masks.float().flatten(2).mean(-1), focal_p, focal_lambda)
    return (pooled + penalty)[:, 1:]


def classification_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss, averaged over classes and images."""
    if scores.dim() != 2 or labels.shape != scores.shape:
        raise WsssError(
            f"classification_loss: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} "
            "must both be (B, C-1)"
        )
    return F.multilabel_soft_margin_loss(scores.float(), labels.float())
