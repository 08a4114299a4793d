"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """num_classes x num_classes counts over the pixels whose ground truth is not ``ignore_index``.

    One bincount over gt * num_classes + pred: the ignored pixels land in a row that is dropped, so
    no boolean indexing is needed. Class indices outside [0, num_classes), and an ``ignore_index``
    below ``num_classes`` (a class, or negative), raise ValueError.
    """
    if ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} must be at least num_classes ({num_classes})")
    gt = np.asarray(gt).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if gt.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    if pred.min() < 0 or pred.max() >= num_classes:
        bad = int(pred.max() if pred.max() >= num_classes else pred.min())
        raise ValueError(f"predicted class index {bad} outside [0, {num_classes})")
    if gt.min() < 0 or gt.max() > max(ignore_index, num_classes - 1):
        bad = int(gt.min() if gt.min() < 0 else gt.max())
        raise ValueError(f"ground-truth value {bad} outside [0, {num_classes}) and {ignore_index}")
    rows = max(ignore_index, num_classes - 1) + 1
    counts = np.bincount(gt.astype(np.int32) * num_classes + pred, minlength=rows * num_classes)
    counts = counts.reshape(rows, num_classes)
    stray = [r for r in np.nonzero(counts[num_classes:].sum(1))[0] + num_classes if r != ignore_index]
    if stray:
        raise ValueError(f"ground-truth class index {stray[0]} outside [0, {num_classes}) and {ignore_index}")
    return counts[:num_classes].astype(np.int64)


ABSENT_RULES = {"zero": 0.0, "nan": np.nan, "one": 1.0}


def scores(conf: np.ndarray, absent: str = "zero") -> dict:
    """Per-class IoU, precision and recall; mIoU over all classes (background included); pixel accuracy.

    ``conf``: ``(C, C)`` counts, rows ground truth, columns prediction. A class absent from both
    ground truth and prediction has no defined IoU; ``absent`` says what it gets:
    ``"zero"``: IoU 0, kept in the mean (the public SSSS and WS-FCN evaluators:
    ``TP / (TP + FP + FN + eps)``, averaged over every class); ``"nan"``: left out of the mean (NaN
    in the table); ``"one"``: a perfect 1.0. A precision with no prediction of the class (a recall
    with no ground truth of it) is 0 under ``"zero"`` (the public evaluators), NaN otherwise.
    ``miou`` is the mean over all classes, background included (the papers' number, the public
    evaluators' "with background" line); ``miou_fg`` the mean over the foreground classes (the line
    the public evaluators print first).
    """
    if absent not in ABSENT_RULES:
        raise ValueError(f"absent-class rule {absent!r} is not one of {', '.join(ABSENT_RULES)}")
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_sum, pred_sum = conf.sum(1), conf.sum(0)
    union = gt_sum + pred_sum - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, ABSENT_RULES[absent])
        undefined = 0.0 if absent == "zero" else np.nan
        precision = np.where(pred_sum > 0, tp / pred_sum, undefined)
        recall = np.where(gt_sum > 0, tp / gt_sum, undefined)
    total = conf.sum()
    return {
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "miou_fg": float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
    }
