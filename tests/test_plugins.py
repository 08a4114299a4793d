"""The training plug-in seam (wsss.plugins) and RTC: loss pieces on tensors small enough to compute
by hand, the seam's contract with the trainer, and the errors bad settings get."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wsss import config
from wsss.config import ParamsError
from wsss.engine import checkpoint, trainer
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.plugins import PLUGINS, PluginSet, Step, TrainingPlugin, build_plugins, check_plugins
from wsss.plugins.base import info_nce, top_fraction_mean
from wsss.plugins.fbr import FBR, FIFOBank, nrois
from wsss.plugins.rtc import (RTC, argmax_keep, compensate, max_norm, pixel_labels, prototype_nce, prototypes,
                              rtc_cam)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_training_cfg):
    return tiny_training_cfg


# ---- the loss pieces, by hand -------------------------------------------------------------------

def test_top_fraction_mean_averages_the_largest_errors():
    errors = torch.arange(1.0, 11.0).reshape(2, 5)
    assert top_fraction_mean(errors, 0.2).item() == (10 + 9) / 2
    assert top_fraction_mean(errors, 1.0).item() == 5.5
    assert top_fraction_mean(errors, 0.01).item() == 10.0  # at least one value
    with pytest.raises(WsssError, match="fraction 0"):
        top_fraction_mean(errors, 0)


def test_info_nce_with_known_similarities():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # shared by both anchors
    # anchor 0: positive 1, negatives 0 and -1; anchor 1: positive 0, negatives 1 and 0; temperature 0.5
    first = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    second = -math.log(math.exp(0) / (math.exp(0) + math.exp(2) + math.exp(0)))
    assert info_nce(anchors, positives, negatives, 0.5).item() == pytest.approx((first + second) / 2)
    per_anchor = negatives.expand(2, 2, 2)  # the same negatives given per anchor
    assert info_nce(anchors, positives, per_anchor, 0.5).item() == pytest.approx((first + second) / 2)
    empty = torch.zeros(0, 2, requires_grad=True)
    assert info_nce(empty, empty, negatives, 0.5).item() == 0.0


def test_prototype_nce_is_cross_entropy_over_all_prototypes():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    anchors = torch.tensor([[0.0, 1.0]])
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(0) + math.exp(1 / 0.5) + math.exp(-1 / 0.5)))
    assert prototype_nce(anchors, protos, torch.tensor([1]), 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_prototypes_are_cam_weighted_means_of_the_top_positions_over_the_batch():
    cam = torch.zeros(2, 2, 1, 2)  # two images of 1x2 pixels, two classes
    cam[0, 1] = torch.tensor([[0.9, 0.1]])
    cam[1, 1] = torch.tensor([[0.3, 0.0]])
    features = torch.tensor([[[[1.0, 5.0]], [[0.0, 5.0]]], [[[0.0, 5.0]], [[1.0, 5.0]]]])  # (2, D=2, 1, 2)
    protos = prototypes(cam, features, k=2)
    # class 1: the top 2 of (0.9, 0.1, 0.3, 0.0) are image 0 pixel 0 (feature (1, 0)) and image 1 pixel 0 ((0, 1))
    expected = torch.tensor([0.9, 0.3]) / 1.2
    assert torch.allclose(protos[1], expected / expected.norm())


def test_rtc_cam_and_its_pixel_labels():
    masks = torch.zeros(1, 3, 1, 3)
    masks[0, 1] = torch.tensor([[0.2, 0.4, 0.0]])
    masks[0, 2] = torch.tensor([[0.5, 0.1, 0.0]])  # absent from the labels: zeroed
    cam = rtc_cam(masks, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(cam[0, 1, 0], torch.tensor([0.5, 1.0, 0.0]), atol=1e-4)
    assert torch.all(cam[0, 2] == 0) and torch.allclose(cam[0, 0, 0], torch.tensor([0.5, 0.0, 1.0]), atol=1e-4)
    assert pixel_labels(cam, 0.55).tolist() == [[[0, 1, 0]]]
    assert pixel_labels(cam, 0.2).tolist() == [[[1, 1, 0]]]
    assert torch.equal(max_norm(torch.tensor([[[[-1.0, 2.0]]]])), torch.tensor([[[[0.0, 2.0 / (2.0 + 1e-5)]]]]))
    kept = argmax_keep(torch.tensor([[[[0.2]], [[0.7]], [[0.1]]]]))
    assert kept.flatten().tolist() == [0.0, pytest.approx(0.7), 0.0]


def test_rtc_pseudo_labels_keep_only_what_both_background_thresholds_agree_on(cfg):
    cfg["plugins"]["rtc"]["enabled"] = True
    from wsss.model.network import build_model

    rtc = RTC(cfg, build_model(cfg, load_weights=False))
    refined = torch.zeros(1, 11, 1, 3)
    refined[0, 1] = torch.tensor([[0.1, 0.4, 1.0]])  # max-normalised: 0.1, 0.4, 1.0
    labels = torch.zeros(1, 10)
    labels[0, 0] = 1
    pseudo = rtc.adjust_pseudo(torch.zeros(1, 1, 3, dtype=torch.long), refined, labels)
    # 0.1: background at both thresholds; 0.4: background at 0.55, class 1 at 0.2 -> ignored; 1.0: class 1
    assert pseudo.tolist() == [[[0, 255, 1]]]


def test_the_compensator_adds_attention_weighted_top_values_of_present_classes_only():
    cam = torch.zeros(1, 3, 1, 2)
    cam[0, 1] = torch.tensor([[1.0, 0.0]])
    cam[0, 2] = torch.tensor([[0.5, 0.5]])
    features = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # identical directions: uniform attention
    out = compensate(cam, features, torch.tensor([[1.0, 0.0]]), k=1)
    assert out[0, 1].tolist() == [[2.0, 1.0]]  # + the top value 1.0 at every position
    assert torch.equal(out[0, 2], cam[0, 2]) and torch.equal(out[0, 0], cam[0, 0])


def test_the_fifo_bank_keeps_order_and_wraps_around():
    bank = FIFOBank(size=4, dim=1)
    bank.push(torch.tensor([[1.0], [2.0], [3.0]]))
    assert len(bank) == 3 and bank.filled().flatten().tolist() == [1, 2, 3]
    bank.push(torch.tensor([[4.0], [5.0]]))  # 5 overwrites the oldest, 1
    assert len(bank) == 4 and bank.filled().flatten().tolist() == [2, 3, 4, 5]
    assert bank.items.flatten().tolist() == [5, 2, 3, 4] and int(bank.next) == 1
    restored = FIFOBank(size=4, dim=1)
    restored.load_state_dict(bank.state_dict())
    assert restored.filled().flatten().tolist() == [2, 3, 4, 5]
    torch.manual_seed(0)
    assert set(bank.sample(50).flatten().tolist()) == {2.0, 3.0, 4.0, 5.0}
    with pytest.raises(WsssError, match="5 items do not fit a bank of 4"):
        bank.push(torch.zeros(5, 1))


def test_nrois_are_the_centres_of_obvious_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    points = torch.cat([c + 0.01 * torch.randn(20, 3) for c in centres])
    found = nrois(points, clusters=3, seed=0)
    assert found.shape == (3, 3) and torch.allclose(found.norm(dim=1), torch.ones(3))
    order = found.argmax(1).sort().indices
    assert torch.allclose(found[order], centres, atol=0.02)
    assert nrois(points[:2], clusters=8, seed=0).shape == (2, 3)  # fewer points than clusters
    assert nrois(points[:0], clusters=8, seed=0).shape == (0, 3)


def fbr_plugin(cfg, **settings):
    from wsss.model.network import build_model

    cfg["plugins"]["fbr"].update(enabled=True, **settings)
    return FBR(cfg, build_model(cfg, load_weights=False))


def test_fbr_pixel_roles_follow_the_max_normalised_foreground(cfg):
    fbr = fbr_plugin(cfg, bg_below=0.2, fg_above=0.6)
    masks = torch.zeros(1, 11, 1, 4)
    masks[0, 3] = torch.tensor([[0.1, 0.5, 1.0, 0.0]])  # max-normalised: 0.1, 0.5, 1.0, 0
    labels = torch.zeros(1, 10)
    labels[0, 2] = 1  # class 3
    cls, background, confident = fbr.roles(masks, labels, (1, 4))
    assert background.tolist() == [[[True, False, False, True]]]
    assert confident.tolist() == [[[False, False, True, False]]]
    assert cls[0, 0, 2].item() == 3


def fbr_step(cfg, fbr):
    """One forward of the toy network on a fixed batch with two classes, as the trainer gives it to FBR."""
    from wsss.model.network import build_model

    torch.manual_seed(1)
    model = build_model(cfg, load_weights=False)
    images = torch.randn(4, 3, 64, 64)
    labels = torch.zeros(4, 10)
    labels[:, 1] = 1
    labels[:2, 4] = 1
    return Step(0, False, images, images, labels, {"crop": model(images)})


@pytest.mark.parametrize("public", [False, True])
def test_fbr_contrast_reaches_the_network_only_in_the_faithful_version(cfg, public):
    fbr = fbr_plugin(cfg, public_code_contrast=public, bg_below=0.4, fg_above=0.6)
    step = fbr_step(cfg, fbr)
    fbr.bank.push(torch.nn.functional.normalize(torch.randn(64, fbr.settings["proj_dim"]), dim=1))
    terms = fbr.losses(step)
    assert set(terms) == {"decorrelate", "nroi", "active"}
    assert [w for _, w in terms.values()] == [0.1, 0.03, 0.1]
    for name in ("nroi", "active"):
        value = terms[name][0]
        assert value.item() > 0, name
        assert value.requires_grad != public, name  # the public code's terms are constants
    assert terms["decorrelate"][0].requires_grad


def test_fbr_fills_its_bank_with_clusters_of_every_image(cfg):
    fbr = fbr_plugin(cfg, bg_below=0.4, fg_above=0.6, clusters=3)
    step = fbr_step(cfg, fbr)
    assert len(fbr.bank) == 0
    terms = fbr.losses(step)
    assert terms["nroi"][0].item() == 0.0  # an empty bank: nothing to contrast against yet
    background = fbr.roles(step.outputs["crop"]["masks"], step.labels,
                           tuple(step.outputs["crop"]["features"]["deep"].shape[-2:]))[1]
    per_image = background.flatten(1).sum(1)
    assert len(fbr.bank) == int(per_image.clamp(max=3).sum())
    assert torch.allclose(fbr.bank.filled().norm(dim=1), torch.ones(len(fbr.bank)))


# ---- the seam ------------------------------------------------------------------------------------

class NoOp(TrainingPlugin):
    """A plug-in that adds nothing: no head, no view, no state, a term of weight 0."""

    name = "noop"
    terms = ("nothing",)

    def losses(self, step: Step) -> dict:
        return {"nothing": (step.outputs["crop"]["cls"].sum() * 0.0, 0.0)}


def test_with_plugins_off_or_adding_nothing_training_is_bit_identical(cfg, tmp_path, monkeypatch, one_thread):
    off = for_config(cfg, tmp_path / "off")
    trainer.run(cfg, trainer.Phase("pretrain", 0, 2), off)  # epoch 1 has the segmentation term
    monkeypatch.setitem(PLUGINS, "noop", NoOp)
    with_noop = {**cfg, "plugins": {**cfg["plugins"], "noop": {"enabled": True}}}
    on = for_config(with_noop, tmp_path / "noop")
    trainer.run(with_noop, trainer.Phase("pretrain", 0, 2), on)
    a, b = checkpoint.load(off.checkpoint("pretrain")), checkpoint.load(on.checkpoint("pretrain"))
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]
    assert all(r["noop.nothing"] == 0.0 for r in b["log"]) and "noop.nothing" not in a["log"][0]
    assert off.train_log("pretrain").read_text().splitlines()[0].split("\t") == trainer.LOG_COLUMNS
    assert on.train_log("pretrain").read_text().splitlines()[0].split("\t") == trainer.LOG_COLUMNS + ["noop.nothing"]


def test_plugin_heads_are_new_layers_of_the_optimiser(cfg):
    from wsss.model.network import build_model
    from wsss.model.optim import build_optimizer

    cfg["plugins"]["rtc"]["enabled"] = True
    model = build_model(cfg, load_weights=False)
    plugins = build_plugins(cfg, model)
    groups = {g["name"]: g for g in build_optimizer(model, cfg, extra=plugins).param_groups}
    head = plugins.plugins["rtc"].projection
    assert any(p is head.weight for p in groups["new_weights"]["params"])
    assert any(p is head.bias for p in groups["new_biases"]["params"])
    assert groups["new_weights"]["lr"] == cfg["train"]["lr"] * cfg["train"]["lr_mults"][2]
    plain = {g["name"]: len(g["params"]) for g in build_optimizer(model, cfg).param_groups}
    assert plain["new_weights"] + 1 == len(groups["new_weights"]["params"])


def test_a_plugin_must_return_the_terms_it_declares():
    class Wrong(NoOp):
        def losses(self, step):
            return {"other": (torch.zeros(()), 1.0)}

    plugins = PluginSet([Wrong({"plugins": {"noop": {"enabled": True}}}, None)])
    with pytest.raises(WsssError, match=r"plug-in 'noop' returned terms \['other'\], not its declared \['nothing'\]"):
        plugins.losses(Step(0, False, torch.zeros(1), torch.zeros(1), torch.zeros(1)))


# ---- what bad input gets -------------------------------------------------------------------------

def test_an_unknown_plugin_key_is_refused_naming_it(tmp_path):
    with pytest.raises(ParamsError, match="unknown key 'plugins.foo.enabled'"):
        config.load([REPO / "params.yaml"], ["plugins.foo.enabled=true"])
    with pytest.raises(ParamsError, match="unknown key 'plugins.rtc.view_sise'"):
        config.load([REPO / "params.yaml"], ["plugins.rtc.view_sise=64"])
    overlay = tmp_path / "overlay.yaml"  # a params file of the user's
    overlay.write_text("plugins:\n  foo:\n    enabled: true\n")
    with pytest.raises(ParamsError, match="plugins.foo"):
        config.load([REPO / "params.yaml", overlay])


def test_a_plugin_on_a_network_it_cannot_serve_is_refused_before_training(cfg, tmp_path):
    cfg["plugins"]["rtc"]["enabled"] = True
    cfg["model"]["method"] = "cam"
    with pytest.raises(WsssError, match=r"key 'plugins.rtc.enabled': plug-in 'rtc' needs model.method single_stage"):
        check_plugins(cfg)
    paths = for_config(cfg, tmp_path / "results")
    with pytest.raises(WsssError, match="plugins.rtc.enabled"):
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert not paths.run.exists() or not any(paths.run.iterdir())


def test_fbr_needs_the_single_stage_network_and_a_bank_for_a_batch_of_nrois(cfg):
    cfg["plugins"]["fbr"].update(enabled=True, bank_size=63)  # batch 8 x 8 clusters = 64
    with pytest.raises(WsssError, match=r"key 'plugins.fbr.bank_size': 63 is smaller than one batch's NROIs "
                                        r"\(train.batch_size 8 x plugins.fbr.clusters 8 = 64\)"):
        check_plugins(cfg)
    cfg["plugins"]["fbr"]["bank_size"] = 64
    check_plugins(cfg)
    cfg["model"]["method"] = "cam"
    with pytest.raises(WsssError, match=r"key 'plugins.fbr.enabled': plug-in 'fbr' needs model.method single_stage, "
                                        r"not 'cam'"):
        check_plugins(cfg)


def test_rtc_thresholds_in_the_wrong_order_are_refused(cfg):
    cfg["plugins"]["rtc"].update(enabled=True, pseudo_bg_low=0.6)
    with pytest.raises(WsssError, match=r"'plugins.rtc.pseudo_bg_low' \(0.6\) must not exceed 'plugins.rtc.pseudo_bg_high'"):
        check_plugins(cfg)


def test_train_refuses_a_pretrain_checkpoint_made_with_other_plugins(cfg, tmp_path, one_thread):
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    cfg["plugins"]["rtc"].update(enabled=True, view_size=40)
    with pytest.raises(WsssError, match=r"under other parameters \(plugins.rtc.enabled: input made with False, params give "
                                        r"True; plugins.rtc.view_size: input made with 128, params give 40\)"):
        trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)


def test_the_worked_example_of_docs_plugins_md_trains(cfg, tmp_path, monkeypatch, one_thread):
    import re

    source = re.search(r"```python\n(.*?)```", (REPO / "docs" / "plugins.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(source, "docs/plugins.md", "exec"), namespace)
    monkeypatch.setitem(PLUGINS, "score_consistency", namespace["ScoreConsistency"])
    cfg["plugins"]["score_consistency"] = {"enabled": True, "weight": 0.1}
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    rows = checkpoint.load(paths.checkpoint("pretrain"))["log"]
    assert rows and all(r["score_consistency.agree"] > 0 for r in rows)
    assert all(r["loss"] > r["cls"] for r in rows)  # the weighted term is part of the loss
