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
    class_pixel_counts,
    valid_images,
)
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
