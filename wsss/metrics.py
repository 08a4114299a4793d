"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """num_classes x num_classes counts over the pixels whose ground truth is not ``ignore_index``.

    One bincount over gt * num_classes + pred: the ignored pixels land in a row that is dropped, so
    no boolean indexing is needed. Class indices outside [0, num_classes) raise ValueError.
    """
    gt = np.asarray(gt).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if gt.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    if pred.min() < 0 or pred.max() >= num_classes:
        bad = int(pred.max() if pred.max() >= num_classes else pred.min())
        raise ValueError(f"predicted class index {bad} outside [0, {num_classes})")
    if gt.min() < 0 or gt.max() > max(ignore_index, num_classes - 1):
        raise ValueError(f"ground-truth value {int(gt.max())} outside [0, {num_classes}) and {ignore_index}")
    rows = max(ignore_index, num_classes - 1) + 1
    counts = np.bincount(gt.astype(np.int32) * num_classes + pred, minlength=rows * num_classes)
    counts = counts.reshape(rows, num_classes)
    stray = [r for r in np.nonzero(counts[num_classes:].sum(1))[0] + num_classes if r != ignore_index]
    if stray:
        raise ValueError(f"ground-truth class index {stray[0]} outside [0, {num_classes}) and {ignore_index}")
    return counts[:num_classes].astype(np.int64)


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
