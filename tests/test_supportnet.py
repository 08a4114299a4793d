"""MainNet / SupportNet (wsss.plugins.supportnet) and its EMA teacher (wsss.plugins.teacher), on
hand-sized tensors, then on the toy network."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss import config
from wsss.errors import WsssError
from wsss.model.network import build_model
from wsss.model.optim import build_optimizer
from wsss.plugins import PluginSet, Step, build_plugins
from wsss.model.layers import resize_to
from wsss.plugins.rtc import rtc_cam
from wsss.plugins.supportnet import SupportNet, fused_target, mam_loss, rcm_loss, region_prototypes, regions
from wsss.plugins.teacher import EMATeacher

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the EMA teacher

def test_the_teacher_moves_by_the_momentum_and_copies_buffers():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = EMATeacher(student, 0.9)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    teacher.update(student)
    for t, old, s in zip(teacher.module.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * old + 0.1 * s)
    assert torch.equal(teacher.module[1].running_mean, torch.full((2,), 3.0))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_teacher_stays_in_evaluation_mode_and_gives_no_gradient():
    student = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9))
    teacher = EMATeacher(student, 0.5)
    holder = nn.ModuleDict({"teacher": teacher})
    holder.train()
    assert not teacher.training and not teacher.module[1].training
    x = torch.ones(4, 3, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad and torch.equal(out, teacher(x))  # no dropout: the same every time


@pytest.mark.parametrize("momentum", [0.0, 1.0, 1.5, -0.1])
def test_a_momentum_outside_zero_one_is_refused(momentum):
    with pytest.raises(WsssError, match=f"key 'momentum': teacher momentum {momentum} must lie strictly between 0 and 1"):
        EMATeacher(nn.Linear(1, 1), momentum)
    raw = config.load_raw([REPO / "params.yaml"])
    raw["plugins"]["supportnet"]["momentum"] = momentum
    with pytest.raises(config.ParamsError, match="key 'plugins.supportnet.momentum'"):
        config.resolve(raw)


def test_the_plugin_s_own_check_names_its_keys():
    cfg = config.load([REPO / "params.yaml"], ["plugins.supportnet.enabled=true"])
    cfg["plugins"]["supportnet"]["momentum"] = 1.0  # past the schema, as a hand-made configuration would be
    with pytest.raises(WsssError, match="key 'plugins.supportnet.momentum': teacher momentum 1.0 must lie"):
        SupportNet.check(cfg)
    cfg["plugins"]["supportnet"].update(momentum=0.99, mam_scales=[])
    with pytest.raises(WsssError, match="^key 'plugins.supportnet.mam_scales': at least one scale$"):
        SupportNet.check(cfg)


# ------------------------------------------------------------------ RCM and MAM by hand

def test_regions_are_the_arg_max_class_from_the_threshold_on():
    cam = torch.tensor([[[[0.9, 0.2, 0.1, 0.3, 0.0]], [[0.1, 0.7, 0.4, 0.2, 0.5]],
                         [[0.0, 0.1, 0.8, 0.35, 0.25]]]])  # (1, 3, 1, 5)
    assert regions(cam, 0.5).tolist() == [[[0, 1, 2, -1, 1]]]  # the last pixel's 0.5 is the threshold itself


def test_prototypes_are_normalised_means_over_each_region_of_the_batch():
    features = torch.tensor([[[[1.0, 3.0, 0.0]], [[0.0, 0.0, 2.0]]],
                             [[[1.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]]]])  # (2, 2, 1, 3)
    region = torch.tensor([[[0, 0, 2]], [[2, -1, -1]]])
    classes, protos = region_prototypes(features, region)
    assert classes.tolist() == [0, 2]
    assert torch.allclose(protos[0], torch.tensor([1.0, 0.0]))  # mean of (1, 0) and (3, 0)
    assert torch.allclose(protos[1], F.normalize(torch.tensor([0.5, 2.0]), dim=0))  # mean of (0, 2) and (1, 2)
    classes, protos = region_prototypes(features, torch.full_like(region, -1))  # no region anywhere
    assert classes.tolist() == [] and protos.shape == (0, 2)


def test_rcm_is_the_infonce_of_each_region_pixel_against_the_prototypes():
    teacher = F.normalize(torch.tensor([[[[1.0, 0.0, 0.2]], [[0.0, 1.0, 1.0]]]]), dim=1)  # (1, 2, 1, 3)
    student = F.normalize(torch.tensor([[[[0.8, 0.6, 0.0]], [[0.6, 0.8, 1.0]]]]), dim=1)
    region = torch.tensor([[[0, 1, 1]]])
    t = 0.1
    protos = [teacher[0, :, 0, 0], F.normalize(teacher[0, :, 0, 1:].mean(1), dim=0)]
    expected = 0.0
    for pixel, cls in enumerate([0, 1, 1]):
        sims = torch.stack([student[0, :, 0, pixel] @ p for p in protos]) / t
        expected += -torch.log_softmax(sims, 0)[cls]
    assert torch.allclose(rcm_loss(student, teacher, region, t), expected / 3, atol=1e-6)
    # one prototype only: nothing to contrast against
    assert rcm_loss(student, teacher, torch.tensor([[[1, 1, -1]]]), t).item() == 0.0


def test_the_fused_target_averages_the_scales_at_the_network_s_size():
    small = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    large = torch.tensor([[[[1.0, 1.0, 1.0, 1.0]]]])  # (1, 1, 1, 4)
    target = fused_target([small, large], (1, 4))
    assert torch.allclose(target, torch.tensor([[[[0.5, 2 / 3, 5 / 6, 1.0]]]]))  # aligned corners: 0, 1/3, 2/3, 1


def test_mam_weights_each_pixel_by_the_dissimilarity_of_the_class_vectors():
    student = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): pixel 0 (1, 0), pixel 1 (1, 1)
    target = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]]]])  # pixel 0 (0, 1): orthogonal; pixel 1 (2, 2): parallel
    # pixel 0: weight 1, |S - T| = 1 + 1; pixel 1: weight 0
    assert torch.allclose(mam_loss(student, target), torch.tensor(2.0 / 4))
    # S (1, 1) against T (1, 0): weight 1 - 1/sqrt(2), |S - T| = 0 + 1 (not |S + T| = 2 + 1)
    s, t = torch.tensor([[[[1.0]], [[1.0]]]]), torch.tensor([[[[1.0]], [[0.0]]]])
    assert torch.allclose(mam_loss(s, t), torch.tensor((1 - 2 ** -0.5) * 1.0 / 2))
    # vectors shorter than 1: the cosine is still the cosine (eps only guards a zero vector)
    assert torch.allclose(mam_loss(0.3 * s, 0.3 * t), torch.tensor((1 - 2 ** -0.5) * 0.3 / 2))
    s = student.clone().requires_grad_(True)
    mam_loss(s, target).backward()
    assert s.grad[0, :, 0, 1].abs().max() < 1e-6 and s.grad[0, 0, 0, 0] > 0  # pulled toward the target


# ------------------------------------------------------------------ the plug-in on the toy network

@pytest.fixture
def toy(one_thread):
    cfg = config.load([REPO / "params.yaml"], ["plugins.supportnet.enabled=true", "plugins.supportnet.momentum=0.5",
                                                "plugins.supportnet.mam_scales=[0.5,1.0,2.0]"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    plugins = build_plugins(cfg, model)
    return cfg, model, plugins


def test_the_teacher_is_state_not_trained_and_follows_the_optimiser_steps(toy):
    cfg, model, plugins = toy
    plugin = plugins.plugins["supportnet"]
    optimizer = build_optimizer(model, cfg, extra=plugins)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in trained for p in plugin.teacher.parameters())
    assert all(id(p) in trained for p in plugin.head.parameters())
    assert any(k.startswith("plugins.supportnet.teacher.module.") for k in plugins.state_dict())
    first = copy.deepcopy(plugin.teacher.module.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    plugins.after_step(model)
    for name, p in plugin.teacher.module.named_parameters():
        assert torch.allclose(p, 0.5 * first[name] + 0.5 * dict(model.named_parameters())[name]), name


def test_the_terms_are_finite_and_reach_the_network_and_the_head(toy):
    cfg, model, plugins = toy
    model.train()
    plugins.train()
    images = torch.randn(2, 3, 48, 48)
    labels = torch.tensor([[1.0] + [0.0] * 9, [0.0, 1.0] + [0.0] * 8])
    out = model(images)
    step = Step(0, False, images, images, labels, {"crop": out})
    terms = plugins.losses(step)
    assert set(terms) == {"supportnet.rcm", "supportnet.mam"}
    assert all(math.isfinite(float(v.detach())) for v, _ in terms.values())
    assert [w for _, w in terms.values()] == [0.1, 0.1]
    PluginSet.total(terms).backward()
    plugin = plugins.plugins["supportnet"]
    assert plugin.head.weight.grad is not None and plugin.head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in plugin.teacher.parameters())


def test_the_terms_are_rcm_and_mam_of_the_teacher_s_views_and_the_normalised_projections(one_thread):
    cfg = config.load([REPO / "params.yaml"], ["plugins.supportnet.enabled=true", "plugins.supportnet.momentum=0.5",
                                                "plugins.supportnet.mam_scales=[0.5,1.0,1.5]",
                                                "plugins.supportnet.region_threshold=0.3"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    plugin = build_plugins(cfg, model).plugins["supportnet"]
    with torch.no_grad():  # a teacher different from the network, so that the two roles cannot be swapped unseen
        for p in plugin.teacher.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in plugin.teacher_head.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sizes = []
    plugin.teacher.module.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[2:])))
    images = torch.randn(2, 3, 42, 40)  # not square, and half of 42 x 1.5 is not a whole number of pixels
    labels = torch.tensor([[1.0, 0.0, 1.0] + [0.0] * 7, [0.0, 1.0] + [0.0] * 8])
    out = model(images)
    terms = plugin.losses(Step(0, False, images, images, labels, {"crop": out}))
    assert sizes == [(21, 20), (42, 40), (63, 60)]  # round(H * s) x round(W * s), the crop's own run reused

    def unit(x):  # L2-normalised along the channels, written out
        return x / x.pow(2).sum(1, keepdim=True).sqrt()

    with torch.no_grad():
        views = [F.interpolate(images, size=size, mode="bilinear", align_corners=False) if size != (42, 40) else images
                 for size in sizes]
        teacher_out = [plugin.teacher.module(v) for v in views]
        deep = out["features"]["deep"]
        student = unit(plugin.head(deep))
        teacher = unit(plugin.teacher_head.module(teacher_out[1]["features"]["deep"]))
        t_cam = resize_to(rtc_cam(teacher_out[1]["masks"], labels), tuple(deep.shape[2:]))
        region = regions(t_cam, 0.3)
        assert (region >= 0).any() and len(region[region >= 0].unique()) >= 2  # a real contrast
        mine = rtc_cam(out["masks"], labels)[:, 1:]
        target = torch.stack([resize_to(rtc_cam(o["masks"], labels)[:, 1:], tuple(mine.shape[2:]))
                              for o in teacher_out]).mean(0)
        assert torch.allclose(terms["rcm"][0], rcm_loss(student, teacher, region, 0.1), atol=1e-5)
        assert torch.allclose(terms["mam"][0], mam_loss(mine, target), atol=1e-6)


class ViewRecorder(nn.Module):
    """A stand-in teacher: records each view's size and answers masks that say which view it was."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.sizes = classes, []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[2:]))
        masks = torch.full((x.shape[0], self.classes, *x.shape[2:]), float(len(self.sizes)))
        return {"masks": masks, "features": {"deep": x}}


@pytest.mark.parametrize("scales, sizes, crop_call", [
    ([0.01, 1.0], [(1, 1), (42, 40)], 2),  # a view never shrinks below one pixel
    ([0.5, 1.5], [(21, 20), (63, 60), (42, 40)], 3),  # no scale 1: the crop's own run is made after the views
])
def test_the_teacher_s_views_and_its_run_on_the_crop(one_thread, scales, sizes, crop_call):
    cfg = config.load([REPO / "params.yaml"], ["plugins.supportnet.enabled=true",
                                                f"plugins.supportnet.mam_scales={scales}"])
    plugin = build_plugins(cfg, build_model(cfg, load_weights=False)).plugins["supportnet"]
    plugin.teacher = ViewRecorder(config.num_classes(cfg))
    images = torch.randn(2, 3, 42, 40)
    cams, crop = plugin.teacher_cams(images, torch.ones(2, config.num_classes(cfg) - 1))
    assert plugin.teacher.sizes == sizes and len(cams) == len(scales)
    assert [tuple(c.shape[2:]) for c in cams] == sizes[:len(scales)]
    assert crop["features"]["deep"] is images and crop["masks"][0, 0, 0, 0].item() == crop_call
