"""The evaluator against an independent computation, and the evaluate stage on real files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchmetrics.classification import MulticlassJaccardIndex

from wsss import config
from wsss.data.palette import save_mask
from wsss.metrics import confusion, scores
from wsss.stages import evaluate

REPO = Path(__file__).resolve().parents[1]


def random_pair(rng, n, shape):
    gt = rng.integers(0, n, size=shape)
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, n, size=shape))
    gt[rng.random(shape) < 0.1] = 255
    return gt.astype(np.uint8), pred.astype(np.uint8)


def test_confusion_matches_torchmetrics_jaccard():
    rng = np.random.default_rng(0)
    n = 21
    pairs = [random_pair(rng, n, (37, 53)) for _ in range(6)]
    conf = sum(confusion(g, p, n) for g, p in pairs)
    ours = scores(conf)
    metric = MulticlassJaccardIndex(num_classes=n, ignore_index=255, average=None)
    for g, p in pairs:
        metric.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)))
    theirs = metric.compute().numpy()
    np.testing.assert_allclose(ours["iou"], theirs, rtol=1e-6)
    assert ours["miou"] == pytest.approx(float(theirs.mean()), rel=1e-6)


def test_hand_computed_confusion_and_absent_class():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 0]])
    conf = confusion(gt, pred, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    s = scores(conf, absent="nan")
    assert s["iou"][0] == pytest.approx(2 / 4) and s["iou"][1] == pytest.approx(3 / 5)
    assert np.isnan(s["iou"][2]) and np.isnan(s["iou"][3])  # class 3 absent everywhere, 2 only in an ignored pixel
    assert s["miou"] == pytest.approx((0.5 + 0.6) / 2)
    assert s["pixel_acc"] == pytest.approx(5 / 7)
    assert scores(conf, absent="one")["miou"] == pytest.approx((0.5 + 0.6 + 1 + 1) / 4)


def test_confusion_rows_are_ground_truth_and_columns_predictions():
    gt = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 1, 1])
    conf = confusion(gt, pred, 3)
    assert conf.tolist() == [[1, 2, 0], [0, 2, 0], [0, 1, 0]]
    s = scores(conf)
    np.testing.assert_allclose(s["precision"], [1.0, 2 / 5, 0.0])
    np.testing.assert_allclose(s["recall"], [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(s["iou"], [1 / 3, 2 / 5, 0.0])


def _tree(root: Path, names, n, rng):
    """Ground truth and two mask sets, each folder recording the configuration it was made with."""
    cfg = config.load([REPO / "params.yaml"])
    (root / "data" / "toy" / "SegmentationClass").mkdir(parents=True)
    (root / "data" / "toy" / "prepared.json").write_text(json.dumps({"data": cfg["data"]}))
    (root / "data" / "toy" / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "data" / "toy" / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    for sub in ("infer", "crf"):
        (root / "results" / "toy" / "val" / sub / "masks").mkdir(parents=True)
        (root / "results" / "toy" / "val" / sub / "config.yaml").write_text(yaml.safe_dump(cfg))
    pairs = {}
    for name in names:
        gt, pred = random_pair(rng, n, (40, 50))
        save_mask(gt, root / "data" / "toy" / "SegmentationClass" / f"{name}.png")
        save_mask(pred, root / "results" / "toy" / "val" / "infer" / "masks" / f"{name}.png")
        save_mask(gt.clip(0, n - 1), root / "results" / "toy" / "val" / "crf" / "masks" / f"{name}.png")
        pairs[name] = (gt, pred)
    return pairs


def test_evaluate_stage_writes_table_metrics_and_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load([REPO / "params.yaml"])
    n = config.num_classes(cfg)
    pairs = _tree(tmp_path, [f"img{i}" for i in range(5)], n, np.random.default_rng(1))
    evaluate.run(cfg, SimpleNamespace(results="results"))
    table = pd.read_csv(tmp_path / "results" / "toy_val_miou.csv")
    metrics = json.loads((tmp_path / "results" / "metrics" / "toy_val.json").read_text())
    expected = scores(sum(confusion(g, p, n) for g, p in pairs.values()))
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert metrics["pixel_acc_crf"] == pytest.approx(1.0)  # the "crf" masks are the ground truth
    assert metrics["miou_crf"] == pytest.approx(1.0) and metrics["miou"] < 0.9
    assert list(table["class"])[-1] == "mean" and len(table) == n + 1
    assert table["iou"].iloc[-1] == pytest.approx(expected["miou"], abs=1e-6)
    assert (tmp_path / "results" / "toy_val_iou.png").stat().st_size > 1000


def test_evaluate_names_a_missing_prediction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load([REPO / "params.yaml"])
    _tree(tmp_path, ["a", "b"], config.num_classes(cfg), np.random.default_rng(2))
    (tmp_path / "results" / "toy" / "val" / "crf" / "masks" / "b.png").unlink()
    with pytest.raises(Exception, match=r"crf/masks/b.png"):
        evaluate.run(cfg, SimpleNamespace(results="results"))
    assert not (tmp_path / "results" / "toy_val_miou.csv").exists()
