"""`wsss evaluate`: confusion matrices of the raw and the CRF masks against the ground truth.

Writes ``results/<dataset>_<split>_miou.csv`` (one row per class and a ``mean`` row; IoU, precision
and recall, raw and with CRF), ``results/metrics/<dataset>_<split>.json`` (the DVC metrics),
``results/<dataset>_<split>_iou.png`` (per-class IoU and the confusion matrix),
``results/<dataset>_<split>_gallery.png`` (``GALLERY_IMAGES`` images of the split beside their ground
truth and both predictions; not for ``--pseudo``) and the resolved configuration next to them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from wsss import config as params, provenance
from wsss.data.dataset import read_image, read_split, split_path
from wsss.data.palette import load_mask
from wsss.errors import WsssError
from wsss.figures import gallery_figure, iou_figure
from wsss.metrics import confusion, scores
from wsss.paths import for_config
from wsss.utils.atomic import atomic_path, write_json, write_yaml

GALLERY_IMAGES = 8  # rows of the gallery figure: images evenly spaced through the evaluated split's list


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


def gallery_names(names: list[str], count: int = GALLERY_IMAGES) -> list[str]:
    """``count`` names evenly spaced through ``names``, the first and the last included (all of them when
    there are no more): the same images for every run on the same split list."""
    if len(names) <= count:
        return list(names)
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def gallery(cfg: dict, data_dir: Path, names: list[str], pred_dirs: list[Path], title: str, path: Path) -> None:
    """The gallery figure: the images ``gallery_names(names)`` (``JPEGImages``), their ground truth
    (``SegmentationClass``) and their masks in ``pred_dirs`` (without, with the CRF)."""
    rows = []
    for name in gallery_names(names):
        image = np.asarray(read_image(data_dir / "JPEGImages" / f"{name}.jpg"))
        masks = [load_mask(folder / f"{name}.png") for folder in (data_dir / "SegmentationClass", *pred_dirs)]
        rows.append((name, [image, *masks]))
    gallery_figure(rows, ["image", "ground truth", "prediction", "prediction + CRF"],
                   class_names(data_dir, params.num_classes(cfg)), title, path, cfg["eval"]["ignore_index"])


def pseudo_score_names(cfg: dict, data_dir: Path) -> list[str]:
    """The images of ``pseudo.score_split``, every one in the training split (else an error naming the key)."""
    split = cfg["pseudo"]["score_split"]
    if not split_path(data_dir, split).is_file():
        raise WsssError(f"key 'pseudo.score_split': split '{split}' has no list {split_path(data_dir, split)}")
    names = read_split(data_dir, split)
    outside = sorted(set(names) - set(read_split(data_dir, cfg["data"]["train_split"])))
    if outside:
        raise WsssError(f"key 'pseudo.score_split': {len(outside)} images of split '{split}' are not in the training "
                        f"split '{cfg['data']['train_split']}' (the first: {outside[0]})")
    return names


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results, stage2=args.stage2)
    provenance.check_dataset(paths.data, cfg)
    if args.pseudo:
        if not (paths.pseudo / "masks").is_dir():
            raise WsssError(f"pseudo output missing: {paths.pseudo / 'masks'}; run `wsss pseudo` first")
        provenance.check_stage_dir(paths.pseudo, cfg, "pseudo")
        names = pseudo_score_names(cfg, paths.data)
        what = f"{cfg['data']['train_split']} pseudo-masks of '{cfg['pseudo']['score_split']}'"
        score(cfg, paths.data, names, [paths.pseudo / "masks_raw", paths.pseudo / "masks"], paths.pseudo_csv,
              paths.pseudo_metrics_json, paths.pseudo_iou_figure, f"{cfg['data']['name']} {what}: per-class IoU")
        write_yaml(paths.pseudo_eval_config, cfg)
        return
    suffix = "_stage2" if args.stage2 else ""
    for stage, out_dir in (("infer", paths.infer), ("crf", paths.crf)):
        if not (out_dir / "masks").is_dir():
            raise WsssError(f"{stage} output missing: {out_dir / 'masks'}; run `wsss {stage}{' --stage2' if args.stage2 else ''}` first")
        provenance.check_stage_dir(out_dir, cfg, stage + suffix)
    names = read_split(paths.data, cfg["data"]["eval_split"])
    what = f"{cfg['data']['name']} {cfg['data']['eval_split']}"
    second = " (second stage)" if args.stage2 else ""
    pred_dirs = [paths.infer / "masks", paths.crf / "masks"]
    score(cfg, paths.data, names, pred_dirs, paths.miou_csv, paths.metrics_json, paths.iou_figure,
          f"{what}: per-class IoU{second}")
    gallery(cfg, paths.data, names, pred_dirs, f"{what}: examples{second}", paths.gallery_figure)
    write_yaml(paths.eval_config, cfg)


def score(cfg: dict, data_dir: Path, names: list[str], pred_dirs: list[Path], csv_path: Path, metrics_path: Path,
          figure_path: Path, title: str) -> None:
    """Two mask folders (without, with the CRF) against ``SegmentationClass`` over ``names``: the per-class
    table (IoU, precision, recall), the DVC metrics and the figure."""
    n = params.num_classes(cfg)
    ignore, absent = cfg["eval"]["ignore_index"], cfg["eval"]["absent_class"]
    conf_raw, conf_crf = accumulate(names, data_dir / "SegmentationClass", pred_dirs, n, ignore)
    raw, crf = scores(conf_raw, absent), scores(conf_crf, absent)
    df = table(class_names(data_dir, n), raw, crf)
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    metrics = {
        "miou": raw["miou"], "miou_crf": crf["miou"], "miou_fg": raw["miou_fg"], "miou_fg_crf": crf["miou_fg"],
        "pixel_acc": raw["pixel_acc"], "pixel_acc_crf": crf["pixel_acc"],
        "images": len(names),
    }
    write_json(metrics_path, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
    iou_figure(df, conf_crf, title, figure_path)
    print(f"evaluate: {len(names)} images, mIoU {raw['miou']:.4f}, with CRF {crf['miou']:.4f}, "
          f"pixel acc {raw['pixel_acc']:.4f} / {crf['pixel_acc']:.4f} -> {csv_path}")
