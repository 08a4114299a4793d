"""Validation during training and the checkpoint it selects (wsss.engine.validation, the trainer's use
of it), in this process on the small toy set."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAINING, run_killed_after_first_epoch
from wsss import config
from wsss.engine import checkpoint, trainer, validation
from wsss.errors import WsssError
from wsss.config import ParamsError
from wsss.model.losses import build_loss
from wsss.model.network import build_model
from wsss.paths import for_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_training_cfg):
    """Two segmentation epochs (1 and 2), each validated first."""
    tiny_training_cfg["train"].update(cls_epochs=1, epochs=3, val_every=1)
    return tiny_training_cfg


def read_tsv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("preset, expected", [
    ("voc", list(range(8, 31, 2))),   # the public loop: epochs 0..30, even ones validated, from epoch 7 on kept
    ("coco", list(range(8, 31, 2))),
    ("toy", [4, 6, 8, 10]),
])
def test_the_validated_epochs_are_the_even_segmentation_epochs(preset, expected):
    cfg = config.load([REPO / "params.yaml"], [f"data.name={preset}"])
    assert config.validation_epochs(cfg["train"]) == expected
    assert cfg["train"]["select"] == ("last" if preset == "toy" else "best")


def test_every_third_epoch_and_never():
    train = {"cls_epochs": 2, "epochs": 10, "val_every": 3}
    assert config.validation_epochs(train) == [3, 6, 9]
    assert config.validation_epochs({**train, "val_every": 0}) == []


@pytest.mark.parametrize("overrides", [
    ["train.val_every=0"],
    ["train.val_every=5", "presets.toy.train.cls_epochs=1", "presets.toy.train.epochs=5"],  # 5 is not before epoch 5
])
def test_select_best_with_nothing_validated_is_refused_naming_the_keys(overrides):
    with pytest.raises(ParamsError, match=r"'train.select' is 'best'.*'train.val_every'.*train.select=last"):
        config.load([REPO / "params.yaml"], ["presets.toy.train.select=best", *overrides])
    with pytest.raises(ParamsError, match=r"key 'train.select': 'first' is not allowed \(allowed: best, last\)"):
        config.load([REPO / "params.yaml"], ["presets.toy.train.select=first"])


def test_the_loss_is_the_mean_over_batches_of_the_training_batch_size(cfg):
    """The public code averages the batches' means: a last, smaller batch weighs as much as a full one."""
    cfg["train"]["batch_size"] = 16  # 24 validation images: batches of 16 and 8

    def loss_fn(out, raw, labels, seg_on, **extra):
        n = float(len(labels))
        return {"total": torch.tensor(n), "cls": torch.tensor(n / 2), "seg": torch.tensor(3 * n)}

    model = build_model(cfg, load_weights=False)
    losses = validation.validation_loss(model, loss_fn, validation.val_dataset(cfg), cfg, torch.device("cpu"))
    assert losses == {"val_loss": 12.0, "val_cls": 6.0, "val_seg": 36.0}  # (16 + 8) / 2, not (16 * 16 + 8 * 8) / 24
    assert validation.score(losses) == -11.0


def test_the_loss_is_deterministic_in_eval_mode_and_leaves_the_training_stream_alone(cfg, one_thread):
    model = build_model(cfg, load_weights=False)
    loss_fn = build_loss(cfg)
    data = validation.val_dataset(cfg)
    assert len(data) == 24 and data.split == "val"
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = validation.validation_loss(model, loss_fn, data, cfg, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before), "validation drew from the training's generator"
    assert not model.training
    again = validation.validation_loss(model, loss_fn, data, cfg, torch.device("cpu"))
    assert again == first and first["val_cls"] > 0
    assert first["val_loss"] == pytest.approx(first["val_cls"] + cfg["train"]["seg_weight"] * first["val_seg"])
    # the same crops whatever the batch size: 3 batches of 8 against one of 24, each a mean over its images
    cfg["train"]["batch_size"] = 24
    whole = validation.validation_loss(model, loss_fn, data, cfg, torch.device("cpu"))
    assert whole["val_cls"] == pytest.approx(first["val_cls"], rel=1e-5)
    model.train()
    cfg["train"]["batch_size"] = 8
    with torch.no_grad():
        images = torch.stack([data[i]["image"] for i in range(8)])
    assert model(images)["cls"].shape == (8, 10)


def scripted(monkeypatch, values: dict[int, float]) -> dict[int, dict]:
    """validation_loss returns ``values[epoch]`` as the loss; the weights it saw are kept per epoch."""
    seen: dict[int, dict] = {}
    epochs = iter(sorted(values))

    def fake(model, loss_fn, dataset, cfg, device, supervised=False, context=None):
        epoch = next(epochs)
        seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_loss": values[epoch], "val_cls": values[epoch] / 2, "val_seg": values[epoch] / 2}

    monkeypatch.setattr(trainer.validation, "validation_loss", fake)
    return seen


@pytest.mark.parametrize("select, losses, kept", [
    ("best", {1: 0.5, 2: 0.9}, 1),   # the lower loss
    ("best", {1: 0.9, 2: 0.5}, 2),
    ("best", {1: 0.7, 2: 0.7}, 1),   # a tie keeps the earlier: strictly higher score only
    ("last", {1: 0.5, 2: 0.9}, None),
])
def test_the_checkpoint_holds_the_selected_weights(cfg, tmp_path, monkeypatch, one_thread, select, losses, kept):
    cfg["train"]["select"] = select
    seen = scripted(monkeypatch, losses)
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.Phase("train", 1, 3), paths)
    state = checkpoint.load(paths.checkpoint("train"))
    assert sorted(seen) == [1, 2] and state["epoch"] == 3
    rows = read_tsv(paths.val_log("train"))
    assert list(rows[0]) == validation.VAL_COLUMNS
    assert [(int(r["epoch"]), float(r["val_loss"]), float(r["score"])) for r in rows] == \
        [(e, v, round(1 - v, 5)) for e, v in losses.items()]
    assert [int(r["step"]) for r in rows] == [0, 6]  # steps done before each validation
    assert [(r["epoch"], r["val_loss"], r["step"]) for r in state["val_log"]] == [(1, losses[1], 0), (2, losses[2], 6)]
    if kept is None:
        assert state["selected"] == {"rule": "last", "epoch": 3, "score": None}
        assert any(not torch.equal(state["model"][k], v) for k, v in seen[2].items() if v.is_floating_point()), \
            "the last weights are those after epoch 2's training, not those validated before it"
    else:
        assert state["selected"] == {"rule": "best", "epoch": kept, "score": 1 - losses[kept]}
        for name, tensor in seen[kept].items():
            assert torch.equal(state["model"][name], tensor), name
    assert paths.curve_figure("train").stat().st_size > 10_000
    assert not list(paths.state.iterdir()), "the state and the best weights are removed once the checkpoint is written"


def test_validating_changes_no_training_step(cfg, tmp_path, one_thread):
    """The validation's crops come from its own seeded generator: training with and without it is the same."""
    cfg["train"]["select"] = "last"
    runs = {}
    for every in (1, 0):
        cfg["train"]["val_every"] = every
        paths = for_config(cfg, tmp_path / f"every{every}")
        trainer.run(cfg, trainer.Phase("train", 1, 3), paths)
        runs[every] = checkpoint.load(paths.checkpoint("train"))
    assert len(runs[1]["val_log"]) == 2 and runs[0]["val_log"] == []
    for name, tensor in runs[0]["model"].items():
        assert torch.equal(runs[1]["model"][name], tensor), name
    strip = [{k: v for k, v in r.items() if k != "img_per_s"} for r in runs[0]["log"]]
    assert [{k: v for k, v in r.items() if k != "img_per_s"} for r in runs[1]["log"]] == strip


def test_a_run_killed_after_a_validation_resumes_to_the_same_selection(cfg, tmp_path, monkeypatch, capsys, one_thread):
    cfg["train"]["select"] = "best"
    phase = trainer.Phase("train", 1, 3)
    whole = for_config(cfg, tmp_path / "whole")
    trainer.run(cfg, phase, whole)
    expected = checkpoint.load(whole.checkpoint("train"))

    paths = for_config(cfg, tmp_path / "killed")
    run_killed_after_first_epoch(monkeypatch, cfg, phase, paths)
    (state_file,) = paths.state.glob("train-*.pt")  # the best weights so far travel in the state itself
    saved = checkpoint.load(state_file)
    assert saved["epoch"] == 2 and saved["best"]["epoch"] == 1 and set(saved["best_weights"]) == {"model"}
    trainer.run(cfg, phase, paths)
    assert "resuming train from " in capsys.readouterr().out
    resumed = checkpoint.load(paths.checkpoint("train"))
    assert resumed["selected"] == expected["selected"] and resumed["selected"]["rule"] == "best"
    assert resumed["val_log"] == expected["val_log"] and len(resumed["val_log"]) == 2
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def test_supervise_validates_on_the_ground_truth_masks(cfg, tmp_path, monkeypatch, one_thread):
    calls = []
    real = validation.validation_loss

    def spy(*args, **kwargs):
        calls.append(kwargs.get("supervised", args[5] if len(args) > 5 else False))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.validation, "validation_loss", spy)
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.Phase("supervise", 1, 3, supervised=True), paths)
    assert calls == [True, True]
    rows = read_tsv(paths.val_log("supervise"))
    assert len(rows) == 2 and all(float(r["val_seg"]) > 0 for r in rows)


def test_the_engines_declare_the_validation_keys_and_files():
    stages = config.load_mapping(REPO / "workflow" / "stages.yaml", "stages")
    for stage in ("train", "supervise"):
        assert {"train.val_every", "train.val_split", "train.select"} <= set(stages[stage]["params"])
    assert not {"train.val_every", "train.val_split", "train.select"} & set(stages["pretrain"]["params"])
    rule = (REPO / "workflow" / "rules" / "train.smk").read_text()
    assert 'validation="results/{dataset}/train_val.tsv"' in rule and "train_curve.png" in rule


def test_the_tiny_schedule_of_the_other_tests_validates_nothing():
    cfg = config.load([REPO / "params.yaml"], TINY_TRAINING)
    assert config.validation_epochs(cfg["train"]) == [] and cfg["train"]["select"] == "last"


def test_a_validation_list_missing_from_the_dataset_is_named_before_training(cfg, tmp_path, one_thread):
    cfg["train"]["val_split"] = "holdout"
    with pytest.raises(WsssError, match=r"holdout.txt: the validation list of key 'train.val_split' \('holdout'\) is not "
                                        r"in the dataset; name another list, or set train.val_every=0 and "
                                        r"train.select=last$"):
        trainer.run(cfg, trainer.Phase("train", 1, 3), for_config(cfg, tmp_path / "results"))
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.pt"))
