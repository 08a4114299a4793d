import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from wsss import config
from wsss.errors import WsssError
from wsss.model.losses import (
    CAMLoss,
    SingleStageLoss,
    SupervisedLoss,
    balanced_class_weights,
    balanced_seg_loss,
    build_loss,
    check_label_values,
    class_pixel_counts,
    upsample,
    valid_images,
)
from wsss.model.pamr import PAMR
from wsss.model.scores import classification_loss

PARAMS = config.REPO_ROOT / "params.yaml"


def load_cfg(*overrides: str) -> dict:
    return config.load([PARAMS], overrides=list(overrides))


def test_balanced_weights_hand_computed():
    pseudo = torch.tensor([[[0, 0, 1], [1, 255, 0]]])
    counts = class_pixel_counts(pseudo, num_classes=2)
    assert counts.tolist() == [[3.0, 2.0]]
    # N = 5 labelled pixels: background (5 - 3) / 6, class 1 (5 - 2) / 6
    assert torch.allclose(balanced_class_weights(counts), torch.tensor([[1 / 3, 1 / 2]]))

    logits = torch.zeros(1, 2, 2, 3)  # every labelled pixel has CE = ln 2
    loss, valid = balanced_seg_loss(logits, pseudo, torch.tensor([[1.0]]))
    assert valid.tolist() == [True]
    # mean over all 6 pixels: (3 * 1/3 + 2 * 1/2) * ln 2 / 6
    assert loss.item() == pytest.approx(2 * math.log(2) / 6, rel=1e-6)


def test_balanced_loss_against_per_pixel_sum():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    pseudo = torch.tensor([[[0, 2], [2, 255]]])
    loss, _ = balanced_seg_loss(logits, pseudo, torch.tensor([[0.0, 1.0]]))
    logp = logits.log_softmax(1)[0]
    weights = {0: (3 - 1) / 4, 2: (3 - 2) / 4}
    pixels = [(0, 0, 0), (0, 1, 2), (1, 0, 2)]
    expected = sum(-weights[c] * logp[c, y, x] for y, x, c in pixels) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_image_validity_rule():
    pseudo = torch.tensor(
        [
            [[0, 1], [1, 255]],  # labels {1}: classes {bg, 1} -> valid
            [[0, 1], [1, 0]],  # labels {1, 2}: class 2 missing -> invalid
            [[1, 1], [1, 255]],  # labels {1}: no background -> invalid
            [[0, 1], [2, 0]],  # labels {2}: class 1 is not an image label -> invalid
        ]
    )
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    counts = class_pixel_counts(pseudo, 3)
    assert valid_images(counts, labels).tolist() == [True, False, False, False]

    logits = torch.zeros(4, 3, 2, 2)
    loss, valid = balanced_seg_loss(logits, pseudo, labels)
    assert valid.tolist() == [True, False, False, False]
    first, _ = balanced_seg_loss(logits[:1], pseudo[:1], labels[:1])
    assert loss.item() == pytest.approx(first.item())
    batch_mean, _ = balanced_seg_loss(logits, pseudo, labels, reduction="batch")
    assert batch_mean.item() == pytest.approx(first.item() / 4)


def test_no_valid_image_gives_zero_with_a_gradient_path():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    pseudo = torch.tensor([[[0, 1], [1, 0]]])
    loss, valid = balanced_seg_loss(logits, pseudo, torch.tensor([[1.0, 1.0]]))
    assert valid.tolist() == [False]
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradients_reach_labelled_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    pseudo = torch.tensor([[[0, 1], [255, 1]]])
    loss, _ = balanced_seg_loss(logits, pseudo, torch.tensor([[1.0]]))
    loss.backward()
    grad = logits.grad.abs().sum(1)[0]
    assert (grad[pseudo[0] != 255] > 0).all()
    assert grad[1, 0] == 0


def test_bad_pseudo_values_and_reduction():
    logits = torch.zeros(1, 2, 1, 2)
    with pytest.raises(WsssError, match="outside 0..1"):
        balanced_seg_loss(logits, torch.tensor([[[0, 7]]]), torch.tensor([[1.0]]))
    with pytest.raises(WsssError, match="train.seg_reduction"):
        balanced_seg_loss(logits, torch.tensor([[[0, 1]]]), torch.tensor([[1.0]]), reduction="sum")


def two_region_batch(crop: int = 16, res: int = 8):
    """Left half: class 1 on a red patch; right half: background on blue; both images labelled {1}."""
    fg = torch.full((2, 1, res, res), -6.0)
    fg[..., : res // 2] = 6.0
    logits = torch.cat([torch.ones_like(fg), fg], 1).requires_grad_(True)
    raw = torch.zeros(2, 3, crop, crop)
    raw[:, 0, :, : crop // 2] = 1.0
    raw[:, 2, :, crop // 2 :] = 1.0
    labels = torch.ones(2, 1)
    cls = torch.tensor([[2.0], [-1.0]], requires_grad=True)
    out = {"logits": logits, "masks": logits.softmax(1), "cls": cls}
    return out, raw, labels


def test_single_stage_without_segmentation_is_the_classification_loss():
    out, raw, labels = two_region_batch()
    result = SingleStageLoss(load_cfg())(out, raw, labels, seg_on=False)
    expected = classification_loss(out["cls"], labels)
    assert result["total"].item() == pytest.approx(expected.item())
    assert result["seg"].item() == 0.0
    assert math.isnan(result["pseudo_valid"])
    result["total"].backward()
    assert out["logits"].grad is None


def test_single_stage_with_segmentation():
    out, raw, labels = two_region_batch()
    loss = SingleStageLoss(load_cfg("train.seg_weight=0.5"))
    result = loss(out, raw, labels, seg_on=True)
    assert set(result) == {"total", "cls", "seg", "pseudo_valid", "pseudo_ignore"}
    assert result["pseudo_valid"] == 1.0
    assert 0.0 <= result["pseudo_ignore"] < 0.25
    assert result["seg"].item() > 0
    total = result["cls"] + 0.5 * result["seg"]
    assert result["total"].item() == pytest.approx(total.item())

    pseudo = loss.make_pseudo(out, raw, labels)
    assert pseudo.shape == (2, 16, 16)
    assert (pseudo[:, :, :6] == 1).all() and (pseudo[:, :, 10:] == 0).all()

    result["total"].backward()
    assert out["logits"].grad.abs().sum() > 0
    assert out["cls"].grad.abs().sum() > 0


def test_cam_loss_is_the_classification_loss():
    out, raw, labels = two_region_batch()
    result = CAMLoss(load_cfg("model.method=cam"))(out, raw, labels, seg_on=True)
    assert result["total"].item() == pytest.approx(classification_loss(out["cls"], labels).item())
    assert result["seg"].item() == 0.0


def test_supervised_loss_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    mask = torch.tensor([[[0, 2], [255, 1]]])
    out = {"logits": logits, "cls": torch.zeros(1, 2)}
    labels = torch.tensor([[1.0, 1.0]])
    loss = SupervisedLoss(load_cfg("train.supervised_loss=ce"))
    result = loss(out, None, labels, seg_on=True, mask=mask)
    logp = logits.detach().log_softmax(1)[0]
    expected = -(logp[0, 0, 0] + logp[2, 0, 1] + logp[1, 1, 1]) / 3
    assert result["seg"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert result["total"].item() == pytest.approx(expected.item() + math.log(2), rel=1e-6)

    changed = logits.detach().clone()
    changed[0, :, 1, 0] = torch.tensor([5.0, -5.0, 9.0])
    again = loss({"logits": changed, "cls": torch.zeros(1, 2)}, None, labels, True, mask=mask)
    assert again["seg"].item() == pytest.approx(result["seg"].item())

    result["total"].backward()
    assert logits.grad[0, :, 1, 0].abs().sum() == 0

    ignored = loss(out, None, labels, True, mask=torch.full((1, 2, 2), 255))
    assert ignored["seg"].item() == 0.0


def test_supervised_loss_upsamples_to_the_mask():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 2, 2)
    mask = torch.tensor([[[0, 0, 1], [0, 1, 1], [255, 1, 1]]])
    result = SupervisedLoss(load_cfg("train.supervised_loss=ce"))({"logits": logits, "cls": torch.zeros(1, 1)}, None,
                                                                  torch.ones(1, 1), True, mask=mask)
    up = F.interpolate(logits, size=(3, 3), mode="bilinear", align_corners=True)
    assert result["seg"].item() == pytest.approx(F.cross_entropy(up, mask, ignore_index=255).item(), rel=1e-6)
    with pytest.raises(WsssError, match="'mask'"):
        SupervisedLoss(load_cfg())({"logits": logits, "cls": torch.zeros(1, 1)}, None, torch.ones(1, 1), True)


def test_supervised_balanced_loss_weights_classes_by_the_cropped_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, :1, :1] = 1  # one pixel of class 1 against 15 of background
    mask[1, :, :2] = 2
    mask[1, 0, 0] = 255
    # image 0 is labelled with class 2 too, which its crop lost: the crop's classes count, not the labels
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    out = {"logits": logits, "cls": torch.zeros(2, 2)}
    result = SupervisedLoss(load_cfg("train.supervised_loss=balanced"))(out, None, labels, True, mask=mask)
    present = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected, valid = balanced_seg_loss(logits, mask, present)
    assert bool(valid.all())
    assert result["seg"].item() == pytest.approx(expected.item(), rel=1e-6)
    plain = SupervisedLoss(load_cfg("train.supervised_loss=ce"))(out, None, labels, True, mask=mask)
    assert result["seg"].item() != pytest.approx(plain["seg"].item(), rel=1e-3)
    with pytest.raises(WsssError, match="supervised_loss"):
        cfg = load_cfg()
        cfg["train"]["supervised_loss"] = "focal"
        SupervisedLoss(cfg)


def test_build_loss_by_method():
    assert isinstance(build_loss(load_cfg()), SingleStageLoss)
    assert isinstance(build_loss(load_cfg("model.method=cam")), CAMLoss)
    assert isinstance(build_loss(load_cfg(), supervised=True), SupervisedLoss)
    cfg = load_cfg()
    cfg["model"]["method"] = "two_stage"
    with pytest.raises(WsssError, match="model.method"):
        build_loss(cfg)
    cfg = load_cfg()
    cfg["train"]["pamr_dilations"] = []
    with pytest.raises(WsssError, match="train.pamr_dilations"):
        build_loss(cfg)


def test_pamr_moves_soft_pseudo_labels_to_the_colour_edge():
    # A soft mask whose class-1 region reaches 3 columns past a vertical colour edge in a 3-channel image:
    # without PAMR those columns would be labelled 1; with it they follow the edge (the public loss refines).
    size = 16
    raw = torch.zeros(1, 3, size, size)
    raw[:, 0, :, : size // 2] = 0.9   # red object on the left
    raw[:, 2, :, size // 2:] = 0.9    # blue background on the right
    fg = torch.zeros(size, size)
    fg[:, : size // 2 + 3] = 0.7
    masks = torch.stack([1 - fg, fg])[None]
    out = {"masks": masks, "logits": masks.log(), "cls": torch.zeros(1, 1)}
    labels = torch.ones(1, 1)
    with_pamr = SingleStageLoss(load_cfg()).make_pseudo(out, raw, labels)
    without = SingleStageLoss(load_cfg("train.pamr_iters=0")).make_pseudo(out, raw, labels)
    assert (without[0, :, size // 2:size // 2 + 3] == 1).all()
    assert (with_pamr[0, :, size // 2 + 1:size // 2 + 3] == 0).all() and (with_pamr[0, :, :size // 2 - 1] == 1).all()


# --------------------------------------------------------------------------- helpers, messages, configs

LN2 = math.log(2)


@functools.lru_cache(maxsize=1)
def _default_cfg() -> dict:
    return load_cfg()


def default_cfg() -> dict:
    """A fresh copy of the validated params.yaml configuration (loading and validating it once)."""
    return copy.deepcopy(_default_cfg())


def test_upsample_is_a_no_op_at_the_target_size():
    x = torch.rand(2, 3, 4, 5)
    assert upsample(x, (4, 5)) is x
    chw = torch.rand(3, 4, 5)  # only the last two dimensions are the size
    assert upsample(chw, (4, 5)) is chw


def test_upsample_is_bilinear_with_aligned_corners():
    x = torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]])
    up = upsample(x, (2, 4))
    # corners aligned: the 4 output columns sample the input at 0, 1/3, 2/3, 1
    assert torch.allclose(up, torch.tensor([[[[0.0, 1.0, 2.0, 3.0], [6.0, 7.0, 8.0, 9.0]]]]))


def test_a_label_equal_to_num_classes_is_refused_with_a_named_message():
    message = r"^pseudo labels hold values outside 0\.\.1 and 255 \(ignore_index\)$"
    with pytest.raises(WsssError, match=message):
        class_pixel_counts(torch.tensor([[0, 2]]), 2)
    with pytest.raises(WsssError, match=message):
        class_pixel_counts(torch.tensor([[-1, 0]]), 2)
    assert class_pixel_counts(torch.tensor([[1, 255, 1]]), 2).tolist() == [[0.0, 2.0]]
    with pytest.raises(WsssError, match=r"^masks hold values outside 0\.\.2 and 9 \(ignore_index\)$"):
        check_label_values(torch.tensor([3]), 3, 9, "masks")
    check_label_values(torch.tensor([0, 2, 9]), 3, 9, "masks")


def test_balanced_loss_with_another_ignore_index():
    pseudo = torch.tensor([[[0, 0, 1], [1, 250, 0]]])
    loss, valid = balanced_seg_loss(torch.zeros(1, 2, 2, 3), pseudo, torch.tensor([[1.0]]), ignore_index=250)
    assert valid.tolist() == [True]
    # as with 255: weights 1/3 (3 background pixels) and 1/2 (2 of class 1), CE ln 2, mean over 6 pixels
    assert loss.item() == pytest.approx(2 * LN2 / 6, rel=1e-6)


def test_balanced_loss_shape_errors_name_both_shapes():
    labels = torch.tensor([[1.0]])
    with pytest.raises(WsssError, match=(r"^balanced_seg_loss: logits \(1, 2, 2, 3\) must be \(B, C, H, W\) and pseudo "
                                         r"labels \(1, 3, 2\) \(B, H, W\) of the same size$")):
        balanced_seg_loss(torch.zeros(1, 2, 2, 3), torch.zeros(1, 3, 2, dtype=torch.long), labels)
    with pytest.raises(WsssError, match=r"^balanced_seg_loss: logits \(2, 3\) must be"):
        balanced_seg_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), labels)
    with pytest.raises(WsssError, match=(r"^balanced_seg_loss: labels \(1, 1\) must be \(B, C-1\) for logits "
                                         r"\(1, 3, 2, 2\)$")):
        balanced_seg_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), labels)
    with pytest.raises(WsssError, match=r"^key 'train\.seg_reduction': 'sum' is not allowed \(allowed: valid, batch\)$"):
        balanced_seg_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), labels, reduction="sum")


def test_missing_network_outputs_and_label_shapes_are_named():
    labels = torch.ones(1, 1)
    cfg = default_cfg()
    for loss in (CAMLoss(cfg), SingleStageLoss(cfg), SupervisedLoss(cfg)):
        with pytest.raises(WsssError, match=r"^network output: missing key 'cls'$"):
            loss({"logits": torch.zeros(1, 2, 2, 2)}, torch.zeros(1, 3, 2, 2), labels, True)
        with pytest.raises(WsssError, match=r"^labels \(1, 1\) do not match the class scores \(1, 2\)$"):
            loss({"cls": torch.zeros(1, 2)}, torch.zeros(1, 3, 2, 2), labels, True)
    masks = torch.full((1, 2, 2, 2), 0.5)
    with pytest.raises(WsssError, match=r"^network output: missing key 'logits'$"):
        SingleStageLoss(cfg)({"cls": torch.zeros(1, 1), "masks": masks}, torch.zeros(1, 3, 2, 2), labels, True)
    with pytest.raises(WsssError, match=r"^network output: missing key 'logits'$"):
        SupervisedLoss(cfg)({"cls": torch.zeros(1, 1)}, None, labels, True, mask=torch.zeros(1, 2, 2))


@pytest.mark.parametrize("key", ["seg_weight", "pseudo_kappa_bg", "pseudo_kappa_fg", "pseudo_floor", "pamr_iters",
                                 "pamr_dilations"])
def test_single_stage_config_errors_name_the_missing_key(key):
    cfg = default_cfg()
    del cfg["train"][key]
    with pytest.raises(WsssError, match=rf"^config section 'train': missing key '{key}'$"):
        SingleStageLoss(cfg)


def _without(section, key=None):
    def edit(cfg):
        del (cfg[section] if key else cfg)[key or section]
    return edit


def _setting(section, key, value):
    def edit(cfg):
        cfg[section][key] = value
    return edit


@pytest.mark.parametrize("build,edit,message", [
    (SingleStageLoss, _without("train"), r"^config: missing key 'train'$"),
    (SupervisedLoss, _without("train"), r"^config: missing key 'train'$"),
    (SupervisedLoss, _without("train", "seg_weight"), r"^config section 'train': missing key 'seg_weight'$"),
    (SupervisedLoss, _without("train", "supervised_loss"), r"^config section 'train': missing key 'supervised_loss'$"),
    (SupervisedLoss, _setting("train", "supervised_loss", "focal"),
     r"^key 'train\.supervised_loss': 'focal' is not allowed \(allowed: balanced, ce\)$"),
    (SingleStageLoss, _setting("train", "seg_reduction", "sum"),
     r"^key 'train\.seg_reduction': 'sum' is not allowed \(allowed: valid, batch\)$"),
    (SingleStageLoss, _setting("train", "seg_weight", -1), r"^key 'train\.seg_weight': -1\.0 must be >= 0$"),
    (build_loss, _without("model"), r"^config: missing key 'model'$"),
    (build_loss, _without("model", "method"), r"^config section 'model': missing key 'method'$"),
    (build_loss, _setting("model", "method", "two_stage"),
     r"^key 'model\.method': 'two_stage' is not allowed \(allowed: single_stage, cam\)$"),
])
def test_config_errors_name_the_section_and_the_allowed_values(build, edit, message):
    cfg = default_cfg()
    edit(cfg)
    with pytest.raises(WsssError, match=message):
        build(cfg)


def test_a_zero_segmentation_weight_is_allowed():
    out, raw, labels = two_region_batch()
    result = SingleStageLoss(load_cfg("train.seg_weight=0.0"))(out, raw, labels, seg_on=True)
    assert result["seg"].item() > 0
    assert result["total"].item() == pytest.approx(result["cls"].item())


def hand_pseudo_case():
    """One 2x2 image labelled {1}, masks chosen so that the pseudo labels are [[0, 1], [ignored, ignored]].

    Thresholds (kappa_bg 0.7, kappa_fg 0.6, floor 0.2): background 0.7, class 1 0.6. Pixel (1, 0) passes
    neither, pixel (1, 1) both.
    """
    bg = torch.tensor([[1.0, 0.0], [0.5, 0.9]])
    fg = torch.tensor([[0.0, 1.0], [0.5, 0.9]])
    out = {"masks": torch.stack([bg, fg])[None], "logits": torch.zeros(1, 2, 2, 2), "cls": torch.zeros(1, 1)}
    return out, torch.rand(1, 3, 2, 2), torch.ones(1, 1)


def cfg_with_eval(eval_section):
    cfg = load_cfg("train.pamr_iters=0", "train.pseudo_kappa_bg=0.7", "train.pseudo_kappa_fg=0.6",
                   "train.pseudo_floor=0.2")
    if eval_section is None:
        del cfg["eval"]
    else:
        cfg["eval"] = eval_section
    return cfg


@pytest.mark.parametrize("eval_section, ignore", [({"ignore_index": 250}, 250), ({}, 255), (None, 255)])
def test_single_stage_pseudo_labels_use_the_configured_ignore_index(eval_section, ignore):
    out, raw, labels = hand_pseudo_case()
    loss = SingleStageLoss(cfg_with_eval(eval_section))
    assert loss.make_pseudo(out, raw, labels).tolist() == [[[0, 1], [ignore, ignore]]]
    result = loss(out, raw, labels, seg_on=True)
    assert result["pseudo_ignore"] == 0.5


@pytest.mark.parametrize("eval_section, ignore", [({"ignore_index": 250}, 250), ({}, 255), (None, 255)])
@pytest.mark.parametrize("kind", ["ce", "balanced"])
def test_supervised_loss_uses_the_configured_ignore_index(eval_section, ignore, kind):
    cfg = cfg_with_eval(eval_section)
    cfg["train"]["supervised_loss"] = kind
    loss = SupervisedLoss(cfg)
    out = {"logits": torch.zeros(1, 2, 2, 3), "cls": torch.zeros(1, 1)}
    mask = torch.tensor([[[0, 0, 1], [1, ignore, 0]]])
    result = loss(out, None, torch.ones(1, 1), True, mask=mask)
    # every CE is ln 2; ce: the mean over the 5 labelled pixels; balanced: (3 * 1/3 + 2 * 1/2) ln 2 / 6
    assert result["seg"].item() == pytest.approx(LN2 if kind == "ce" else 2 * LN2 / 6, rel=1e-6)
    other = 255 if ignore != 255 else 250
    mask[0, 1, 1] = other
    with pytest.raises(WsssError, match=rf"^ground-truth masks hold values outside 0\.\.1 and {ignore} \(ignore_index\)$"):
        loss(out, None, torch.ones(1, 1), True, mask=mask)


def test_single_stage_reduction_follows_the_config():
    # image 0: pseudo labels [[0, 1], [0, 1]] -> valid; image 1: all background although labelled {1} -> invalid
    fg = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.stack([1 - fg, fg], 1)
    out = {"masks": masks, "logits": torch.zeros(2, 2, 2, 2), "cls": torch.zeros(2, 1)}
    raw, labels = torch.rand(2, 3, 2, 2), torch.ones(2, 1)
    # image 0: N = 4, N_c = 2 for both classes -> weight 2/5, CE ln 2 everywhere -> per-image loss 0.4 ln 2
    for reduction, seg in (("batch", 0.2 * LN2), ("valid", 0.4 * LN2)):
        cfg = load_cfg("train.pamr_iters=0", "train.seg_weight=2.0", f"train.seg_reduction={reduction}")
        result = SingleStageLoss(cfg)(out, raw, labels, seg_on=True)
        assert result["pseudo_valid"] == 0.5
        assert result["seg"].item() == pytest.approx(seg, rel=1e-6)
        assert result["total"].item() == pytest.approx(LN2 + 2.0 * seg, rel=1e-6)


@pytest.mark.parametrize("unbiased", [True, False])
def test_single_stage_refine_uses_the_configured_std(unbiased):
    cfg = load_cfg("train.pamr_iters=2", f"train.pamr_std_unbiased={str(unbiased).lower()}")
    cfg["train"]["pamr_dilations"] = [1, 2]
    loss = SingleStageLoss(cfg)
    assert loss.pamr.std_unbiased is unbiased
    torch.manual_seed(0)
    masks, raw = torch.rand(1, 3, 5, 6).softmax(1), torch.rand(1, 3, 5, 6)
    refined = loss.refine(masks, raw)
    assert torch.equal(refined, PAMR(iters=2, dilations=[1, 2], std_unbiased=unbiased)(raw, masks))
    assert not torch.allclose(refined, PAMR(iters=2, dilations=[1, 2], std_unbiased=not unbiased)(raw, masks))


def test_supervised_loss_without_segmentation_is_the_classification_loss():
    scores = torch.zeros(2, 3, requires_grad=True)
    out = {"logits": torch.zeros(2, 4, 2, 2), "cls": scores}
    result = SupervisedLoss(load_cfg())(out, None, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), seg_on=False)
    # the soft-margin loss at score 0 is ln 2 whatever the label
    assert result["total"].item() == pytest.approx(LN2)
    assert result["cls"].item() == pytest.approx(LN2)
    assert result["seg"].shape == () and result["seg"].item() == 0.0
    assert math.isnan(result["pseudo_valid"]) and math.isnan(result["pseudo_ignore"])
    result["total"].backward()
    assert scores.grad.abs().sum() > 0


def test_supervised_loss_segments_by_default():
    out = {"logits": torch.zeros(1, 2, 2, 2), "cls": torch.zeros(1, 1)}
    result = SupervisedLoss(load_cfg("train.supervised_loss=ce", "train.seg_weight=1.0"))(
        out, None, torch.ones(1, 1), mask=torch.tensor([[[0, 1], [255, 1]]]))
    assert result["seg"].item() == pytest.approx(LN2)
    assert result["total"].item() == pytest.approx(2 * LN2)


def test_supervised_mask_errors_name_the_shapes():
    loss = SupervisedLoss(load_cfg("train.supervised_loss=ce"))
    out = {"logits": torch.zeros(1, 3, 2, 2), "cls": torch.zeros(1, 2)}
    labels = torch.ones(1, 2)
    with pytest.raises(WsssError, match=r"^SupervisedLoss needs the ground-truth 'mask' argument$"):
        loss(out, None, labels, True)
    with pytest.raises(WsssError, match=r"^ground-truth mask \(1, 2, 2, 1\) must be \(B, H, W\) for logits \(1, 3, 2, 2\)$"):
        loss(out, None, labels, True, mask=torch.zeros(1, 2, 2, 1, dtype=torch.long))
    with pytest.raises(WsssError, match=r"^ground-truth mask \(2, 2, 2\) must be \(B, H, W\) for logits \(1, 3, 2, 2\)$"):
        loss(out, None, labels, True, mask=torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(WsssError, match=r"^ground-truth masks hold values outside 0\.\.2 and 255 \(ignore_index\)$"):
        loss(out, None, labels, True, mask=torch.tensor([[[0, 3], [1, 2]]]))
