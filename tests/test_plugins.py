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
from wsss.model.layers import resize_to
from wsss.paths import for_config
from wsss.plugins import PLUGINS, PluginSet, Step, TrainingPlugin, build_plugins, check_plugins
from wsss.plugins.base import info_nce, top_fraction_mean
from wsss.plugins.fbr import FBR, FIFOBank, active_negatives, nrois
from wsss.plugins.rtc import (RTC, argmax_keep, compensate, max_norm, pixel_labels, prototype_nce, prototypes,
                              rtc_cam, top_fraction_mean_per_image)

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
    assert top_fraction_mean(torch.tensor([3.0]), 0.5).item() == 3.0
    assert top_fraction_mean(torch.zeros(0, requires_grad=True), 0.5).item() == 0.0
    for bad in (0, 1.5):
        with pytest.raises(WsssError, match=rf"^top_fraction_mean: fraction {bad} must lie in \(0, 1\]$"):
            top_fraction_mean(errors, bad)


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
    own = torch.stack([negatives, torch.tensor([[0.0, 1.0], [0.0, 1.0]])])  # anchor 1: two negatives equal to it
    own_second = -math.log(math.exp(0) / (math.exp(0) + 2 * math.exp(2)))
    assert info_nce(anchors, positives, own, 0.5).item() == pytest.approx((first + own_second) / 2)
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
    cam[0, 0] = torch.tensor([[0.0, 2.0]])  # class 0: image 0 pixel 1 (feature (5, 5)) first
    features = torch.tensor([[[[1.0, 5.0]], [[0.0, 5.0]]], [[[0.0, 5.0]], [[1.0, 5.0]]]])  # (2, D=2, 1, 2)
    protos = prototypes(cam, features, k=2)
    # class 1: the top 2 of (0.9, 0.1, 0.3, 0.0) are image 0 pixel 0 (feature (1, 0)) and image 1 pixel 0 ((0, 1))
    expected = torch.tensor([0.9, 0.3]) / 1.2
    assert torch.allclose(protos[1], expected / expected.norm())
    # class 0: 2.0 x (5, 5) and 0 x one of the others: the direction of (1, 1)
    assert torch.allclose(protos[0], torch.tensor([1.0, 1.0]) / 2 ** 0.5)
    assert prototypes(cam, features, k=1)[1].tolist() == [1.0, 0.0]  # the top position only


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


@pytest.mark.parametrize("grid", [2, 5])  # 2: fewer than 8 positions, the top one only
def test_rtc_terms_are_their_pieces_put_together(cfg, grid):
    """RTC.losses against the pieces tested above, composed as RTC's public code composes them."""
    from types import SimpleNamespace

    cfg["plugins"]["rtc"].update(enabled=True, proj_dim=4, proj_size=grid, temperature=0.5, cross_top=0.3,
                                 struct_top=0.7, contrast_bg=0.3)
    rtc = RTC(cfg, SimpleNamespace(backbone=SimpleNamespace(deep_channels=3)))
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def output(size, deep):
        return {"masks": torch.softmax(3 * torch.randn(2, 4, size, size, generator=g), 1).requires_grad_(),
                "features": {"deep": torch.randn(2, 3, deep, deep, generator=g)}}

    out1, out2 = output(12, 6), output(8, 4)
    terms = rtc.losses(Step(0, False, torch.zeros(1), torch.zeros(1), labels, {"crop": out1, "rtc_view": out2}))

    cam2 = rtc_cam(out2["masks"], labels)
    cam1 = rtc_cam(resize_to(out1["masks"], (8, 8)), labels)
    assert terms["equiv"][0].item() == pytest.approx((cam1[:, 1:] - cam2[:, 1:]).abs().mean().item(), rel=1e-6)
    cross = (top_fraction_mean_per_image(argmax_keep(cam2) - cam1, 0.3)
             + top_fraction_mean_per_image(argmax_keep(cam1) - cam2, 0.3))
    assert terms["cross"][0].item() == pytest.approx(cross.item(), rel=1e-6)

    def project(out):
        return torch.nn.functional.normalize(resize_to(rtc.projection(out["features"]["deep"]), (grid, grid)), dim=1)

    p1, p2 = project(out1), project(out2)
    s1, s2 = resize_to(cam1, (grid, grid)), resize_to(cam2, (grid, grid))
    k = {2: 1, 5: 3}[grid]  # the top HW/8 positions, at least one
    proto1, proto2 = prototypes(s1, p2, k), prototypes(s2, p1, k)
    a1, a2 = p1.permute(0, 2, 3, 1).reshape(-1, 4), p2.permute(0, 2, 3, 1).reshape(-1, 4)
    l1, l2 = pixel_labels(s1, 0.3).flatten(), pixel_labels(s2, 0.3).flatten()
    contrast = sum((prototype_nce(a, proto, lab, 0.5) + prototype_nce(b, other, lab2_, 0.5)) / 2
                   for a, proto, lab, b, other, lab2_ in [(a1, proto1, l1, a2, proto2, l2),
                                                          (a1, proto1, l2, a2, proto2, l1),
                                                          (a1, proto2, l1, a2, proto1, l2)])
    assert terms["contrast"][0].item() == pytest.approx(contrast.item(), rel=1e-5)
    struct = sum(top_fraction_mean_per_image(argmax_keep(rtc_cam(resize_to(compensate(s, p, labels, k), (8, 8)), labels))[:, 1:]
                                             - argmax_keep(c)[:, 1:], 0.7)
                 for s, p, c in [(s1, p1, cam1), (s2, p2, cam2)])
    assert terms["struct"][0].item() == pytest.approx(struct.item(), rel=1e-5)
    assert {name: w for name, (_, w) in terms.items()} == {
        "equiv": cfg["plugins"]["rtc"]["equiv_weight"], "cross": cfg["plugins"]["rtc"]["cross_weight"],
        "contrast": cfg["plugins"]["rtc"]["contrast_weight"], "struct": cfg["plugins"]["rtc"]["struct_weight"]}
    # gradients: the CAM terms reach the network's masks, the contrast the projection head
    for name, reaches in (("equiv", out1["masks"]), ("cross", out2["masks"]), ("struct", out1["masks"]),
                          ("contrast", rtc.projection.weight)):
        grad, = torch.autograd.grad(terms[name][0], reaches, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_top_fraction_mean_per_image_averages_each_image_s_hardest_errors():
    diff = torch.tensor([[[[-4.0, 1.0], [0.0, 2.0]]], [[[1.0, 1.0], [1.0, -8.0]]]])  # two images, 4 values each
    assert top_fraction_mean_per_image(diff, 0.5).item() == ((4 + 2) / 2 + (8 + 1) / 2) / 2


def test_the_rtc_view_is_the_crop_resized_to_a_square(cfg):
    from types import SimpleNamespace

    cfg["plugins"]["rtc"].update(enabled=True, view_size=20)
    rtc = RTC(cfg, SimpleNamespace(backbone=SimpleNamespace(deep_channels=3)))
    images, raw = torch.rand(2, 3, 32, 24), 255 * torch.rand(2, 3, 32, 24)
    views = rtc.extra_views(images, raw)
    assert list(views) == ["rtc_view"]
    view, view_raw = views["rtc_view"]
    assert view.shape == view_raw.shape == (2, 3, 20, 20)
    assert torch.equal(view, resize_to(images, (20, 20))) and torch.equal(view_raw, resize_to(raw, (20, 20)))
    assert rtc.projection.in_channels == 3 and rtc.projection.out_channels == cfg["plugins"]["rtc"]["proj_dim"]
    assert rtc.projection.kernel_size == (1, 1)


def test_the_compensator_adds_attention_weighted_top_values_of_present_classes_only():
    cam = torch.zeros(1, 4, 1, 2)
    cam[0, 0] = torch.tensor([[0.2, 0.4]])
    cam[0, 1] = torch.tensor([[0.0, 0.6]])
    cam[0, 2] = torch.tensor([[0.5, 0.5]])
    cam[0, 3] = torch.tensor([[1.0, 0.0]])
    present = torch.tensor([[1.0, 0.0, 1.0]])  # classes 1 and 3; class 2 and the background stay as they are
    features = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # identical directions: uniform attention
    out = compensate(cam, features, present, k=1)
    assert out[0, 3].tolist() == [[2.0, 1.0]]  # + the top value 1.0 at every position
    assert out[0, 1].tolist() == [[pytest.approx(0.6), pytest.approx(1.2)]]  # + its top value 0.6
    assert torch.equal(out[0, 2], cam[0, 2]) and torch.equal(out[0, 0], cam[0, 0])
    cam = cam[:, [0, 2, 3]]  # classes 2 and 3 of above as classes 1 and 2
    present = torch.tensor([[0.0, 1.0]])
    # features (3, 1) and (1, 2), both positions as keys: softmax over their cosines
    features = torch.tensor([[[[3.0, 1.0]], [[1.0, 2.0]]]])
    out = compensate(cam, features, present, k=2)
    unit = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    unit = unit / unit.norm(dim=1, keepdim=True)
    attention = torch.softmax(unit @ unit.t(), dim=1)
    assert out[0, 2, 0].tolist() == pytest.approx((torch.tensor([1.0, 0.0]) + attention @ torch.tensor([1.0, 0.0])).tolist())


def test_resize_is_bilinear_with_aligned_corners():
    x = torch.tensor([[[[0.0, 1.0]]]])
    assert resize_to(x, (1, 4)).flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert torch.equal(resize_to(x, (1, 2)), x)


def test_the_fifo_bank_keeps_order_and_wraps_around():
    bank = FIFOBank(size=4, dim=1)
    assert bank.next.dtype == bank.count.dtype == torch.int64  # positions and counts are exact integers
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


def test_nrois_of_one_seed_are_the_same_every_time():
    points = torch.rand(200, 2, generator=torch.Generator().manual_seed(3))  # no clusters: the seed decides
    assert torch.equal(nrois(points, clusters=8, seed=5), nrois(points, clusters=8, seed=5))


def test_active_negatives_follow_the_softmax_of_similarity_over_temperature():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.manual_seed(0)
    drawn = active_negatives(pool, torch.tensor([1.0, 0.0]), k=20000, temperature=0.5)
    share = (drawn[:, 0] == 1.0).float().mean().item()
    assert share == pytest.approx(math.exp(2) / (math.exp(2) + 1), abs=0.01)  # similarities 1 and 0, over 0.5
    assert drawn.shape == (20000, 2)


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
    # the boundaries: a score equal to bg_below is not background, one equal to fg_above is confident
    score = rtc_cam(masks, labels)[0, 3, 0]
    fbr.settings.update(bg_below=float(score[1]), fg_above=float(score[1]))
    _, background, confident = fbr.roles(masks, labels, (1, 4))
    assert background.tolist() == [[[True, False, False, True]]] and confident.tolist() == [[[False, True, True, False]]]


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


def hand_fbr(cfg, public=False):
    """FBR with identity heads (the projections are the deep features; the background head flips the
    first channel) and one NROI in its bank, on one image of 1 x 5 pixels: background, two uncertain
    pixels of class 1, a confident pixel of class 1, a confident pixel of class 2."""
    from types import SimpleNamespace

    cfg["plugins"]["fbr"].update(enabled=True, proj_dim=2, bg_below=0.2, fg_above=0.6, negatives=3, temperature=0.5,
                                 bank_size=64, clusters=8, public_code_contrast=public)
    fbr = FBR(cfg, SimpleNamespace(backbone=SimpleNamespace(deep_channels=2)))
    with torch.no_grad():
        for head in (fbr.fg_head, fbr.bg_head):
            head.weight.copy_(torch.eye(2)[:, :, None, None])
            head.bias.zero_()
        fbr.bg_head.weight[0, 0] = -1.0
    deep = torch.tensor([[[[0.5, 1.0, 0.2, 2.0, 0.0]], [[0.5, 0.5, 1.0, 0.0, 1.0]]]])  # (1, 2, 1, 5)
    masks = torch.zeros(1, 11, 1, 5)
    masks[0, 1] = torch.tensor([[0.1, 0.5, 0.3, 1.0, 0.0]])
    masks[0, 2] = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.7]])
    labels = torch.zeros(1, 10)
    labels[0, :2] = 1
    fbr.bank.push(torch.tensor([[0.6, -0.8]]))
    step = Step(0, False, torch.zeros(1), torch.zeros(1), labels, {"crop": {"masks": masks, "features": {"deep": deep}}})
    return fbr, step, deep[0, :, 0].t()  # the five projections, (5, 2)


def nce_by_hand(anchor, positive, negatives, t=0.5):
    pos = math.exp(float(anchor @ positive) / t)
    return -math.log(pos / (pos + sum(math.exp(float(anchor @ n) / t) for n in negatives)))


@pytest.mark.parametrize("public", [False, True])
def test_fbr_terms_by_hand_on_five_pixels(cfg, public):
    fbr, step, rows = hand_fbr(cfg, public)
    terms = fbr.losses(step)
    background = rows * torch.tensor([-1.0, 1.0])
    cosines = [abs(float(torch.nn.functional.cosine_similarity(a, b, dim=0))) for a, b in zip(rows, background)]
    # faithful: each pixel's projection normalised; the public code: each channel over the pixels
    unit = rows / rows.norm(dim=0 if public else 1, keepdim=True)
    prototype = unit[3] / unit[3].norm()  # class 1's only confident pixel
    negative = torch.tensor([0.6, -0.8])  # the bank's only NROI, drawn 3 times
    nroi = (nce_by_hand(unit[1], prototype, [negative] * 3) + nce_by_hand(unit[2], prototype, [negative] * 3)) / 2
    active = (nce_by_hand(unit[1], prototype, [unit[4]] * 3) + nce_by_hand(unit[2], prototype, [unit[4]] * 3)) / 2
    assert terms["decorrelate"][0].item() == pytest.approx(sum(cosines) / 5, rel=1e-5)
    assert terms["nroi"][0].item() == pytest.approx(nroi, rel=1e-5)
    assert terms["active"][0].item() == pytest.approx(active, rel=1e-5)
    assert [w for _, w in terms.values()] == [cfg["plugins"]["fbr"][k] for k in
                                             ("decorrelate_weight", "nroi_weight", "active_weight")]
    # the background pixel's NROI (one pixel: one cluster) joined the bank after it was used
    assert len(fbr.bank) == 2 and torch.allclose(fbr.bank.filled()[1], background[0] / background[0].norm(), atol=1e-6)


def test_fbr_without_uncertain_pixels_or_a_second_class_has_zero_contrast_terms(cfg):
    fbr, step, _ = hand_fbr(cfg)
    masks = step.outputs["crop"]["masks"]
    masks[0, 1] = torch.tensor([[0.1, 0.9, 0.8, 1.0, 0.0]])  # no uncertain pixel
    terms = fbr.losses(step)
    assert terms["nroi"][0].item() == 0.0 and terms["active"][0].item() == 0.0
    masks[0, 1] = torch.tensor([[0.1, 0.5, 0.3, 1.0, 0.0]])
    masks[0, 2] = 0.0  # class 2 is gone: no other class to draw foreground negatives from
    step.labels[0, 1] = 0
    terms = fbr.losses(step)
    assert terms["nroi"][0].item() > 0 and terms["active"][0].item() == 0.0


def test_fbr_terms_with_a_single_anchor(cfg):
    fbr, step, rows = hand_fbr(cfg)
    step.outputs["crop"]["masks"][0, 1] = torch.tensor([[0.1, 0.5, 0.8, 1.0, 0.0]])  # pixel 2 becomes confident
    terms = fbr.losses(step)
    assert terms["nroi"][0].item() > 0 and terms["active"][0].item() > 0


def test_fbr_clusters_the_directions_of_the_background_projections(cfg):
    """Four background pixels in two directions, each at two lengths: two NROIs, one per direction."""
    fbr, step, _ = hand_fbr(cfg)
    fbr.settings["clusters"] = 2
    deep = torch.tensor([[[[3.0, 30.0, 1.0, 10.0, 0.0]], [[1.0, 10.0, 3.0, 30.0, 1.0]]]])
    masks = torch.zeros(1, 11, 1, 5)
    masks[0, 2, 0, 4] = 1.0  # pixel 4: class 2; pixels 0-3: background
    labels = torch.zeros(1, 10)
    labels[0, 1] = 1
    step = Step(0, False, torch.zeros(1), torch.zeros(1), labels, {"crop": {"masks": masks, "features": {"deep": deep}}})
    fbr.losses(step)
    found = fbr.bank.filled()[1:]  # after the one NROI the bank started with
    directions = torch.tensor([[-3.0, 1.0], [-1.0, 3.0]]) / 10 ** 0.5  # the background head flips channel 0
    assert found.shape == (2, 2)
    assert torch.allclose(found[found[:, 1].argsort()], directions, atol=1e-5)


def test_fbr_draws_from_the_generator_only_for_an_image_with_background(cfg):
    fbr, step, _ = hand_fbr(cfg)
    step.outputs["crop"]["masks"][0, 1] = torch.tensor([[0.9, 0.9, 0.8, 1.0, 0.0]])  # no background, no uncertain
    state = torch.get_rng_state()
    fbr.losses(step)
    assert torch.equal(torch.get_rng_state(), state) and len(fbr.bank) == 1


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


class Recorder(NoOp):
    """Records what the trainer gives a plug-in at every step; asks for a half-size view."""

    name = "recorder"
    seen: list = []

    def extra_views(self, images, raw):
        return {"half": (images[:, :, ::2, ::2], raw[:, :, ::2, ::2])}

    def adjust_pseudo(self, pseudo, refined, labels):
        return torch.where(pseudo == 1, torch.full_like(pseudo, 255), pseudo)  # class 1 is never a pseudo-label

    def losses(self, step):
        Recorder.seen.append(step)
        return super().losses(step)


@pytest.mark.parametrize("stage", ["pretrain", "supervise"])
def test_the_trainer_gives_plugins_every_view_and_the_adjusted_pseudo_labels(cfg, tmp_path, monkeypatch, one_thread,
                                                                            stage):
    monkeypatch.setitem(PLUGINS, "recorder", Recorder)
    monkeypatch.setattr(Recorder, "seen", [])
    cfg["plugins"]["recorder"] = {"enabled": True}
    paths = for_config(cfg, tmp_path / "results")
    trainer.run(cfg, trainer.Phase(stage, 0, 2, supervised=stage == "supervise"), paths)  # epoch 1: segmentation on
    steps = Recorder.seen
    assert [s.epoch for s in steps] == [0] * 6 + [1] * 6 and [s.seg_on for s in steps] == [False] * 6 + [True] * 6
    for step in steps:
        assert step.images.shape == step.raw.shape == (8, 3, 32, 32) and step.labels.shape == (8, 10)
        assert 0.0 <= step.raw.min() and step.raw.max() <= 1.0 and step.images.min() < 0.0  # RGB, the normalised crop
        assert list(step.views) == ["half"] and step.views["half"][0].shape == (8, 3, 16, 16)
        assert torch.equal(step.views["half"][1], step.raw[:, :, ::2, ::2])
        assert set(step.outputs) == {"crop", "half"}
        assert step.outputs["half"]["logits"].dtype == torch.float32  # no autocast on a CPU
        assert step.outputs["half"]["masks"].shape[-2:] == (4, 4) and step.outputs["crop"]["masks"].shape[-2:] == (8, 8)
        if step.seg_on and stage == "pretrain":  # the weak loss: its pseudo-labels, adjusted by the plug-in
            assert step.pseudo.shape == (8, 32, 32) and step.refined.shape == (8, 11, 32, 32)
            assert not bool((step.pseudo == 1).any()) and bool((step.pseudo == 0).any())
        else:  # no pseudo-labels before the segmentation term, nor with the ground truth
            assert step.pseudo is None and step.refined is None


def test_train_continues_the_plugin_heads_and_state_of_pretrain(cfg, tmp_path, one_thread):
    cfg["plugins"]["fbr"].update(enabled=True, bank_size=96, bg_below=0.4, fg_above=0.6)
    paths = for_config(cfg, tmp_path / "results")
    from wsss.model.network import build_model

    torch.manual_seed(cfg["train"]["seed"])
    initial = build_plugins(cfg, build_model(cfg, load_weights=False)).state_dict()
    trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    pretrained = checkpoint.load(paths.checkpoint("pretrain"))["plugins"]
    assert not torch.equal(pretrained["plugins.fbr.fg_head.weight"], initial["plugins.fbr.fg_head.weight"])  # trained
    assert int(pretrained["plugins.fbr.bank.count"]) > 0
    cfg["train"]["epochs"] = cfg["train"]["cls_epochs"]  # a train phase of no epoch: what it starts from is saved
    trainer.run(cfg, trainer.phase_for("train", cfg, paths), paths)
    continued = checkpoint.load(paths.checkpoint("train"))["plugins"]
    assert continued.keys() == pretrained.keys()
    assert all(torch.equal(continued[k], pretrained[k]) for k in pretrained)


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


def test_a_section_without_a_registered_plugin_is_refused(cfg):
    cfg["plugins"]["foo"] = {"enabled": True}  # e.g. a schema section added, the registry line forgotten
    with pytest.raises(WsssError, match=r"^key 'plugins.foo': no such plug-in \(known: acr, fbr, flip_affinity, rtc, supportnet\)$"):
        check_plugins(cfg)
    cfg["plugins"]["foo"]["enabled"] = False
    assert check_plugins(cfg) == []


def test_two_plugins_may_not_name_a_view_alike():
    class View(NoOp):
        def extra_views(self, images, raw):
            return {"half": (images, raw)}

    class Crop(NoOp):
        name = "crop_view"

        def extra_views(self, images, raw):
            return {"crop": (images, raw)}

    other = type("OtherView", (View,), {"name": "other"})
    x = torch.zeros(1, 3, 4, 4)
    cfg = {"plugins": {"noop": {"enabled": True}, "other": {"enabled": True}, "crop_view": {"enabled": True}}}
    assert list(PluginSet([View(cfg, None)]).extra_views(x, x)) == ["half"]
    with pytest.raises(WsssError, match=r"^plug-in 'other': view name 'half' is already taken$"):
        PluginSet([View(cfg, None), other(cfg, None)]).extra_views(x, x)
    with pytest.raises(WsssError, match=r"^plug-in 'crop_view': view name 'crop' is already taken$"):
        PluginSet([Crop(cfg, None)]).extra_views(x, x)


def test_a_plugin_on_a_network_it_cannot_serve_is_refused_before_training(cfg, tmp_path):
    cfg["plugins"]["rtc"]["enabled"] = True
    cfg["model"]["method"] = "cam"
    with pytest.raises(WsssError, match=r"^key 'plugins.rtc.enabled': plug-in 'rtc' needs model.method in \['single_stage'\], not 'cam'$"):
        check_plugins(cfg)
    paths = for_config(cfg, tmp_path / "results")
    with pytest.raises(WsssError, match="plugins.rtc.enabled"):
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    assert not paths.run.exists() or not any(paths.run.iterdir())


def test_fbr_needs_the_single_stage_network_and_a_bank_for_a_batch_of_nrois(cfg):
    cfg["plugins"]["fbr"].update(enabled=True, bank_size=63)  # batch 8 x 8 clusters = 64
    with pytest.raises(WsssError, match=r"^key 'plugins.fbr.bank_size': 63 is smaller than one batch's NROIs "
                                        r"\(train.batch_size 8 x plugins.fbr.clusters 8 = 64\)$"):
        check_plugins(cfg)
    cfg["plugins"]["fbr"].update(bank_size=64, bg_below=0.6, fg_above=0.6)  # equal thresholds: no uncertain band
    check_plugins(cfg)
    cfg["plugins"]["fbr"].update(bg_below=0.7, fg_above=0.6)
    with pytest.raises(WsssError, match=r"^key 'plugins.fbr.bg_below' \(0.7\) must not exceed 'plugins.fbr.fg_above' "
                                        r"\(0.6\)$"):
        check_plugins(cfg)
    cfg["model"]["method"] = "cam"
    with pytest.raises(WsssError, match=r"^key 'plugins.fbr.enabled': plug-in 'fbr' needs model.method in \['single_stage'\], "
                                        r"not 'cam'$"):
        check_plugins(cfg)


def test_rtc_thresholds_in_the_wrong_order_are_refused(cfg):
    cfg["plugins"]["rtc"].update(enabled=True, pseudo_bg_low=0.55)  # equal thresholds: allowed
    check_plugins(cfg)
    cfg["plugins"]["rtc"].update(enabled=True, pseudo_bg_low=0.6)
    with pytest.raises(WsssError, match=r"^key 'plugins.rtc.pseudo_bg_low' \(0.6\) must not exceed 'plugins.rtc.pseudo_bg_high' \(0.55\)$"):
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
