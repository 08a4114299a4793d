"""Training losses: the single-stage loss (classification + self-supervised segmentation), the
classification-only CAM baseline loss, and a fully supervised loss for the upper bound.

Every loss is called as ``loss(out, raw, labels, seg_on)`` with the network's output dict and
returns a dict with ``total`` (the tensor to back-propagate), ``cls`` and ``seg`` (detached
tensors) and the diagnostics ``pseudo_valid`` and ``pseudo_ignore`` (floats; NaN when no pseudo
labels were made). The weak losses also take ``adjust``, a training plug-in's pseudo-label
adjustment (``wsss.plugins``); given it, the single-stage loss also returns the maps it made,
``pseudo`` (B, H, W) and ``refined`` (B, C, H, W), detached (None before ``seg_on``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.engine import distributed
from wsss.errors import WsssError
from wsss.model.pamr import PAMR
from wsss.model.pseudo_labels import pseudo_labels
from wsss.model.scores import classification_loss

SEG_REDUCTIONS = ("valid", "batch")
METHODS = ("single_stage", "cam")


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=True (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def check_label_values(label_map: Tensor, num_classes: int, ignore_index: int, what: str) -> None:
    """Raise unless every value is a class index below ``num_classes`` or ``ignore_index``."""
    bad = (label_map != ignore_index) & ((label_map < 0) | (label_map >= num_classes))
    if bool(bad.any()):
        raise WsssError(f"{what} hold values outside 0..{num_classes - 1} and {ignore_index} (ignore_index)")


def class_pixel_counts(pseudo: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Pixels of each class per image, (B, C); ignored pixels are not counted."""
    idx = pseudo.flatten(1)
    check_label_values(idx, num_classes, ignore_index, "pseudo labels")
    idx = torch.where(idx == ignore_index, torch.full_like(idx, num_classes), idx)
    counts = torch.zeros(idx.shape[0], num_classes + 1, device=idx.device, dtype=torch.float32)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    return counts[:, :num_classes]


def balanced_class_weights(counts: Tensor) -> Tensor:
    """(N - N_c) / (1 + N) for class counts N_c (B, C) with N the labelled pixels of each image."""
    total = counts.sum(1, keepdim=True)
    return (total - counts) / (1.0 + total)


def valid_images(counts: Tensor, labels: Tensor) -> Tensor:
    """Images whose pseudo-label classes are exactly the image-level classes plus background, (B,)."""
    labels = labels.float()
    expected = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1) > 0.5
    return ((counts > 0) == expected).all(dim=1)


def balanced_seg_loss(
    logits_up: Tensor,
    pseudo: Tensor,
    labels: Tensor,
    ignore_index: int = 255,
    reduction: str = "valid",
) -> tuple[Tensor, Tensor]:
    """Class-balanced pixel cross-entropy against pseudo labels; returns (loss, valid image mask).

    Each labelled pixel of class c is weighted by (N - N_c) / (1 + N); an image's loss is the mean
    over all its pixels (ignored ones contribute zero). ``reduction``: ``valid`` averages over the
    valid images (the specification), ``batch`` over the whole batch with invalid images as zero
    (the public code). With no valid image the loss is zero and still part of the graph.
    """
    if reduction not in SEG_REDUCTIONS:
        raise WsssError(f"key 'train.seg_reduction': {reduction!r} is not allowed (allowed: {', '.join(SEG_REDUCTIONS)})")
    if logits_up.dim() != 4 or pseudo.shape != (logits_up.shape[0], *logits_up.shape[-2:]):
        raise WsssError(
            f"balanced_seg_loss: logits {tuple(logits_up.shape)} must be (B, C, H, W) and pseudo labels "
            f"{tuple(pseudo.shape)} (B, H, W) of the same size"
        )
    if labels.shape != (logits_up.shape[0], logits_up.shape[1] - 1):
        raise WsssError(f"balanced_seg_loss: labels {tuple(labels.shape)} must be (B, C-1) for logits {tuple(logits_up.shape)}")
    batch, num_classes = logits_up.shape[:2]
    pseudo = pseudo.long()
    counts = class_pixel_counts(pseudo, num_classes, ignore_index)
    weights = torch.cat([balanced_class_weights(counts), counts.new_zeros(batch, 1)], dim=1)
    idx = torch.where(pseudo == ignore_index, torch.full_like(pseudo, num_classes), pseudo).flatten(1)
    pixel_weight = weights.gather(1, idx)
    ce = F.cross_entropy(logits_up.float(), pseudo, ignore_index=ignore_index, reduction="none").flatten(1)
    per_image = (pixel_weight * ce).mean(dim=1)
    valid = valid_images(counts, labels)
    kept = torch.where(valid, per_image, torch.zeros_like(per_image))
    if reduction == "valid":  # in a data-parallel run, the valid images of the global batch
        share = distributed.share_of_count(valid.sum().float())
        denom = torch.where(share > 0, share, torch.ones_like(share))
    else:
        denom = batch
    return kept.sum() / denom, valid


def _require(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise WsssError(f"{where}: missing key '{key}'")
    return mapping[key]


def _check_labels(out: dict, labels: Tensor) -> Tensor:
    scores = _require(out, "cls", "network output")
    if labels.shape != scores.shape:
        raise WsssError(f"labels {tuple(labels.shape)} do not match the class scores {tuple(scores.shape)}")
    return scores


def _result(total: Tensor, cls: Tensor, seg: Tensor, valid: float = math.nan, ignore: float = math.nan) -> dict:
    return {
        "total": total,
        "cls": cls.detach(),
        "seg": seg.detach(),
        "pseudo_valid": valid,
        "pseudo_ignore": ignore,
    }


class CAMLoss:
    """The plain CAM baseline: the classification loss only."""

    def __init__(self, cfg: dict):
        """``cfg`` is taken for the losses' common signature (``build_loss``); this loss has no settings."""

    def __call__(self, out: dict, raw: Tensor | None, labels: Tensor, seg_on: bool, adjust=None) -> dict:
        """``adjust`` is accepted for the common signature: this loss makes no pseudo-labels."""
        cls = classification_loss(_check_labels(out, labels), labels)
        return _result(cls, cls, cls.new_zeros(()))


class SingleStageLoss:
    """Classification loss plus, once ``seg_on``, the segmentation loss on PAMR pseudo labels."""

    def __init__(self, cfg: dict):
        train = _require(cfg, "train", "config")
        self.seg_weight = float(_require(train, "seg_weight", "config section 'train'"))
        if self.seg_weight < 0:
            raise WsssError(f"key 'train.seg_weight': {self.seg_weight!r} must be >= 0")
        self.kappa_bg = float(_require(train, "pseudo_kappa_bg", "config section 'train'"))
        self.kappa_fg = float(_require(train, "pseudo_kappa_fg", "config section 'train'"))
        self.floor = float(_require(train, "pseudo_floor", "config section 'train'"))
        self.reduction = train["seg_reduction"]
        if self.reduction not in SEG_REDUCTIONS:
            raise WsssError(f"key 'train.seg_reduction': {self.reduction!r} is not allowed (allowed: {', '.join(SEG_REDUCTIONS)})")
        self.ignore_index = int(cfg.get("eval", {}).get("ignore_index", 255))
        self.pamr = PAMR(
            iters=_require(train, "pamr_iters", "config section 'train'"),
            dilations=_require(train, "pamr_dilations", "config section 'train'"),
            std_unbiased=train["pamr_std_unbiased"],
        )

    @torch.no_grad()
    def refine(self, masks: Tensor, raw: Tensor) -> Tensor:
        """PAMR on detached masks, guided by ``raw`` resized to the mask resolution; returns crop-size masks."""
        if raw.dim() != 4 or raw.shape[0] != masks.shape[0]:
            raise WsssError(f"raw images {tuple(raw.shape)} must be (B, 3, H, W) for masks {tuple(masks.shape)}")
        guidance = upsample(raw.float(), tuple(masks.shape[-2:]))
        refined = self.pamr(guidance, masks.detach().float())
        return upsample(refined, tuple(raw.shape[-2:]))

    @torch.no_grad()
    def refined_and_pseudo(self, out: dict, raw: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The PAMR-refined masks (B, C, H, W) and the pseudo labels (B, H, W) at crop size for a network output."""
        refined = self.refine(_require(out, "masks", "network output"), raw)
        return refined, pseudo_labels(refined, labels, self.kappa_bg, self.kappa_fg, self.floor, self.ignore_index)

    def make_pseudo(self, out: dict, raw: Tensor, labels: Tensor) -> Tensor:
        """Pseudo labels (B, H, W) at crop size for a network output."""
        return self.refined_and_pseudo(out, raw, labels)[1]

    def __call__(self, out: dict, raw: Tensor, labels: Tensor, seg_on: bool, adjust=None) -> dict:
        cls = classification_loss(_check_labels(out, labels), labels)
        if not seg_on:
            result = _result(cls, cls, cls.new_zeros(()))
            return result if adjust is None else {**result, "pseudo": None, "refined": None}
        refined, pseudo = self.refined_and_pseudo(out, raw, labels)
        if adjust is not None:
            pseudo = adjust(pseudo, refined, labels)
        logits_up = upsample(_require(out, "logits", "network output").float(), tuple(raw.shape[-2:]))
        seg, valid = balanced_seg_loss(logits_up, pseudo, labels, self.ignore_index, self.reduction)
        ignored = (pseudo == self.ignore_index).float().mean()
        total = cls + self.seg_weight * seg
        result = _result(total, cls, seg, valid.float().mean().item(), ignored.item())
        return result if adjust is None else {**result, "pseudo": pseudo, "refined": refined}


SUPERVISED_LOSSES = ("balanced", "ce")


class SupervisedLoss:
    """Fully supervised upper bound: pixel cross-entropy on ground-truth masks plus classification.

    Called with an extra ``mask`` (B, H, W) holding class indices and ``ignore_index``; the logits
    are upsampled to the mask size. ``train.supervised_loss``: ``balanced`` is the weak pipeline's
    class-balanced loss with the ground truth in place of the pseudo-labels (the image classes are
    those of its cropped mask; as there, a crop without background does not count), ``ce`` plain
    pixel cross-entropy. The segmentation term
    is weighted by ``train.seg_weight`` and follows ``seg_on`` like the single-stage loss.
    """

    def __init__(self, cfg: dict):
        train = _require(cfg, "train", "config")
        self.seg_weight = float(_require(train, "seg_weight", "config section 'train'"))
        self.ignore_index = int(cfg.get("eval", {}).get("ignore_index", 255))
        self.kind = _require(train, "supervised_loss", "config section 'train'")
        if self.kind not in SUPERVISED_LOSSES:
            raise WsssError(f"key 'train.supervised_loss': {self.kind!r} is not allowed (allowed: {', '.join(SUPERVISED_LOSSES)})")

    def __call__(self, out: dict, raw: Tensor | None, labels: Tensor, seg_on: bool = True, mask: Tensor | None = None) -> dict:
        cls = classification_loss(_check_labels(out, labels), labels)
        if not seg_on:
            return _result(cls, cls, cls.new_zeros(()))
        if mask is None:
            raise WsssError("SupervisedLoss needs the ground-truth 'mask' argument")
        logits = _require(out, "logits", "network output")
        if mask.dim() != 3 or mask.shape[0] != logits.shape[0]:
            raise WsssError(f"ground-truth mask {tuple(mask.shape)} must be (B, H, W) for logits {tuple(logits.shape)}")
        mask = mask.long()
        check_label_values(mask, logits.shape[1], self.ignore_index, "ground-truth masks")
        logits_up = upsample(logits.float(), tuple(mask.shape[-2:]))
        if bool((mask == self.ignore_index).all()):
            seg = (logits_up * 0.0).sum()
        elif self.kind == "balanced":
            present = class_pixel_counts(mask, logits.shape[1], self.ignore_index)[:, 1:] > 0
            seg, _ = balanced_seg_loss(logits_up, mask, present.to(labels.dtype), self.ignore_index, "valid")
        else:  # the mean over the labelled pixels of the global batch in a data-parallel run
            labelled = distributed.share_of_count((mask != self.ignore_index).sum().float())
            seg = F.cross_entropy(logits_up, mask, ignore_index=self.ignore_index, reduction="sum") / labelled
        return _result(cls + self.seg_weight * seg, cls, seg)


def build_loss(cfg: dict, supervised: bool = False):
    """The loss for ``model.method`` (single_stage | cam), or the supervised loss when asked."""
    method = _require(_require(cfg, "model", "config"), "method", "config section 'model'")
    if method not in METHODS:
        raise WsssError(f"key 'model.method': {method!r} is not allowed (allowed: {', '.join(METHODS)})")
    if supervised:
        return SupervisedLoss(cfg)
    return SingleStageLoss(cfg) if method == "single_stage" else CAMLoss(cfg)
