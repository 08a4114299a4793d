"""The evaluator against an independent computation, and the evaluate stage on real files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from wsss import config
from wsss.data.palette import save_mask
from wsss.errors import WsssError
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


def test_scores_of_small_counts_and_of_nothing_at_all():
    # a class whose union is one pixel still gets its IoU (not the absent-class value)
    conf = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = scores(conf, absent="nan")
    np.testing.assert_array_equal(s["iou"][:2], [1.0, 1.0])
    np.testing.assert_array_equal(s["recall"][:2], [1.0, 1.0])
    assert np.isnan(s["iou"][2]) and np.isnan(s["precision"][2]) and np.isnan(s["recall"][2])
    assert s["miou"] == 1.0 and s["miou_fg"] == 1.0 and s["pixel_acc"] == 1.0
    # no pixel at all: every mean is NaN under "nan", 0 under "zero"
    empty = np.zeros((3, 3), dtype=np.int64)
    none = scores(empty, absent="nan")
    assert np.isnan(none["miou"]) and np.isnan(none["miou_fg"]) and np.isnan(none["pixel_acc"])
    assert np.isnan(none["precision"]).all() and np.isnan(none["recall"]).all()
    zero = scores(empty, absent="zero")
    assert zero["miou"] == 0.0 and zero["miou_fg"] == 0.0 and np.isnan(zero["pixel_acc"])
    # only the background seen: the foreground mean is NaN under "nan", the overall mean is not
    bg = scores(np.array([[5, 0], [0, 0]]), absent="nan")
    assert bg["miou"] == 1.0 and np.isnan(bg["miou_fg"])
    with pytest.raises(ValueError, match="'maybe' is not one of zero, nan, one"):
        scores(conf, absent="maybe")


def test_scores_do_not_warn_on_empty_classes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for absent in ("zero", "nan", "one"):
            scores(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]), absent=absent)
            # no pixel at all, and only the background: the undefined means are NaN without a
            # "mean of empty slice" or "invalid value" warning
            scores(np.zeros((3, 3), dtype=np.int64), absent=absent)
            scores(np.array([[5, 0], [0, 0]]), absent=absent)


def _images(data: Path, names, shape) -> None:
    """A JPEG of ``shape`` (H, W) per name, as the gallery figure reads them."""
    (data / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((*shape, 3), 40 * i % 256, dtype=np.uint8)).save(data / "JPEGImages" / f"{name}.jpg")


def _tree(root: Path, names, n, rng):
    """Images, ground truth and two mask sets, each folder recording the configuration it was made with."""
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
    _images(root / "data" / "toy", names, (40, 50))
    return pairs


def test_evaluate_stage_writes_table_metrics_and_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load([REPO / "params.yaml"])
    n = config.num_classes(cfg)
    pairs = _tree(tmp_path, [f"img{i}" for i in range(5)], n, np.random.default_rng(1))
    evaluate.run(cfg, SimpleNamespace(results="results", stage2=False, pseudo=False))
    table = pd.read_csv(tmp_path / "results" / "toy_val_miou.csv")
    metrics = json.loads((tmp_path / "results" / "metrics" / "toy_val.json").read_text())
    expected = scores(sum(confusion(g, p, n) for g, p in pairs.values()))
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert metrics["pixel_acc_crf"] == pytest.approx(1.0)  # the "crf" masks are the ground truth
    assert metrics["miou_crf"] == pytest.approx(1.0) and metrics["miou"] < 0.9
    assert list(table["class"])[-1] == "mean" and len(table) == n + 1
    assert table["iou"].iloc[-1] == pytest.approx(expected["miou"], abs=1e-6)
    assert (tmp_path / "results" / "toy_val_iou.png").stat().st_size > 1000


def test_gallery_names_are_evenly_spaced_through_the_split():
    names = [f"img{i:02d}" for i in range(20)]
    picked = evaluate.gallery_names(names, 8)
    # positions round(k * 19 / 7), k = 0..7: the first and the last, in the list's order
    assert picked == ["img00", "img03", "img05", "img08", "img11", "img14", "img16", "img19"]
    assert evaluate.gallery_names(names[:9], 8) == [f"img{i:02d}" for i in (0, 1, 2, 3, 5, 6, 7, 8)]
    assert evaluate.gallery_names(names[:5], 8) == names[:5]  # fewer images than rows: every one
    assert evaluate.gallery_names(names) == evaluate.gallery_names(names, evaluate.GALLERY_IMAGES)


def test_evaluate_gallery_draws_the_chosen_images_beside_their_masks(tmp_path, monkeypatch):
    """The gallery's rows are the chosen images of the split, each with its ground truth and both
    predictions as read from their files; the figure is a PNG with a row per image."""
    from wsss import figures

    monkeypatch.chdir(tmp_path)
    cfg = config.load([REPO / "params.yaml"])
    n = config.num_classes(cfg)
    names = [f"img{i}" for i in range(11)]
    pairs = _tree(tmp_path, names, n, np.random.default_rng(2))
    drawn = []
    real = figures.gallery_figure
    monkeypatch.setattr(evaluate, "gallery_figure", lambda rows, columns, *a, **k: (drawn.append((rows, columns)),
                                                                                    real(rows, columns, *a, **k))[1])
    evaluate.run(cfg, SimpleNamespace(results="results", stage2=False, pseudo=False))
    ((rows, columns),) = drawn
    assert columns == ["image", "ground truth", "prediction", "prediction + CRF"]
    assert [name for name, _ in rows] == evaluate.gallery_names(names) and len(rows) == evaluate.GALLERY_IMAGES
    for name, (image, gt, raw, crf) in rows:
        assert image.shape == (40, 50, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(gt, pairs[name][0])
        np.testing.assert_array_equal(raw, pairs[name][1])
        np.testing.assert_array_equal(crf, pairs[name][0].clip(0, n - 1))
    with Image.open(tmp_path / "results" / "toy_val_gallery.png") as png:
        assert png.format == "PNG" and png.height > png.width  # eight rows of four panels


def test_evaluate_names_a_missing_prediction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load([REPO / "params.yaml"])
    _tree(tmp_path, ["a", "b"], config.num_classes(cfg), np.random.default_rng(2))
    (tmp_path / "results" / "toy" / "val" / "crf" / "masks" / "b.png").unlink()
    with pytest.raises(Exception, match=r"crf/masks/b.png"):
        evaluate.run(cfg, SimpleNamespace(results="results", stage2=False, pseudo=False))
    assert not (tmp_path / "results" / "toy_val_miou.csv").exists()


def test_confusion_of_one_pixel_and_of_no_pixel():
    assert confusion(np.array([[2]]), np.array([[1]]), 3).tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    empty = confusion(np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8), 3)
    assert empty.shape == (3, 3) and empty.dtype == np.int64 and not empty.any()


@pytest.mark.parametrize("gt, pred, message", [
    ([0, 1], [0, 5], "predicted class index 5 outside [0, 3)"),
    ([0, 1], [0, 3], "predicted class index 3 outside [0, 3)"),  # num_classes itself is out of range
    ([0, 1], [-1, 1], "predicted class index -1 outside [0, 3)"),
    ([300, 0], [0, 0], "ground-truth value 300 outside [0, 3) and 255"),  # above ignore_index
    ([5, 0], [0, 0], "ground-truth class index 5 outside [0, 3) and 255"),  # between the classes and ignore_index
])
def test_confusion_names_the_value_out_of_range(gt, pred, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        confusion(np.array(gt), np.array(pred), 3)


def test_an_ignore_index_among_the_classes_is_refused_and_one_above_them_works():
    for ignore, classes in ((255, 300), (0, 3), (-1, 3), (2, 3)):
        with pytest.raises(ValueError, match=rf"^ignore_index {ignore} must be at least num_classes \({classes}\)$"):
            confusion(np.array([0]), np.array([0]), classes, ignore_index=ignore)
    # the smallest allowed ignore_index, just past the classes
    conf = confusion(np.array([2, 3, 0]), np.array([2, 0, 1]), 3, ignore_index=3)
    assert conf.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match=re.escape("ground-truth value 4 outside [0, 3) and 3")):
        confusion(np.array([4, 0]), np.array([0, 0]), 3, ignore_index=3)
    conf = confusion(np.array([299, 0, 400]), np.array([299, 1, 5]), 300, ignore_index=400)
    assert conf.shape == (300, 300) and conf[299, 299] == 1 and conf[0, 1] == 1 and conf.sum() == 2
    with pytest.raises(ValueError, match=re.escape("ground-truth class index 300 outside [0, 300) and 400")):
        confusion(np.array([300, 0]), np.array([0, 0]), 300, ignore_index=400)


def test_a_negative_ground_truth_value_is_the_one_named():
    with pytest.raises(ValueError, match=re.escape("ground-truth value -1 outside [0, 3) and 255")):
        confusion(np.array([-1, 0, 2]), np.array([0, 0, 0]), 3)


def test_table_of_undefined_columns_and_its_index():
    """A column with no defined value has a NaN mean (no warning); the rows are numbered 0..C."""
    import warnings

    nan = float("nan")
    raw = {"iou": np.array([0.5, nan]), "precision": np.array([nan, nan]), "recall": np.array([1.0, nan]),
           "miou": 0.5}
    crf = {"iou": np.array([1.0, 0.25]), "precision": np.array([1.0, 0.5]), "recall": np.array([nan, nan]),
           "miou": 0.625}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = evaluate.table(["bg", "fg"], raw, crf)
    assert list(df.index) == [0, 1, 2]
    assert list(df.columns) == ["class", "iou", "precision", "recall", "iou_crf", "precision_crf", "recall_crf"]
    mean = df.iloc[2]
    assert mean["class"] == "mean" and mean["iou"] == 0.5 and mean["recall"] == 1.0
    assert mean["iou_crf"] == 0.625 and mean["precision_crf"] == 0.75
    assert np.isnan(mean["precision"]) and np.isnan(mean["recall_crf"])


def test_class_names_from_the_manifest_or_numbered(tmp_path):
    manifest = tmp_path / "prepared.json"
    assert evaluate.class_names(tmp_path, 2) == ["class_0", "class_1"]  # no manifest
    manifest.write_text(json.dumps({"class_names": ["background", "disc"]}))
    assert evaluate.class_names(tmp_path, 2) == ["background", "disc"]
    assert evaluate.class_names(tmp_path, 3) == ["class_0", "class_1", "class_2"]  # the wrong count
    manifest.write_text(json.dumps({"data": {}}))
    assert evaluate.class_names(tmp_path, 2) == ["class_0", "class_1"]  # no names


def _masks(folder: Path, masks: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        save_mask(np.array(mask, dtype=np.uint8), folder / f"{name}.png")
    return folder


def test_accumulate_sums_per_folder_whatever_the_threads(tmp_path, monkeypatch):
    """One int64 matrix per folder, the sum over the images, the same with one worker thread."""
    rng = np.random.default_rng(3)
    pairs = {f"i{k}": random_pair(rng, 4, (6, 7)) for k in range(20)}
    gt_dir = _masks(tmp_path / "gt", {k: g for k, (g, _) in pairs.items()})
    pred_dir = _masks(tmp_path / "pred", {k: p for k, (_, p) in pairs.items()})
    true_dir = _masks(tmp_path / "true", {k: np.where(g == 255, 0, g) for k, (g, _) in pairs.items()})
    names = list(pairs)
    expected = np.zeros((4, 4), dtype=np.int64)
    for g, p in pairs.values():
        for gv, pv in zip(g.reshape(-1), p.reshape(-1)):
            if gv != 255:
                expected[gv, pv] += 1
    pooled = evaluate.accumulate(names, gt_dir, [pred_dir, true_dir], 4, 255)
    assert [t.dtype for t in pooled] == [np.int64, np.int64]
    np.testing.assert_array_equal(pooled[0], expected)
    np.testing.assert_array_equal(pooled[1], np.diag(expected.sum(1)))  # the ground truth as the prediction

    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(evaluate, "ThreadPoolExecutor", lambda max_workers: ThreadPoolExecutor(max_workers=1))
    serial = evaluate.accumulate(names, gt_dir, [pred_dir, true_dir], 4, 255)
    for a, b in zip(pooled, serial):
        np.testing.assert_array_equal(a, b)


def test_accumulate_uses_the_given_ignore_index(tmp_path):
    gt_dir = _masks(tmp_path / "gt", {"a": [[0, 200, 1]]})
    pred_dir = _masks(tmp_path / "pred", {"a": [[0, 1, 1]]})
    (conf,) = evaluate.accumulate(["a"], gt_dir, [pred_dir], 2, 200)
    assert conf.tolist() == [[1, 0], [0, 1]]


def test_accumulate_names_a_bad_prediction(tmp_path):
    gt_dir = _masks(tmp_path / "gt", {"a": [[0, 1]], "b": [[0, 1], [1, 0]]})
    good = _masks(tmp_path / "infer", {"a": [[0, 1]], "b": [[0, 1], [1, 0]]})
    small = _masks(tmp_path / "crf", {"a": [[0, 1]], "b": [[0, 1]]})
    message = f"prediction {small}/b.png is (1, 2), ground truth is (2, 2)"
    with pytest.raises(WsssError, match=f"^{re.escape(message)}$"):
        evaluate.accumulate(["a", "b"], gt_dir, [good, small], 2, 255)
    _masks(tmp_path / "crf", {"b": [[0, 1], [7, 0]]})
    with pytest.raises(WsssError, match=f"^{re.escape('b: predicted class index 7 outside [0, 2)')}$"):
        evaluate.accumulate(["a", "b"], gt_dir, [good, small], 2, 255)


# Two 2x4 images, four classes (class 3 never seen), absent classes left out ("nan"). Confusion
# matrices (rows ground truth, columns prediction) worked out by hand:
#   raw  [[4,1,0,0],[0,4,1,0],[2,0,2,0],[0]*4]: IoU 4/7, 4/6, 2/5; precision 4/6, 4/5, 2/3;
#        recall 4/5, 4/5, 2/4; pixel accuracy 10/14
#   crf  [[5,0,0,0],[0,5,0,0],[0,3,1,0],[0]*4]: IoU 5/5, 5/8, 1/4; precision 5/5, 5/8, 1/1;
#        recall 5/5, 5/5, 1/4; pixel accuracy 11/14
HAND = {
    "gt": {"a": [[0, 0, 1, 1], [0, 255, 2, 2]], "b": [[0, 1, 1, 1], [2, 2, 255, 0]]},
    "infer": {"a": [[0, 1, 1, 1], [0, 0, 2, 0]], "b": [[0, 1, 1, 2], [2, 0, 0, 0]]},
    "crf": {"a": [[0, 0, 1, 1], [0, 0, 2, 1]], "b": [[0, 1, 1, 1], [1, 1, 0, 0]]},
}
HAND_CSV = """\
class,iou,precision,recall,iou_crf,precision_crf,recall_crf
background,0.571429,0.666667,0.800000,1.000000,1.000000,1.000000
disc,0.666667,0.800000,0.800000,0.625000,0.625000,1.000000
ring,0.400000,0.666667,0.500000,0.250000,1.000000,0.250000
star,,,,,,
mean,0.546032,0.711111,0.700000,0.625000,0.875000,0.750000
"""


def _hand_tree(root: Path, cfg: dict, class_names=None) -> None:
    data = root / "data" / "toy"
    _masks(data / "SegmentationClass", HAND["gt"])
    manifest = {"data": cfg["data"]} | ({"class_names": class_names} if class_names else {})
    (data / "prepared.json").write_text(json.dumps(manifest))
    (data / "ImageSets" / "Segmentation").mkdir(parents=True)
    (data / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\n")
    _images(data, HAND["gt"], (2, 4))
    for sub in ("infer", "crf"):
        _masks(root / "out" / "toy" / "val" / sub / "masks", HAND[sub])
        (root / "out" / "toy" / "val" / sub / "config.yaml").write_text(yaml.safe_dump(cfg))


def _hand_cfg() -> dict:
    cfg = config.load([REPO / "params.yaml"])
    cfg["data"]["toy"]["num_classes"] = 3
    cfg["eval"]["absent_class"] = "nan"
    return cfg


def test_evaluate_stage_outputs_by_hand(tmp_path, monkeypatch, capsys):
    """Every cell of the table, every metric, the figure's title and the configuration, on a --results root."""
    import matplotlib.axes

    monkeypatch.chdir(tmp_path)
    cfg = _hand_cfg()
    _hand_tree(tmp_path, cfg, ["background", "disc", "ring", "star"])
    titles = []
    set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: (titles.append(label), set_title(self, label, *a, **k))[1])
    evaluate.run(cfg, SimpleNamespace(results="out", stage2=False, pseudo=False))
    assert (tmp_path / "out" / "toy_val_miou.csv").read_text() == HAND_CSV
    metrics = json.loads((tmp_path / "out" / "metrics" / "toy_val.json").read_text())
    assert metrics == {
        "miou": round((4 / 7 + 4 / 6 + 2 / 5) / 3, 6), "miou_crf": round((1 + 5 / 8 + 1 / 4) / 3, 6),
        "miou_fg": round((4 / 6 + 2 / 5) / 2, 6), "miou_fg_crf": round((5 / 8 + 1 / 4) / 2, 6),
        "pixel_acc": round(10 / 14, 6), "pixel_acc_crf": round(11 / 14, 6), "images": 2,
    }
    assert metrics["miou"] == 0.546032 and metrics["pixel_acc_crf"] == 0.785714  # six places
    assert "toy val: per-class IoU" in titles
    assert (tmp_path / "out" / "toy_val_iou.png").stat().st_size > 1000
    assert yaml.safe_load((tmp_path / "out" / "toy" / "val" / "evaluate.yaml").read_text()) == cfg
    out = capsys.readouterr().out
    assert out == ("evaluate: 2 images, mIoU 0.5460, with CRF 0.6250, pixel acc 0.7143 / 0.7857 -> "
                   f"{Path('out') / 'toy_val_miou.csv'}\n")


def test_evaluate_numbers_the_classes_when_the_manifest_has_the_wrong_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _hand_cfg()
    _hand_tree(tmp_path, cfg, ["background", "disc"])
    evaluate.run(cfg, SimpleNamespace(results="out", stage2=False, pseudo=False))
    table = pd.read_csv(tmp_path / "out" / "toy_val_miou.csv")
    assert list(table["class"]) == ["class_0", "class_1", "class_2", "class_3", "mean"]


@pytest.mark.parametrize("stage", ["infer", "crf"])
def test_evaluate_names_a_missing_mask_folder(tmp_path, monkeypatch, stage):
    import shutil

    monkeypatch.chdir(tmp_path)
    cfg = _hand_cfg()
    _hand_tree(tmp_path, cfg)
    shutil.rmtree(tmp_path / "out" / "toy" / "val" / stage / "masks")
    missing = Path("out") / "toy" / "val" / stage / "masks"
    message = f"{stage} output missing: {missing}; run `wsss {stage}` first"
    with pytest.raises(WsssError, match=f"^{re.escape(message)}$"):
        evaluate.run(cfg, SimpleNamespace(results="out", stage2=False, pseudo=False))
