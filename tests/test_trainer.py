"""The training loop itself (wsss.engine.trainer), in this process on the small toy set: what each
logged row holds, what a checkpoint holds, the loader's order, and the errors the loop raises."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_TRAINING, run_killed_after_first_epoch
from wsss import config
from wsss.engine import checkpoint, trainer
from wsss.errors import WsssError
from wsss.model.network import build_model
from wsss.paths import for_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_training_cfg):
    return tiny_training_cfg


@pytest.fixture
def fake_clock(monkeypatch):
    """time.perf_counter in the trainer advances by exactly 1 s per call."""
    ticks = itertools.count()
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: float(next(ticks)))


def read_tsv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_pretrain_logs_every_step_and_saves_what_it_ran(cfg, tmp_path, fake_clock, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    state = checkpoint.load(paths.checkpoint("pretrain"))
    steps = 48 // 8  # 48 training images, batch 8, the last incomplete batch dropped
    assert state["epoch"] == 1 and state["step"] == steps and state["stage"] == "pretrain"
    assert state["supervised"] is False and state["config"] == cfg
    assert state["signature"] == checkpoint.model_signature(cfg)
    lr = cfg["train"]["lr"] * cfg["train"]["lr_mults"][0]
    rows = state["log"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1)) and {r["epoch"] for r in rows} == {0}
    for row in rows:
        assert row["stage"] == "pretrain" and row["seg"] == 0.0 and row["loss"] == row["cls"] > 0
        assert row["lr"] == pytest.approx(lr) and row["img_per_s"] == 8.0  # 8 images per (fake) second
        assert row["pseudo_valid"] != row["pseudo_valid"]  # NaN: no pseudo-labels before cls_epochs
    logged = read_tsv(paths.train_log("pretrain"))
    assert list(logged[0]) == trainer.LOG_COLUMNS and len(logged) == steps
    assert [float(r["loss"]) for r in logged] == [r["loss"] for r in rows]
    assert yaml.safe_load(paths.stage_config("pretrain").read_text()) == cfg
    assert not list(paths.state.glob("*.pt")), "the resumable state is removed once the checkpoint is written"
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr)


def test_train_continues_the_steps_and_logs_only_its_own_rows(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)
    state = checkpoint.load(paths.checkpoint("train"))
    assert state["epoch"] == 2 and state["step"] == 12 and state["stage"] == "train"
    assert [r["stage"] for r in state["log"]] == ["pretrain"] * 6 + ["train"] * 6
    own = read_tsv(paths.train_log("train"))
    assert [int(r["step"]) for r in own] == list(range(7, 13)) and {r["epoch"] for r in own} == {"1"}
    assert all(0 <= float(r["pseudo_valid"]) <= 1 for r in own) and any(float(r["seg"]) > 0 for r in own)
    for r in own:
        assert float(r["loss"]) == pytest.approx(float(r["cls"]) + cfg["train"]["seg_weight"] * float(r["seg"]), abs=2e-5)
    rows = [r for r in state["log"] if r["stage"] == "train"]  # the curve's precision: losses to 5 decimals, shares to 4
    assert all(r[k] == round(r[k], 5) for r in rows for k in ("loss", "cls", "seg"))
    assert all(r["pseudo_valid"] == round(r["pseudo_valid"], 4) for r in rows) and len({r["seg"] for r in rows}) > 2


def test_train_refuses_a_pretrain_checkpoint_of_another_schedule(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    state = checkpoint.load(paths.checkpoint("pretrain"))
    state["epoch"] = 3
    checkpoint.save(paths.checkpoint("pretrain"), state)
    with pytest.raises(WsssError) as err:
        trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)
    assert str(err.value) == (f"checkpoint {paths.checkpoint('pretrain')} ends at epoch 3, but train.cls_epochs is 1; "
                              "re-run pretrain")


def test_a_loss_that_is_not_finite_stops_training_naming_the_key(cfg, tmp_path, monkeypatch, one_thread):
    real = trainer.build_loss

    def exploding(cfg, supervised=False):
        loss = real(cfg, supervised=supervised)

        def call(*args, **kwargs):
            out = loss(*args, **kwargs)
            return dict(out, total=out["total"] * float("inf"))

        return call

    monkeypatch.setattr(trainer, "build_loss", exploding)
    paths = for_config(cfg, tmp_path / "results")
    with pytest.raises(WsssError, match=r"^pretrain: the loss became inf at epoch 0; lower train.lr$"):
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert not paths.checkpoint("pretrain").exists()


def test_the_loader_order_is_fixed_by_seed_and_epoch(cfg):
    from wsss.engine import distributed

    cfg["train"].update(seed=7, workers=2)  # a seed other than 0, which would hide how it enters
    dataset = trainer._dataset(cfg)
    loader = trainer._loader(dataset, cfg, epoch=3, context=distributed.SINGLE)
    assert len(loader) == 48 // 8 and loader.num_workers == 2
    order = torch.randperm(48, generator=torch.Generator().manual_seed(7 * 1000 + 3)).tolist()
    expected = [[(3, i) for i in order[b * 8:(b + 1) * 8]] for b in range(6)]
    assert list(iter(loader.batch_sampler)) == expected
    assert list(iter(trainer._loader(dataset, cfg, 3, distributed.SINGLE).batch_sampler)) == expected
    assert list(iter(trainer._loader(dataset, cfg, 4, distributed.SINGLE).batch_sampler)) != expected
    second = distributed.Context(rank=1, world_size=2)
    assert list(iter(trainer._loader(dataset, cfg, 3, second).batch_sampler)) == [b[4:] for b in expected]


def _copy_split(src: Path, dst: Path, split: str) -> None:
    """A VOC-format copy of one split of ``src`` (images, masks, list) under ``dst``."""
    import shutil

    names = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(src / sub / f"{name}{ext}", dst / sub / f"{name}{ext}")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "ImageSets" / "Segmentation" / f"{split}.txt", dst / "ImageSets" / "Segmentation")


@pytest.mark.parametrize("dataset", ["voc", "toy"])
def test_train_aug_takes_its_labels_from_the_aug_masks_where_prepare_made_them(cfg, toy_root, tmp_path, capsys,
                                                                               dataset):
    import numpy as np
    from PIL import Image

    from wsss.data.voc import AUG_MASKS

    root = tmp_path / dataset
    _copy_split(toy_root, root, "train_aug")
    cfg["data"].update(name=dataset, root=str(tmp_path))
    plain = trainer._dataset(cfg)
    assert plain.mask_dir == "SegmentationClass"
    note = capsys.readouterr().err
    expected = (f"note: {root / AUG_MASKS} is missing, so the image-level labels come from {root / 'SegmentationClass'} "
                "(VOC's masks first, not the public code's SBD-first list); re-run `wsss prepare` to make it\n")
    assert note == (expected if dataset == "voc" else "")

    # an aug mask that holds only class 3: the labels follow it, not SegmentationClass
    (root / AUG_MASKS).mkdir()
    for name in (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split():
        mask = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
        Image.fromarray(np.where(mask > 0, 3, 0).astype(np.uint8)).save(root / AUG_MASKS / f"{name}.png")
    aug = trainer._dataset(cfg)
    assert aug.mask_dir == AUG_MASKS and capsys.readouterr().err == ""
    index = next(i for i in range(len(plain)) if set(np.unique(plain.load(i)[1])) - {0, 3, 255})
    assert set(np.unique(aug.load(index)[1])) <= {0, 3}

    cfg["data"]["train_split"] = "train"  # another split never reads the aug masks
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(
        (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text())
    assert trainer._dataset(cfg).mask_dir == "SegmentationClass"


def test_a_split_smaller_than_a_batch_is_refused(cfg, toy_root):
    cfg["train"]["batch_size"] = 48  # exactly one batch: allowed
    assert len(trainer._dataset(cfg)) == 48
    cfg["train"]["batch_size"] = 64
    with pytest.raises(WsssError) as err:
        trainer._dataset(cfg)
    assert str(err.value) == (f"split 'train_aug' of {toy_root} has 48 images, fewer than train.batch_size=64")


def test_each_phase_resumes_from_its_own_state_file(cfg, tmp_path):
    paths = for_config(cfg, tmp_path / "results")
    names = {stage: trainer._state_path(cfg, trainer.phase_for(stage, cfg, paths), paths)
             for stage in ("pretrain", "train", "supervise")}
    assert len(set(names.values())) == 3
    assert all(p.parent == paths.state and p.name.startswith(f"{stage}-") for stage, p in names.items())
    other = config.load([REPO / "params.yaml"], TINY_TRAINING + ["train.lr=0.5"])
    other["data"] = cfg["data"]
    assert trainer._state_path(other, trainer.phase_for("train", other, paths), paths) != names["train"]


def test_phases_cover_the_schedule(cfg, tmp_path):
    paths = for_config(cfg, tmp_path / "results")
    assert trainer.phase_for("pretrain", cfg, paths) == trainer.Phase("pretrain", 0, 1, None)
    assert trainer.phase_for("train", cfg, paths) == trainer.Phase("train", 1, 2, paths.checkpoint("pretrain"))
    assert trainer.phase_for("supervise", cfg, paths) == trainer.Phase("supervise", 1, 2, paths.checkpoint("pretrain"),
                                                                       supervised=True)
    with pytest.raises(ValueError, match="deploy"):
        trainer.phase_for("deploy", cfg, paths)


def test_imagenet_weights_are_fetched_only_when_starting_from_scratch(cfg, tmp_path, monkeypatch, one_thread):
    calls = []
    monkeypatch.setattr(trainer, "fetch_weights", lambda *args: calls.append(args))
    cfg["model"]["pretrained"] = True
    cfg["model"]["weights"] = "my-weights.pth"
    paths = for_config(cfg, tmp_path / "results")
    loads = []

    def build(c, load_weights):
        loads.append(load_weights)
        return build_model(c, load_weights=False)

    monkeypatch.setattr(trainer, "build_model", build)
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert calls == [(cfg["model"]["backbone"], cfg["data"]["downloads"], "my-weights.pth")] and loads == [True]
    trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)  # from the pretrain checkpoint
    assert len(calls) == 1 and loads == [True, False]
    cfg["model"]["pretrained"] = False
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert len(calls) == 1


def test_the_curve_file_is_tab_separated_with_plain_newlines(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    text = paths.train_log("pretrain").read_bytes().decode()
    assert "\r" not in text and text.splitlines()[0] == "\t".join(trainer.LOG_COLUMNS) and text.endswith("\n")


@pytest.mark.parametrize("plugin", [None, "rtc", "fbr", "supportnet"])
def test_an_interrupted_run_resumes_to_the_same_weights_and_rows(cfg, tmp_path, monkeypatch, capsys, fake_clock,
                                                                 one_thread, plugin):
    # two epochs, the second with the segmentation term (and a plug-in's pseudo-label adjustment)
    cfg["train"]["cls_epochs"] = 1
    if plugin:
        cfg["plugins"][plugin]["enabled"] = True
        cfg["plugins"]["rtc"]["view_size"] = 40
        cfg["plugins"]["fbr"].update(bank_size=96, bg_below=0.4, fg_above=0.6)  # the bank wraps around in epoch 1
        cfg["plugins"]["supportnet"].update(momentum=0.9, mam_scales=[1.0])  # the teacher moves visibly
    phase = trainer.Phase("pretrain", 0, 2)
    whole = for_config(cfg, tmp_path / "whole")
    trainer.run(cfg, phase, whole)
    expected = checkpoint.load(whole.checkpoint("pretrain"))

    paths = for_config(cfg, tmp_path / "killed")
    run_killed_after_first_epoch(monkeypatch, cfg, phase, paths)
    assert not paths.checkpoint("pretrain").exists() and len(list(paths.state.glob("pretrain-*.pt"))) == 1
    capsys.readouterr()
    trainer.run(cfg, phase, paths)
    assert "resuming pretrain from " in capsys.readouterr().out
    resumed = checkpoint.load(paths.checkpoint("pretrain"))
    assert resumed["epoch"] == expected["epoch"] == 2 and resumed["step"] == expected["step"] == 12
    def curve(rows):  # NaN != NaN: compare the text of each row, throughput left out
        return [repr({k: v for k, v in r.items() if k != "img_per_s"}) for r in rows]

    assert curve(resumed["log"]) == curve(expected["log"])
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    momentum = [s["momentum_buffer"] for s in expected["optimizer"]["state"].values()]
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(resumed["optimizer"]["state"].values(), momentum))
    assert len(momentum) == len(list(resumed["optimizer"]["state"].values()))
    if plugin:  # the plug-in's heads and state, and its curve columns
        assert set(expected["plugins"]) and set(resumed["plugins"]) == set(expected["plugins"])
        for name, tensor in expected["plugins"].items():
            assert torch.equal(resumed["plugins"][name], tensor), name
        first_term = {"rtc": "equiv", "fbr": "decorrelate", "supportnet": "mam"}[plugin]
        assert all(r[f"{plugin}.{first_term}"] > 0 for r in resumed["log"])
        assert {r["epoch"] for r in resumed["log"] if r["seg"] > 0} == {1}
        if plugin == "supportnet":  # the teacher is saved, restored, and has moved off its initial copy
            teacher = {k[len("plugins.supportnet.teacher.module."):]: v for k, v in resumed["plugins"].items()
                       if k.startswith("plugins.supportnet.teacher.module.")}
            assert set(teacher) == set(resumed["model"])
            assert any(not torch.equal(teacher[k], resumed["model"][k]) for k in teacher if teacher[k].is_floating_point())
    else:
        assert "plugins" not in resumed


def test_supervise_trains_on_the_ground_truth_masks(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    trainer.run(cfg, trainer.phase_for("supervise", cfg, paths), paths)
    state = checkpoint.load(paths.checkpoint("supervise"))
    assert state["stage"] == "supervise" and state["supervised"] is True
    rows = [r for r in state["log"] if r["stage"] == "supervise"]
    assert len(rows) == 6 and all(r["seg"] > 0 for r in rows)
    assert all(r["pseudo_valid"] != r["pseudo_valid"] for r in rows)  # no pseudo-labels: the masks are given


def test_amp_is_for_cuda_only_a_cpu_run_is_unchanged(cfg, tmp_path, one_thread):
    weights = []
    for amp in (False, True):
        cfg["train"]["amp"] = amp
        paths = for_config(cfg, tmp_path / f"amp-{amp}")
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
        weights.append(checkpoint.load(paths.checkpoint("pretrain"))["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_throughput_counts_every_image_since_the_last_row(cfg, tmp_path, monkeypatch, one_thread):
    ticks = itertools.count()
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: 0.75 * next(ticks))  # 0.75 s per call
    cfg["train"]["log_every"] = 2
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    rows = checkpoint.load(paths.checkpoint("pretrain"))["log"]
    # 2 batches of 8 images in one call of the clock: 16 / 0.75 s, to 2 decimals
    assert [r["step"] for r in rows] == [2, 4, 6] and [r["img_per_s"] for r in rows] == [21.33, 21.33, 21.33]


def test_the_cpu_threads_leave_a_core_to_each_loader_worker(cfg, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    cfg["train"]["workers"] = 2
    seen = []
    monkeypatch.setattr(trainer, "_dataset", lambda c: seen.append(torch.get_num_threads()) or (_ for _ in ()).throw(
        WsssError("stop here")))
    paths = for_config(cfg, tmp_path / "results")
    with pytest.raises(WsssError, match="stop here"):
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert seen == [1]  # a budget of 3 threads, 2 of them the workers'


def test_train_refuses_a_pretrain_checkpoint_of_another_model_without_a_recorded_config(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    state = checkpoint.load(paths.checkpoint("pretrain"))
    del state["config"]  # as written before checkpoints recorded their configuration
    state["signature"]["model"] = {**state["signature"]["model"], "psi": 0.5}
    checkpoint.save(paths.checkpoint("pretrain"), state)
    with pytest.raises(WsssError, match=rf"^checkpoint {paths.checkpoint('pretrain')} was made for a different model "
                                        r"configuration \(model.psi: checkpoint 0.5, params 0.3\)"):
        trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)
