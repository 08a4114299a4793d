"""Multi-scale + flip inference and the dense CRF, on hand-built models and images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from wsss.stages.crf import read_probs, refine
from wsss.stages.infer import combine, predict, quantise, views

CRF = {"iters": 10, "gauss_sxy": 3, "gauss_compat": 3, "bi_sxy": 80, "bi_srgb": 13, "bi_compat": 10,
       "unary_clip": 1e-5, "background": "probs", "bg_power": 5.0, "workers": 1}


class PixelModel(nn.Module):
    """A per-pixel model (1x1 convs at stride 4): flip-equivariant, so un-flipping must be exact."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, classes - 1, 1)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        fg = self.head(nn.functional.avg_pool2d(x, 4))
        logits = torch.cat([torch.ones_like(fg[:, :1]), fg], 1)
        return {"logits": logits, "masks": logits.softmax(1), "cls": fg.mean((2, 3))}


def test_views_cover_every_scale_plain_and_flipped():
    assert views([1.0, 0.5], True) == [(1.0, False), (1.0, True), (0.5, False), (0.5, True)]
    assert views([1.0], False) == [(1.0, False)]


def test_chunking_bounds_the_batch_and_does_not_change_the_result():
    image = torch.randn(3, 37, 53)
    model = PixelModel().eval()
    scales = [1.0, 0.5, 1.5, 2.0]
    full, cls_full = predict(model, image, scales, True, chunk=8)
    assert model.calls == [8]
    model.calls.clear()
    chunked, cls_chunked = predict(model, image, scales, True, chunk=3)
    assert model.calls == [3, 3, 2]
    torch.testing.assert_close(full, chunked, atol=1e-5, rtol=1e-5)
    # class scores pool over the whole padded view, whose padding depends on the chunk: close, not equal
    torch.testing.assert_close(cls_full, cls_chunked, atol=1e-3, rtol=0)
    assert full.shape == (3, 37, 53)
    torch.testing.assert_close(full.sum(0), torch.ones(37, 53), atol=1e-4, rtol=0)


def test_flipped_views_are_unflipped():
    image = torch.randn(3, 32, 48)
    model = PixelModel().eval()
    plain, _ = predict(model, image, [1.0], False, chunk=4)
    both, _ = predict(model, image, [1.0], True, chunk=4)
    torch.testing.assert_close(plain, both, atol=1e-5, rtol=1e-5)


def test_combine_keeps_present_classes_and_handles_background():
    masks = torch.tensor([[[0.5, 0.1]], [[0.3, 0.8]], [[0.2, 0.1]]])  # C=3, H=1, W=2
    present = torch.tensor([True, False])
    ids, probs = combine(masks, present, {"background": "constant", "bg_const": 0.25, "bg_power": 3})
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1, 0], [0.3 / 0.55, 0.8 / 1.05], rtol=1e-5)
    ids, probs = combine(masks, present, {"background": "power", "bg_const": 0.25, "bg_power": 3})
    np.testing.assert_allclose(probs[0, 0], [0.125 / 0.425, 0.001 / 0.801], rtol=1e-4)
    ids, probs = combine(masks, torch.tensor([False, False]), {"background": "constant", "bg_const": 0.25, "bg_power": 3})
    assert ids.tolist() == [0] and probs.shape == (1, 1, 2)


def two_region_case(h=40, w=60):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2:] = (40, 40, 200)
    rng = np.random.default_rng(0)
    p_fg = np.where(np.arange(w)[None, :] < w // 2 + 6, 0.65, 0.35) * np.ones((h, 1))  # leaks 6 px past the edge
    p_fg = np.clip(p_fg + rng.normal(0, 0.1, p_fg.shape), 0.01, 0.99)
    return image, np.stack([1 - p_fg, p_fg]).astype(np.float32)


def test_crf_snaps_a_leaking_mask_to_the_colour_edge():
    image, probs = two_region_case()
    raw = probs.argmax(0)
    refined = refine(image, probs, CRF)
    truth = np.zeros_like(raw)
    truth[:, : image.shape[1] // 2] = 1
    assert (refined == truth).mean() > 0.98 > (raw == truth).mean()


def test_crf_accepts_non_contiguous_read_only_inputs_and_wsfcn_background():
    image, probs = two_region_case()
    image.setflags(write=False)  # as np.asarray(PIL image) gives
    refined = refine(image[:, ::-1][:, ::-1], probs[:, :, ::-1][:, :, ::-1], dict(CRF, background="fg_power", bi_sxy=30))
    assert refined.shape == image.shape[:2]


def test_probability_files_round_trip_and_corrupt_ones_are_named(tmp_path):
    _, probs = two_region_case()
    path = tmp_path / "a.npz"
    np.savez_compressed(path, classes=np.array([0, 7], np.uint8), probs=quantise(probs))
    ids, back = read_probs(path)
    assert ids.tolist() == [0, 7]
    np.testing.assert_allclose(back, probs, atol=1 / 255)
    bad = tmp_path / "b.npz"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception, match="b.npz"):
        read_probs(bad)
