"""Optimiser groups: pretrained/new x weights/biases, LR multipliers, weight decay on weights only."""

from __future__ import annotations

import pytest
import torch

from wsss import config
from wsss.model.network import build_model
from wsss.model.optim import GROUP_NAMES, build_optimizer, param_groups

PARAMS = config.REPO_ROOT / "params.yaml"


def load_cfg(*overrides: str) -> dict:
    return config.load([PARAMS], overrides)


def test_wr38_groups_follow_the_preset():
    cfg = load_cfg("data.name=voc")
    with torch.device("meta"):
        model = build_model(cfg, load_weights=False)
    groups = param_groups(model, cfg)
    assert [g["name"] for g in groups] == list(GROUP_NAMES)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-3, 20e-3, 40e-3])
    assert [g["lr_mult"] for g in groups] == [1, 2, 20, 40]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]

    names = {id(p): n for n, p in model.named_parameters()}
    members = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    # frozen BNs: the backbone has no trainable biases at all
    assert members["pretrained_biases"] == []
    assert all(n.startswith("backbone.") and n.endswith("weight") for n in members["pretrained_weights"])
    assert not any(n.startswith(("backbone.conv1a", "backbone.b2.", "backbone.b2_1", "backbone.b2_2"))
                   for n in members["pretrained_weights"])
    assert not any(".bn_" in n or "bn7" in n for n in members["pretrained_weights"])
    assert all(not n.startswith("backbone.") for n in members["new_weights"] + members["new_biases"])
    assert all(n.endswith("bias") for n in members["new_biases"])
    assert any(n.startswith("context.") for n in members["new_weights"])
    assert any(n.startswith("fusion.") for n in members["new_biases"])

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    grouped = [n for ns in members.values() for n in ns]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable


def test_toy_groups_with_a_trainable_backbone():
    cfg = load_cfg()
    model = build_model(cfg, load_weights=False)
    groups = param_groups(model, cfg)
    assert [g["lr_mult"] for g in groups] == [1, 2, 1, 2]
    sizes = {g["name"]: len(g["params"]) for g in groups}
    assert all(sizes[name] > 0 for name in GROUP_NAMES)    # BN biases of the backbone are trainable here
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_build_optimizer():
    cfg = load_cfg("train.lr=0.05", "train.momentum=0.8", "train.weight_decay=0.001", "model.method=cam")
    model = build_model(cfg, load_weights=False)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.05
    assert all(g["momentum"] == 0.8 for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.001, 0.0, 0.001, 0.0]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.1, 0.05, 0.1])
    # the CAM classifier is new and bias-free: an empty group is fine
    assert len(opt.param_groups[3]["params"]) == 0
    model(torch.randn(2, 3, 32, 32))["cls"].sum().backward()
    opt.step()
