"""`wsss evaluate`: confusion matrices of the raw and the CRF masks against the ground truth.

Writes ``results/<dataset>_<split>_miou.csv`` (one row per class and a ``mean`` row; IoU, precision
and recall, raw and with CRF), ``results/metrics/<dataset>_<split>.json`` (the DVC metrics),
``results/<dataset>_<split>_iou.png`` (per-class IoU and the confusion matrix) and the resolved
configuration next to them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from wsss import config as params, provenance
from wsss.data.dataset import read_split
from wsss.data.palette import load_mask
from wsss.errors import WsssError
from wsss.figures import iou_figure
from wsss.metrics import confusion, scores
from wsss.paths import for_config
from wsss.utils.atomic import atomic_path, write_json, write_yaml


def accumulate(names: list[str], gt_dir: Path, pred_dirs: list[Path], num_classes: int, ignore_index: int) -> list[np.ndarray]:
    """One confusion matrix per prediction folder; each ground truth is decoded once, in threads."""

    def one(name: str) -> list[np.ndarray]:
        gt = load_mask(gt_dir / f"{name}.png")
        confs = []
        for pred_dir in pred_dirs:
            pred = load_mask(pred_dir / f"{name}.png")
            if gt.shape != pred.shape:
                raise WsssError(f"prediction {pred_dir / name}.png is {pred.shape}, ground truth is {gt.shape}")
            try:
                confs.append(confusion(gt, pred, num_classes, ignore_index))
            except ValueError as exc:
                raise WsssError(f"{name}: {exc}") from None
        return confs

    totals = [np.zeros((num_classes, num_classes), dtype=np.int64) for _ in pred_dirs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for confs in pool.map(one, names):
            for total, conf in zip(totals, confs):
                total += conf
    return totals


def class_names(data_dir: Path, num_classes: int) -> list[str]:
    manifest = data_dir / "prepared.json"
    if manifest.is_file():
        names = json.loads(manifest.read_text()).get("class_names")
        if names and len(names) == num_classes:
            return list(names)
    return [f"class_{i}" for i in range(num_classes)]


def table(names: list[str], raw: dict, crf: dict) -> pd.DataFrame:
    df = pd.DataFrame({
        "class": names,
        "iou": raw["iou"], "precision": raw["precision"], "recall": raw["recall"],
        "iou_crf": crf["iou"], "precision_crf": crf["precision"], "recall_crf": crf["recall"],
    })
    mean = {"class": "mean", "iou": raw["miou"], "iou_crf": crf["miou"]}
    for col in ("precision", "recall", "precision_crf", "recall_crf"):
        mean[col] = float(np.nanmean(df[col])) if df[col].notna().any() else float("nan")
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    split = cfg["data"]["eval_split"]
    n = params.num_classes(cfg)
    ignore, absent = cfg["eval"]["ignore_index"], cfg["eval"]["absent_class"]
    provenance.check_dataset(paths.data, cfg)
    for stage, out_dir in (("infer", paths.infer), ("crf", paths.crf)):
        if not (out_dir / "masks").is_dir():
            raise WsssError(f"{stage} output missing: {out_dir / 'masks'}; run `wsss {stage}` first")
        provenance.check_stage_dir(out_dir, cfg, stage)
    names = read_split(paths.data, split)
    gt_dir = paths.data / "SegmentationClass"
    conf_raw, conf_crf = accumulate(names, gt_dir, [paths.infer / "masks", paths.crf / "masks"], n, ignore)
    raw, crf = scores(conf_raw, absent), scores(conf_crf, absent)
    df = table(class_names(paths.data, n), raw, crf)
    with atomic_path(paths.miou_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    metrics = {
        "miou": raw["miou"], "miou_crf": crf["miou"], "miou_fg": raw["miou_fg"], "miou_fg_crf": crf["miou_fg"],
        "pixel_acc": raw["pixel_acc"], "pixel_acc_crf": crf["pixel_acc"],
        "images": len(names),
    }
    write_json(paths.metrics_json, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
    iou_figure(df, conf_crf, f"{cfg['data']['name']} {split}: per-class IoU", paths.iou_figure)
    write_yaml(paths.eval_config, cfg)
    print(f"evaluate: {len(names)} images, mIoU {raw['miou']:.4f}, with CRF {crf['miou']:.4f}, "
          f"pixel acc {raw['pixel_acc']:.4f} / {crf['pixel_acc']:.4f} -> {paths.miou_csv}")
