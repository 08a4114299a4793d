"""The two-stage branch: `wsss pseudo` (the training split's pseudo-masks, compared with infer with the image labels
+ crf on that split), `wsss retrain` (the second network: schedule, resume, bad pseudo-masks) and its --stage2 scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from test_training import SCHEDULE, pretrained, trained, wsss  # noqa: F401  (pretrained is a fixture)
from wsss.data.palette import load_mask
from wsss.metrics import confusion, scores

FAST = [*SCHEDULE, "infer.scales=[1.0, 0.5]"]


def masks_in(folder) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def pseudo_run(pretrained):  # noqa: F811
    cwd, root = trained(pretrained)
    proc = wsss("pseudo", cwd, root, *FAST, "crf.workers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, root, proc


def test_pseudo_masks_are_what_infer_with_the_image_labels_then_crf_give(pseudo_run, tmp_path):
    """Every training image gets the mask `wsss infer -S infer.presence=gt` + `wsss crf` would write for
    the training split; with two CRF workers (a process pool beside the network) the same."""
    cwd, root, proc = pseudo_run
    out = cwd / "results/toy/train_aug/pseudo"
    names = (root / "toy/ImageSets/Segmentation/train_aug.txt").read_text().split()
    written = masks_in(out / "masks")
    assert sorted(written) == sorted(names) and len(names) == 48
    assert proc.stdout.endswith("pseudo: wrote 48 pseudo-masks to results/toy/train_aug/pseudo\n")
    record = yaml.safe_load((out / "config.yaml").read_text())  # the parameters it ran under, as infer records them
    assert record["crf"]["workers"] == 1 and record["infer"]["scales"] == [1.0, 0.5]
    made_by = yaml.safe_load((out / "checkpoint.yaml").read_text())
    as_eval = [*FAST, "infer.presence=gt", "data.eval_split=train_aug", "crf.workers=1"]
    assert wsss("infer", cwd, root, *as_eval).returncode == 0
    assert wsss("crf", cwd, root, *as_eval).returncode == 0
    assert masks_in(cwd / "results/toy/train_aug/crf/masks").keys() == written.keys()
    assert made_by == yaml.safe_load((cwd / "results/toy/train_aug/infer/checkpoint.yaml").read_text())
    assert made_by["path"].endswith("train.pt")
    for name, mask in masks_in(cwd / "results/toy/train_aug/crf/masks").items():
        assert np.array_equal(written[name], mask), name
    for name, mask in masks_in(cwd / "results/toy/train_aug/infer/masks").items():
        assert np.array_equal(masks_in(out / "masks_raw")[name], mask), name
    for name, mask in written.items():  # only the image's own classes: presence from its labels
        truth = load_mask(root / "toy/SegmentationClass" / f"{name}.png")
        assert set(np.unique(mask).tolist()) <= set(np.unique(truth).tolist()) | {0}
    elsewhere = tmp_path / "two-workers"  # not in the module's shared folder: a second run starts afresh
    shutil.copytree(cwd / "results/toy", elsewhere / "toy", ignore=shutil.ignore_patterns("train_aug", "val"))
    assert wsss("pseudo", cwd, root, *FAST, "crf.workers=2", extra=("--results", str(elsewhere))).returncode == 0
    assert masks_in(elsewhere / "toy/train_aug/pseudo/masks").keys() == written.keys()
    for name, mask in masks_in(elsewhere / "toy/train_aug/pseudo/masks").items():
        assert np.array_equal(written[name], mask), name


def test_the_pseudo_masks_of_the_score_split_are_scored_against_their_ground_truth(pseudo_run):
    cwd, root, _ = pseudo_run
    proc = wsss("evaluate", cwd, root, *FAST, extra=("--pseudo",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cwd / "results/toy/train_aug/pseudo"
    names = (root / "toy/ImageSets/Segmentation/train.txt").read_text().split()
    num_classes = 11
    confs = {kind: np.zeros((num_classes, num_classes), np.int64) for kind in ("masks_raw", "masks")}
    for name in names:
        truth = load_mask(root / "toy/SegmentationClass" / f"{name}.png")
        for kind in confs:
            confs[kind] += confusion(truth, load_mask(out / kind / f"{name}.png"), num_classes, 255)
    raw, crf = scores(confs["masks_raw"], "zero"), scores(confs["masks"], "zero")
    table = pd.read_csv(cwd / "results/toy_train_aug_pseudo_miou.csv")
    assert table["class"].iloc[-1] == "mean" and len(table) == num_classes + 1
    np.testing.assert_allclose(table["iou"].iloc[:-1], raw["iou"], atol=1e-6)
    np.testing.assert_allclose(table["iou_crf"].iloc[:-1], crf["iou"], atol=1e-6)
    np.testing.assert_allclose(table["recall_crf"].iloc[:-1].fillna(-1), np.nan_to_num(crf["recall"], nan=-1), atol=1e-6)
    metrics = json.loads((cwd / "results/metrics/toy_train_aug_pseudo.json").read_text())
    assert metrics["miou"] == pytest.approx(raw["miou"], abs=1e-6) and metrics["miou_crf"] == pytest.approx(crf["miou"], abs=1e-6)
    assert metrics["images"] == 48 and (cwd / "results/toy_train_aug_pseudo_iou.png").is_file()
    assert (cwd / "results/toy/train_aug/evaluate_pseudo.yaml").is_file()
    assert proc.stdout.splitlines()[-1].startswith(f"evaluate: 48 images, mIoU {raw['miou']:.4f}, with CRF {crf['miou']:.4f}")


def test_a_score_split_outside_the_training_split_is_refused_naming_the_key(pseudo_run, tmp_path):
    cwd, root, _ = pseudo_run
    shutil.copytree(cwd / "results/toy/train_aug/pseudo", tmp_path / "toy/train_aug/pseudo")
    proc = wsss("evaluate", cwd, root, *FAST, "pseudo.score_split=val", extra=("--pseudo", "--results", str(tmp_path)))
    assert proc.returncode == 2
    assert ("key 'pseudo.score_split': 24 images of split 'val' are not in the training split 'train_aug' "
            "(the first: val_00000)") in proc.stderr
    proc = wsss("evaluate", cwd, root, *FAST, "pseudo.score_split=nosuch", extra=("--pseudo", "--results", str(tmp_path)))
    assert proc.returncode == 2
    assert (f"key 'pseudo.score_split': split 'nosuch' has no list {root / 'toy/ImageSets/Segmentation/nosuch.txt'}"
            in proc.stderr)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "toy_train_aug_pseudo_miou.csv").exists()


# ---------------------------------------------------------------- the second stage

RETRAIN = ["retrain.batch_size=8", "retrain.crop_size=48", "retrain.iterations=9", "retrain.log_every=1", "retrain.lr=0.01"]


@pytest.fixture(scope="module")
def retrained(pseudo_run):
    cwd, root, _ = pseudo_run
    proc = wsss("retrain", cwd, root, *FAST, *RETRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, root, proc


def test_retrain_follows_the_poly_schedule_and_records_what_it_ran(retrained):
    import torch
    import yaml

    from wsss.engine.supervised import poly_lr
    from wsss.model.segmenter import build_segmenter

    cwd, root, proc = retrained
    assert proc.stdout.splitlines()[-1] == "retrain: wrote results/toy/retrain.pt (9 iterations)"
    state = torch.load(cwd / "results/toy/retrain.pt", map_location="cpu", weights_only=False)
    assert (state["stage"], state["step"], state["epoch"], state["supervised"]) == ("retrain", 9, 2, True)
    rows = state["log"]
    assert [r["step"] for r in rows] == list(range(1, 10)) and [r["epoch"] for r in rows] == [0] * 6 + [1] * 3
    # the lr logged after step s is the one step s ran with: 0.01 x (1 - (s - 1) / 9) ** 0.9 (the backbone's weights)
    assert [r["lr"] for r in rows] == pytest.approx([poly_lr(0.01, s - 1, 9, 0.9) for s in range(1, 10)])
    assert rows[0]["loss"] > 0 and all(np.isfinite(r["loss"]) and r["loss"] >= 0 for r in rows)
    groups = state["optimizer"]["param_groups"]
    names = [n for n, _ in torch.nn.Module.named_parameters(build_segmenter(state["config"], load_weights=False))]
    backbone_w = [n for n in names if n.startswith("net.backbone.") and not n.endswith("bias")]
    backbone_b = [n for n in names if n.startswith("net.backbone.") and n.endswith("bias")]
    head_w = [n for n in names if not n.startswith("net.backbone.") and not n.endswith("bias")]
    head_b = [n for n in names if not n.startswith("net.backbone.") and n.endswith("bias")]
    assert [g["lr_mult"] for g in groups] == [1, 2, 1, 2] and [g["weight_decay"] for g in groups] == [5e-4, 0, 5e-4, 0]
    assert [len(g["params"]) for g in groups] == [len(g) for g in (backbone_w, backbone_b, head_w, head_b)]
    assert yaml.safe_load((cwd / "results/toy/retrain.yaml").read_text())["retrain"]["iterations"] == 9
    assert (cwd / "results/toy/retrain_log.tsv").read_text().splitlines()[0] == "stage\tepoch\tstep\tloss\tlr\timg_per_s"
    assert not list((cwd / "results/toy/state").glob("retrain-*.pt")), "the resumable state is removed once done"


def test_an_interrupted_retrain_resumes_to_the_same_weights(retrained, tmp_path, monkeypatch):
    import torch

    from wsss.engine import supervised

    cwd, root, _ = retrained
    elsewhere = tmp_path / "results"
    shutil.copytree(cwd / "results/toy/train_aug", elsewhere / "toy/train_aug")
    saves = []
    real_save = supervised.checkpoint.save

    def save_then_stop(path, state):
        real_save(path, state)
        saves.append(path)
        if len(saves) == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's state

    monkeypatch.setattr(supervised.checkpoint, "save", save_then_stop)
    proc = wsss("retrain", cwd, root, *FAST, *RETRAIN, extra=("--results", str(elsewhere)))
    assert proc.returncode == 130 and not (elsewhere / "toy/retrain.pt").exists()
    proc = wsss("retrain", cwd, root, *FAST, *RETRAIN, extra=("--results", str(elsewhere)))
    assert proc.returncode == 0 and "resuming retrain from" in proc.stdout and "at step 6 (epoch 1)" in proc.stdout
    ours = torch.load(elsewhere / "toy/retrain.pt", map_location="cpu", weights_only=False)
    whole = torch.load(cwd / "results/toy/retrain.pt", map_location="cpu", weights_only=False)
    assert ours["log"] == [dict(r, img_per_s=o["img_per_s"]) for r, o in zip(whole["log"], ours["log"])]
    assert all(torch.equal(ours["model"][k], whole["model"][k]) for k in whole["model"])


def test_retrain_on_the_ground_truth_is_the_same_trainer_on_the_training_masks(retrained, tmp_path):
    """`--ground-truth` (the benchmark's ceiling) needs no pseudo-masks and gives the weights that retraining on a
    pseudo-mask folder holding the training masks gives: one trainer, only the labels differ."""
    import torch

    from wsss.data.voc import training_mask_dir

    cwd, root, _ = retrained
    truth = root / "toy" / training_mask_dir({"data": {"train_split": "train_aug", "name": "toy"}}, root / "toy")
    ceiling = tmp_path / "ceiling"
    proc = wsss("retrain", cwd, root, *FAST, *RETRAIN, extra=("--results", str(ceiling), "--ground-truth"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == (f"retrain: wrote {ceiling}/toy/retrain_gt.pt (9 iterations on the "
                                            f"ground-truth masks {truth})")
    assert not (ceiling / "toy/retrain.pt").exists() and (ceiling / "toy/retrain_gt_log.tsv").is_file()
    copied = tmp_path / "copied"
    shutil.copytree(cwd / "results/toy/train_aug/pseudo", copied / "toy/train_aug/pseudo")
    names = (root / "toy/ImageSets/Segmentation/train_aug.txt").read_text().split()
    for name in names:
        shutil.copy(truth / f"{name}.png", copied / f"toy/train_aug/pseudo/masks/{name}.png")
    assert wsss("retrain", cwd, root, *FAST, *RETRAIN, extra=("--results", str(copied))).returncode == 0
    mine, same, pseudo = (torch.load(path, map_location="cpu", weights_only=False)
                          for path in (ceiling / "toy/retrain_gt.pt", copied / "toy/retrain.pt", cwd / "results/toy/retrain.pt"))
    assert mine["stage"] == "retrain" and mine["log"][0]["stage"] == "retrain"
    assert mine["masks"] == str(truth.resolve()) and pseudo["masks"] == str((cwd / "results/toy/train_aug/pseudo/masks").resolve())
    assert all(torch.equal(mine["model"][k], same["model"][k]) for k in mine["model"])
    assert [r["loss"] for r in mine["log"]] == [r["loss"] for r in same["log"]]
    assert any(not torch.equal(mine["model"][k], pseudo["model"][k]) for k in mine["model"]), "the labels matter"


@pytest.mark.parametrize("fault", ["missing", "size", "value"])
def test_retrain_refuses_a_bad_pseudo_mask_naming_it_before_training(pseudo_run, tmp_path, fault):
    cwd, root, _ = pseudo_run
    elsewhere = tmp_path / "results"
    shutil.copytree(cwd / "results/toy/train_aug/pseudo", elsewhere / "toy/train_aug/pseudo")
    masks = elsewhere / "toy/train_aug/pseudo/masks"
    victim = sorted(masks.glob("*.png"))[3]
    mask = load_mask(victim)
    if fault == "missing":
        victim.unlink()
        expected = f"pseudo-mask {victim} is missing: the folder does not cover split 'train_aug'; re-run `wsss pseudo`"
    elif fault == "size":
        Image.fromarray(mask[:-2]).save(victim)
        expected = (f"{victim}: mask size {mask.shape[1]}x{mask.shape[0] - 2} differs from its image's "
                    f"{mask.shape[1]}x{mask.shape[0]} (WxH)")
    else:
        mask = mask.copy()
        mask[0, 0] = 11
        Image.fromarray(mask).save(victim)
        expected = f"{victim}: mask value 11 is outside the classes 0..10 and 255 (ignore)"
    proc = wsss("retrain", cwd, root, *FAST, *RETRAIN, extra=("--results", str(elsewhere)))
    assert proc.returncode == 2 and f"wsss retrain: error: {expected}\n" in proc.stderr
    assert not (elsewhere / "toy/retrain.pt").exists() and not (elsewhere / "toy/state").exists()


def test_the_second_stage_is_inferred_refined_and_scored_as_the_first(retrained):
    import torch
    import yaml

    from wsss.stages.crf import read_probs, refine
    from wsss.stages.infer import load_segmenter, predict

    cwd, root, _ = retrained
    for stage in ("infer", "crf", "evaluate"):
        proc = wsss(stage, cwd, root, *FAST, *RETRAIN, "crf.workers=1", extra=("--stage2",))
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = cwd / "results/toy/stage2/val"
    cfg = yaml.safe_load((out / "infer/config.yaml").read_text())
    model, record = load_segmenter(cfg, torch.device("cpu"), cwd / "results/toy/retrain.pt")
    assert record["made_by"] == "wsss retrain" and not (out / "infer/scores.tsv").exists()
    crf_cfg = {**cfg["crf"], "background": "probs"}  # the network's own background, whatever crf.background says
    assert cfg["crf"]["background"] == "fg_power"
    names = (root / "toy/ImageSets/Segmentation/val.txt").read_text().split()
    for name in names[:3]:
        image = Image.open(root / "toy/JPEGImages" / f"{name}.jpg").convert("RGB")
        masks, presence = predict(model, image, [1.0, 0.5], True, cfg["infer"]["chunk"], None, "cpu")
        assert presence is None and masks.shape[0] == 11
        np.testing.assert_allclose(masks.sum(0).numpy(), 1.0, atol=1e-5)  # a softmax: every class, background included
        ids, probs = read_probs(out / "infer/probs" / f"{name}.npz")
        assert ids.tolist() == list(range(11))
        np.testing.assert_allclose(probs, masks.numpy(), atol=1e-3)
        crf_mask = np.asarray(Image.open(out / "crf/masks" / f"{name}.png"))
        assert np.array_equal(crf_mask, refine(np.asarray(image), ids, probs, crf_cfg, 11)), name
    metrics = json.loads((cwd / "results/metrics/toy_val_stage2.json").read_text())
    assert metrics["images"] == 24 and 0 <= metrics["miou_crf"] <= 1
    table = pd.read_csv(cwd / "results/toy_val_miou_stage2.csv")
    assert table["iou_crf"].iloc[-1] == pytest.approx(metrics["miou_crf"], abs=1e-6)
    assert (cwd / "results/toy_val_iou_stage2.png").is_file()


def test_infer_stage2_refuses_a_first_stage_checkpoint(retrained):
    cwd, root, _ = retrained
    proc = wsss("infer", cwd, root, *FAST, *RETRAIN, extra=("--stage2", "--checkpoint", "results/toy/train.pt"))
    assert proc.returncode == 2
    assert "checkpoint results/toy/train.pt was written by `wsss train`, not by `wsss retrain`" in proc.stderr


def test_the_segmenter_loads_an_imagenet_file_and_a_checkpoint_rebuild_needs_none(tmp_path):
    import torch
    from torchvision.models import resnet50

    from wsss import config
    from wsss.errors import WsssError
    from wsss.model.segmenter import build_segmenter

    weights = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), weights)  # torchvision's ImageNet file has these keys
    cfg = config.load([Path(__file__).resolve().parents[1] / "params.yaml"],
                      ["retrain.network=deeplabv3_resnet50", "retrain.pretrained=true", f"retrain.weights={weights}"])
    model = build_segmenter(cfg)
    expected = torch.load(weights)
    assert all(torch.equal(v, expected[k]) for k, v in model.net.backbone.state_dict().items())
    build_segmenter(cfg, load_weights=False)  # resume and --stage2 rebuild the network without the file
    cfg["retrain"]["pretrained"] = False
    with pytest.raises(WsssError, match=r"^key 'retrain.weights' is set but retrain.pretrained is false"):
        build_segmenter(cfg, load_weights=False)


def test_the_segmenter_s_imagenet_weights_come_from_the_file_or_the_hub_and_errors_name_the_key(tmp_path, monkeypatch):
    import torch
    from torchvision.models import resnet50

    from wsss import config
    from wsss.errors import WsssError
    from wsss.model.backbones import resnet
    from wsss.model.segmenter import build_segmenter, load_imagenet_backbone

    cfg = config.load([Path(__file__).resolve().parents[1] / "params.yaml"], ["retrain.network=deeplabv3_resnet50"])
    model = build_segmenter(cfg, load_weights=False)
    with pytest.raises(WsssError) as err:
        load_imagenet_backbone(model, "fcn_mobile", None)
    assert str(err.value) == ("key 'retrain.pretrained': no ImageNet weights are wired for 'fcn_mobile'; use "
                              "deeplabv3_resnet101 or deeplabv3_resnet50, or set -S retrain.pretrained=false")
    with pytest.raises(WsssError) as err:
        load_imagenet_backbone(model, "deeplabv3_resnet50", str(tmp_path / "none.pth"))
    assert str(err.value) == f"key 'retrain.weights': {tmp_path / 'none.pth'} is not a file"
    torch.save({"conv9.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WsssError, match=r"^key 'retrain\.weights': .*other\.pth does not fit"):
        load_imagenet_backbone(model, "deeplabv3_resnet50", str(tmp_path / "other.pth"))
    # no file: torchvision's weights through the hub (here a stand-in that records the name it is asked for)
    asked, state = [], resnet50(weights=None).state_dict()
    monkeypatch.setattr(resnet, "torchvision_imagenet_state_dict", lambda name: asked.append(name) or state)
    load_imagenet_backbone(model, "deeplabv3_resnet50", None)
    assert asked == ["resnet50"]
    assert all(torch.equal(v, state[k]) for k, v in model.net.backbone.state_dict().items())

    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(resnet, "torchvision_imagenet_state_dict", offline)
    with pytest.raises(WsssError, match=r"ImageNet weights for resnet50 .*-S retrain\.weights=PATH, or train from "
                                        r"scratch with -S retrain\.pretrained=false$"):
        load_imagenet_backbone(model, "deeplabv3_resnet50", None)


def test_pseudo_reserves_its_crf_workers_cores_and_loads_the_checkpoint_it_is_given(tiny_training_cfg, tmp_path,
                                                                                   monkeypatch):
    """The pool of ``crf.workers`` processes (all cores for 0, none for 1), the cores the network's threads leave
    them, the checkpoint ``--checkpoint`` names (else the train stage's) and the canvas check, before any image."""
    import copy
    from types import SimpleNamespace

    import torch

    from wsss.data.dataset import VOCSegmentation
    from wsss.errors import WsssError
    from wsss.paths import for_config
    from wsss.stages import pseudo

    class Stop(Exception):
        pass

    seen = {}

    class Pool:
        def __init__(self, workers):
            seen["pool"] = workers

        def shutdown(self, cancel_futures):
            pass

    def inference_network(cfg, dev, path):  # the network as infer runs it
        seen.update(device=dev, checkpoint=path)
        return None, {}

    def infer_views(*args, **kwargs):  # the first image: what was set up before it is what this test checks
        raise Stop

    def dataset(*args, **kwargs):  # the image-level labels come from the masks training reads (training_mask_dir)
        seen["mask_dir"] = kwargs.get("mask_dir")
        return VOCSegmentation(*args, **kwargs)

    monkeypatch.setattr(pseudo, "VOCSegmentation", dataset)
    monkeypatch.setattr(pseudo, "available_cores", lambda: 4)
    monkeypatch.setattr(pseudo.devices, "limit_cpu_threads", lambda dev, reserved=0: seen.update(reserved=reserved))
    monkeypatch.setattr(pseudo, "inference_network", inference_network)
    monkeypatch.setattr(pseudo, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(pseudo, "infer_views", infer_views)
    results = tmp_path / "results"
    for workers, reserved, pool, given in [(3, 3, 3, None), (1, 0, None, "elsewhere.pt"), (0, 4, 4, None), (2, 2, 2, None)]:
        seen.clear()
        cfg = copy.deepcopy(tiny_training_cfg)
        cfg["crf"]["workers"] = workers
        with pytest.raises(Stop):
            pseudo.run(cfg, SimpleNamespace(results=str(results), checkpoint=given))
        expected = {"mask_dir": "SegmentationClass", "reserved": reserved, "device": torch.device("cpu"),
                    "checkpoint": Path(given) if given else for_config(cfg, str(results)).checkpoint("train")}
        assert seen == ({**expected, "pool": pool} if pool else expected), workers
        assert not for_config(cfg, str(results)).pseudo.exists()  # nothing half-written
    cfg = copy.deepcopy(tiny_training_cfg)
    cfg["infer"]["pad_size"] = [16, 16]
    seen.clear()
    with pytest.raises(WsssError, match=r"larger than key 'infer.pad_size' \[16, 16\]"):
        pseudo.run(cfg, SimpleNamespace(results=str(results), checkpoint=None))
    assert seen == {"mask_dir": "SegmentationClass"}  # refused before the network is loaded


def test_pseudo_keeps_at_most_twice_its_workers_images_waiting_for_the_crf_and_cancels_them_on_error(
        tiny_training_cfg, tmp_path, monkeypatch):
    """With ``crf.workers`` 2, the network runs ahead of the CRF pool by at most 2 x 2 queued images (memory does
    not grow with the split); a CRF job that fails stops the stage, cancels the queued jobs, and leaves no output."""
    import copy
    from types import SimpleNamespace

    import torch

    from wsss.paths import for_config
    from wsss.stages import pseudo

    class Job:
        def __init__(self, fn, args, fails):
            self.fn, self.args, self.fails, self.done = fn, args, fails, False

        def result(self):
            if not self.done:
                self.done = True
                self.fn(*self.args)
                if self.fails:
                    raise RuntimeError("a CRF job failed")

    class Pool:
        def __init__(self, workers):
            self.workers, self.jobs, self.waiting, self.cancel = workers, [], [], None
            pools.append(self)

        def submit(self, fn, *args):
            self.jobs.append(Job(fn, args, fails=len(self.jobs) == fail_at))
            self.waiting.append(sum(not job.done for job in self.jobs))  # queued when this one is submitted
            return self.jobs[-1]

        def shutdown(self, cancel_futures):
            self.cancel = cancel_futures

    def infer_views(model, image, icfg, dev):  # uniform scores: the CRF's work is what this test counts
        return torch.full((11, image.height, image.width), 1 / 11), None

    pools = []
    monkeypatch.setattr(pseudo, "inference_network", lambda cfg, dev, path: (None, {"path": str(path)}))
    monkeypatch.setattr(pseudo, "infer_views", infer_views)
    monkeypatch.setattr(pseudo, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(pseudo.devices, "limit_cpu_threads", lambda dev, reserved=0: None)  # the process's threads
    cfg = copy.deepcopy(tiny_training_cfg)
    cfg["crf"].update(workers=2, iters=1)
    results = tmp_path / "results"
    fail_at = None
    pseudo.run(cfg, SimpleNamespace(results=str(results), checkpoint=None))
    out = for_config(cfg, str(results)).pseudo
    names = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert len(pools[0].jobs) == len(names) > 6 and pools[0].cancel is True
    assert max(pools[0].waiting) == 5 and pools[0].waiting[:6] == [1, 2, 3, 4, 5, 5]  # 2 x workers, then the new one
    assert all(job.done for job in pools[0].jobs)
    fail_at = 2  # the third image's CRF
    with pytest.raises(RuntimeError, match="a CRF job failed"):
        pseudo.run(cfg, SimpleNamespace(results=str(tmp_path / "again"), checkpoint=None))
    assert len(pools[1].jobs) == 7 and pools[1].cancel is True  # stopped when the third job's result was read
    assert [job.done for job in pools[1].jobs] == [True] * 3 + [False] * 4  # the queued ones left to the cancel
    assert not for_config(cfg, str(tmp_path / "again")).pseudo.exists()
