"""Checkpoints: what a wsss checkpoint is, who made it, what it was made for, and exact RNG restore."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss import config
from wsss.engine import checkpoint
from wsss.errors import WsssError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return config.load([REPO / "params.yaml"])


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_restores_every_generator_exactly():
    checkpoint.seed_everything(3)
    draws()
    state = checkpoint.rng_state()
    expected = draws()
    draws()
    checkpoint.set_rng_state(state)
    assert draws() == expected
    assert set(state) == {"python", "numpy", "torch"}  # no CUDA here


def test_rng_state_carries_the_cuda_generators_when_there_are_some(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0-state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = checkpoint.rng_state()
    assert state["cuda"] == ["gpu0-state"]
    checkpoint.set_rng_state(state)
    assert restored == [["gpu0-state"]]


def test_a_cpu_state_restores_on_a_machine_with_cuda(monkeypatch):
    state = checkpoint.rng_state()  # written where there is no GPU: no "cuda" entry
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("no CUDA state to restore"))
    checkpoint.set_rng_state(state)


def test_seed_everything_seeds_python_numpy_and_torch():
    checkpoint.seed_everything(11)
    first = draws()
    draws()
    checkpoint.seed_everything(11)
    assert draws() == first
    checkpoint.seed_everything(12)
    assert all(a != b for a, b in zip(draws(), first))


def test_what_counts_as_a_wsss_checkpoint(tmp_path):
    assert checkpoint.is_wsss({"model": {}, "signature": {}})
    assert not checkpoint.is_wsss({"signature": {}})
    assert not checkpoint.is_wsss({"model": {}})
    assert not checkpoint.is_wsss(["model", "signature"])
    path = tmp_path / "weights.pth"
    checkpoint.save(path, {"state_dict": {}})
    with pytest.raises(WsssError, match=r"checkpoint .*weights\.pth is not a wsss checkpoint \(no 'model'/'signature' entries\)"):
        checkpoint.load(path)
    with pytest.raises(WsssError, match=r"checkpoint not found: .*missing\.pt"):
        checkpoint.load(tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WsssError, match=r"checkpoint .*broken\.pt is unreadable or corrupt"):
        checkpoint.read(tmp_path / "broken.pt")


def test_made_by_reads_the_record_then_falls_back_on_the_schedule(cfg):
    cls_epochs = cfg["train"]["cls_epochs"]
    assert checkpoint.made_by({"stage": "supervise", "supervised": False}) == "supervise"
    assert checkpoint.made_by({"supervised": True, "epoch": cls_epochs, "config": cfg}) == "supervise"
    assert checkpoint.made_by({"epoch": cls_epochs, "config": cfg}) == "pretrain"
    assert checkpoint.made_by({"epoch": cls_epochs + 1, "config": cfg}) == "train"
    assert checkpoint.made_by({"epoch": cls_epochs}) == "train"


def test_check_made_by_names_the_stage_and_the_keys(cfg):
    state = {"stage": "train", "config": cfg}
    with pytest.raises(WsssError, match=r"checkpoint c\.pt was written by `wsss train`, not by `wsss pretrain`"):
        checkpoint.check_made_by(state, cfg, "c.pt", "pretrain")
    checkpoint.check_made_by(state, cfg, "c.pt")  # whichever stage it records
    checkpoint.check_made_by({"stage": "train"}, cfg, "c.pt", "train")  # no recorded configuration: nothing to compare
    other = config.load([REPO / "params.yaml"], ["model.psi=0.5"])
    with pytest.raises(WsssError, match=r"model\.psi"):
        checkpoint.check_made_by({"stage": "train", "config": other}, cfg, "c.pt", "train")


def test_check_signature_lists_every_difference(cfg):
    state = {"signature": checkpoint.model_signature(cfg)}
    checkpoint.check_signature(state, cfg, "c.pt")
    assert state["signature"] == {"dataset": "toy", "num_classes": cfg["data"]["toy"]["num_classes"] + 1,
                                  "model": cfg["model"]}
    other = config.load([REPO / "params.yaml"], ["model.fca=false", "data.toy.num_classes=5"])
    with pytest.raises(WsssError) as err:
        checkpoint.check_signature({"signature": checkpoint.model_signature(other)}, cfg, "c.pt")
    n = cfg["data"]["toy"]["num_classes"] + 1
    assert str(err.value) == (
        f"checkpoint c.pt was made for a different model configuration (num_classes: checkpoint 6, params {n}; "
        "model.fca: checkpoint False, params True); re-run the stages that make it with the current params")


def test_check_signature_names_keys_only_one_side_has(cfg):
    theirs = checkpoint.model_signature(cfg)
    theirs["model"] = dict(theirs["model"], extra_key=1)
    del theirs["model"]["fca"]
    with pytest.raises(WsssError) as err:
        checkpoint.check_signature({"signature": theirs}, cfg, "c.pt")
    assert "(model.extra_key: checkpoint 1, params None; model.fca: checkpoint None, params True)" in str(err.value)
    bare = {k: v for k, v in checkpoint.model_signature(cfg).items() if k != "model"}
    with pytest.raises(WsssError, match=r"model\.fca: checkpoint None, params True"):
        checkpoint.check_signature({"signature": bare}, cfg, "c.pt")
