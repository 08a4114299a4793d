"""The numerics the `voc` and `coco` presets take from the public WS-FCN code, one test per row of
docs/model.md's table "Reference numerics" (rows tested elsewhere name their test there)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from wsss import config
from wsss.data.transforms import TrainTransform
from wsss.metrics import scores
from wsss.model.fusion import CrossFeatureFusion, SemanticFlowAlign
from wsss.model.losses import balanced_seg_loss
from wsss.model.network import build_model

PARAMS = config.REPO_ROOT / "params.yaml"


def preset(name: str, *overrides: str) -> dict:
    return config.load([PARAMS], [f"data.name={name}", *overrides])


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_the_presets_take_the_public_code_defaults(name):
    cfg = preset(name)
    assert cfg["eval"]["absent_class"] == "zero"
    assert cfg["train"]["seg_reduction"] == "batch"
    assert cfg["train"]["crop_ratio"] == [3 / 4, 4 / 3]
    assert cfg["infer"]["pad_size"] == ([1024, 1024] if name == "voc" else [1304, 1304])
    assert (cfg["infer"]["background"], cfg["infer"]["bg_const"], cfg["infer"]["fp_cut"]) == ("constant", 0.25, 0.1)
    assert cfg["infer"]["scales"] == [1.0, 0.5, 1.5, 2.0] and cfg["infer"]["flip"] is True
    crf = cfg["crf"]
    assert (crf["bi_sxy"], crf["bi_srgb"], crf["bi_compat"], crf["gauss_sxy"], crf["gauss_compat"], crf["iters"]) == (30, 13, 10, 3, 3, 10)
    assert (crf["background"], crf["bg_power"], crf["labels"], crf["unary_clip"]) == ("fg_power", 5.0, "all", 1e-5)
    assert cfg["train"]["lr_mults"] == [1, 2, 20, 40] and cfg["model"]["fca_bn"] == "frozen"
    t = cfg["train"]
    assert (t["select"], t["val_every"], t["val_split"]) == ("best", 2, "val")  # validate every even epoch, keep the best


def test_sf2_upsamples_the_reduced_context_without_aligned_corners():
    # A 2x2 reduced context upsampled to 4x4 reaches the flow conv: columns 0, 1/4, 3/4, 1 (align_corners=False),
    # not 0, 1/3, 2/3, 1 (True). The public AlignModule: F.interpolate(..., align_corners=False).
    align = SemanticFlowAlign(shallow_ch=1, width=2)
    with torch.no_grad():
        align.reduce_context.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        align.reduce_shallow.weight.zero_()
    seen = {}
    align.flow.register_forward_hook(lambda m, args, out: seen.setdefault("input", args[0]))
    context = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    with torch.no_grad():
        align(torch.zeros(1, 1, 4, 4), context)
    high, low = seen["input"][0]
    np.testing.assert_allclose(high[0].numpy(), [0, 0.25, 0.75, 1], atol=1e-6)
    assert torch.all(low == 0)


def test_absent_class_scores_zero_and_stays_in_the_mean():
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 in neither ground truth nor prediction
    s = scores(conf, "zero")
    np.testing.assert_allclose(s["iou"], [0.75, 2 / 3, 0.0])
    assert s["miou"] == pytest.approx((0.75 + 2 / 3 + 0) / 3)
    assert s["miou_fg"] == pytest.approx((2 / 3 + 0) / 2)
    assert scores(conf, "nan")["miou"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert s["precision"][2] == 0 and s["recall"][2] == 0
    with pytest.raises(ValueError, match="absent-class rule 'none'"):
        scores(conf, "none")


def test_segmentation_loss_averages_over_the_whole_batch():
    logits = torch.zeros(2, 2, 2, 2)  # CE ln 2 everywhere
    pseudo = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])  # image 2 lacks its class: invalid
    labels = torch.tensor([[1.0], [1.0]])
    batch, valid = balanced_seg_loss(logits, pseudo, labels, reduction="batch")
    only_valid, _ = balanced_seg_loss(logits, pseudo, labels, reduction="valid")
    assert valid.tolist() == [True, False]
    per_image = 4 * (2 / 5) * math.log(2) / 4  # each pixel weighted (4 - 2) / (1 + 4)
    assert only_valid.item() == pytest.approx(per_image)
    assert batch.item() == pytest.approx(per_image / 2)


def test_training_crops_are_bicubic():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mask = Image.fromarray(np.zeros((40, 40), np.uint8))
    t = TrainTransform(20, [1.0, 1.0], [1.0, 1.0], 0.0, [0, 0, 0, 0])
    torch.manual_seed(0)
    crop, _ = t(image, mask)
    assert np.array_equal(np.asarray(crop), np.asarray(image.resize((20, 20), Image.BICUBIC)))


def test_flow_convs_keep_pytorchs_default_init_and_the_rest_is_kaiming():
    torch.manual_seed(0)
    fusion = CrossFeatureFusion(256, 256, join="mul", align=True)
    flow = fusion.align.flow.weight
    fan_in = flow[0].numel()
    assert flow.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7           # kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in))
    assert fusion.h2[0].weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)  # kaiming normal
    assert torch.all(fusion.h2[0].bias == 0)


def test_classifier_bias_keeps_pytorchs_default_init():
    torch.manual_seed(0)
    model = build_model(config.load([PARAMS]), load_weights=False)
    classifier = model.decoder[-1]
    bound = 1 / math.sqrt(classifier.weight[0].numel())
    assert classifier.bias.abs().max() <= bound and classifier.bias.abs().max() > bound / 4


def test_the_coco_preset_takes_the_public_codes_coco_settings():
    coco, voc = preset("coco"), preset("voc")
    assert (coco["train"]["pamr_iters"], coco["model"]["focal_lambda"], coco["train"]["pseudo_floor"],
            coco["train"]["pseudo_kappa_bg"]) == (5, 0.1, 0.1, 0.8)
    assert (voc["train"]["pamr_iters"], voc["model"]["focal_lambda"], voc["train"]["pseudo_floor"],
            voc["train"]["pseudo_kappa_bg"]) == (10, 0.01, 0.2, 0.7)
