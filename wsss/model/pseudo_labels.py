"""Pseudo ground truth from refined masks and image-level labels.

A class claims the pixels where its mask exceeds a per-image threshold, max(floor, kappa * peak);
pixels claimed by no class or by several classes are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsss.errors import WsssError


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise WsssError(f"key 'train.{name}': {value!r} must lie in [0, 1]")


def clean_masks(masks: Tensor, labels: Tensor) -> Tensor:
    """Zero the foreground channels of classes absent from the image labels (background kept)."""
    if masks.dim() != 4 or labels.dim() != 2 or labels.shape != (masks.shape[0], masks.shape[1] - 1):
        raise WsssError(
            f"pseudo labels: masks {tuple(masks.shape)} must be (B, C, H, W) and labels "
            f"{tuple(labels.shape)} must be (B, C-1)"
        )
    labels = labels.float()
    present = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1) > 0.5
    return masks * present[:, :, None, None].to(masks.dtype)


def class_thresholds(masks: Tensor, kappa_bg: float, kappa_fg: float, floor: float) -> Tensor:
    """Per-image, per-class thresholds (B, C, 1, 1): max(floor, kappa_c * max over pixels of m_c)."""
    kappa = masks.new_full((masks.shape[1],), kappa_fg)
    kappa[0] = kappa_bg
    peak = masks.flatten(2).amax(-1)
    return (kappa * peak).clamp(min=floor)[:, :, None, None]


def pseudo_labels(
    masks: Tensor,
    labels: Tensor,
    kappa_bg: float = 0.7,
    kappa_fg: float = 0.6,
    floor: float = 0.2,
    ignore_index: int = 255,
) -> Tensor:
    """Label map (B, H, W) of int64 from masks (B, C, H, W) and multi-hot labels (B, C-1)."""
    _check_fraction("pseudo_kappa_bg", kappa_bg)
    _check_fraction("pseudo_kappa_fg", kappa_fg)
    _check_fraction("pseudo_floor", floor)
    num_classes = masks.shape[1] if masks.dim() == 4 else 0
    if 0 <= ignore_index < num_classes:
        raise WsssError(f"pseudo labels: ignore_index {ignore_index} collides with a class index (C={num_classes})")
    masks = clean_masks(masks.float(), labels)
    passing = masks > class_thresholds(masks, kappa_bg, kappa_fg, floor)
    winner = passing.to(torch.uint8).argmax(dim=1)
    unique = passing.sum(dim=1) == 1
    return torch.where(unique, winner, torch.full_like(winner, ignore_index))
