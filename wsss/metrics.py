"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """num_classes x num_classes counts over the pixels whose ground truth is not ``ignore_index``."""
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.max() >= num_classes or pred.max() >= num_classes):
        bad = int(max(gt.max(), pred.max()))
        raise ValueError(f"class index {bad} outside [0, {num_classes})")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(conf: np.ndarray, absent: str = "nan") -> dict:
    """Per-class IoU, precision and recall; mIoU over all classes (background included); pixel accuracy.

    A class absent from both ground truth and prediction has no defined IoU: with ``absent="nan"`` it is
    left out of the mean (NaN in the table), with ``absent="one"`` it counts as a perfect 1.0.
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_sum, pred_sum = conf.sum(1), conf.sum(0)
    union = gt_sum + pred_sum - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan if absent == "nan" else 1.0)
        precision = np.where(pred_sum > 0, tp / pred_sum, np.nan)
        recall = np.where(gt_sum > 0, tp / gt_sum, np.nan)
    total = conf.sum()
    return {
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
    }
