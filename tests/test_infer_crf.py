"""Multi-scale + flip inference and the dense CRF, on hand-built models, the real networks and images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from wsss import config
from wsss.model.network import build_model
from wsss.stages.crf import as_stored, read_probs, refine
from wsss.stages.infer import combine, infer_views, make_view, place, predict, view_size, views

CRF = {"iters": 10, "gauss_sxy": 3, "gauss_compat": 3, "bi_sxy": 80, "bi_srgb": 13, "bi_compat": 10,
       "unary_clip": 1e-5, "background": "probs", "bg_power": 5.0, "workers": 1, "labels": "present"}


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


class GlobalModel(nn.Module):
    """Masks at stride 4 from a per-pixel 1x1 conv plus a global average (so padding would leak in),
    with a left-right ramp (so it is not flip-equivariant); records each batch size."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, classes - 1, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        pooled = nn.functional.avg_pool2d(x, 4)
        ramp = torch.linspace(0, 1, pooled.shape[-1]).view(1, 1, 1, -1)
        fg = self.head(pooled) + pooled.mean((1, 2, 3), keepdim=True) + ramp
        logits = torch.cat([torch.ones_like(fg[:, :1]), fg], 1)
        return {"logits": logits, "masks": logits.softmax(1), "cls": fg.mean((2, 3))}


def test_views_cover_every_scale_plain_and_flipped():
    assert views([1.0, 0.5], True) == [(1.0, False), (1.0, True), (0.5, False), (0.5, True)]
    assert views([1.0], False) == [(1.0, False)]


def test_view_sizes_round_as_the_public_loader():
    assert view_size((375, 500), 0.5) == (188, 250)        # round(187.5) = 188 (half to even), as int(round())
    assert view_size((375, 500), 1.5) == (562, 750)        # round(562.5) = 562
    assert view_size((3, 3), 0.1) == (1, 1)


def test_views_are_bicubic_resizes_of_the_rgb_image_then_flipped_and_normalised():
    image = random_image(20, 30)
    view = make_view(image, 0.5, True)
    expected = np.asarray(image.resize((15, 10), Image.BICUBIC))[:, ::-1] / 255.0
    expected = (expected - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(view.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_a_view_is_centred_on_its_zero_canvas():
    view = torch.ones(3, 3, 4)
    canvas, box = place(view, [8, 9])
    assert box == (2, 2, 3, 4)  # top = (8 - 3) // 2, left = (9 - 4) // 2
    assert canvas.shape == (3, 8, 9) and canvas.sum() == 36 and canvas[:, 2:5, 2:6].min() == 1
    assert place(view, None) == (view, (0, 0, 3, 4))
    with pytest.raises(ValueError, match="3x4 view does not fit the 2x9 canvas"):
        place(view, [2, 9])
    with pytest.raises(ValueError, match="3x4 view does not fit the 3x3 canvas"):
        place(view, [3, 3])
    exact, box = place(view, [3, 4])  # a view exactly the canvas size fills it
    assert box == (0, 0, 3, 4) and torch.equal(exact, view)


class CornerModel(nn.Module):
    """Returns fixed 2x2 masks whatever the input: class 1 on the right column, class 0 on the left."""

    def forward(self, x):
        m = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(x.shape[0], 1, 2, 2)
        masks = torch.cat([1 - m, m], 1)
        return {"logits": masks, "masks": masks, "cls": torch.zeros(x.shape[0], 1)}


def test_view_masks_are_upsampled_to_the_input_with_aligned_corners():
    # The public model returns its masks upsampled to its input size with align_corners=True: a 2x2 map
    # at 4x4 has columns 0, 1/3, 2/3, 1 (align_corners=False would give 0, 1/4, 3/4, 1).
    masks, _ = predict(CornerModel(), random_image(4, 4), [1.0], False, chunk=1)
    np.testing.assert_allclose(masks[1, 0].numpy(), [0, 1 / 3, 2 / 3, 1], atol=1e-6)
    # On a 6x6 canvas the box (rows/cols 1..4) is cut from the 6-wide upsampling: 1/5 .. 4/5
    masks, _ = predict(CornerModel(), random_image(4, 4), [1.0], False, chunk=1, pad_size=[6, 6])
    np.testing.assert_allclose(masks[1, 0].numpy(), [0.2, 0.4, 0.6, 0.8], atol=1e-6)


@pytest.mark.parametrize("pad_size", [None, [80, 96]])
def test_the_result_depends_on_neither_chunk_nor_scale_order(pad_size):
    image = random_image(29, 41, seed=3)
    model = GlobalModel().eval()
    scales = [1.0, 0.5, 1.5, 2.0]
    ref, ref_cls = predict(model, image, scales, True, chunk=1, pad_size=pad_size)
    assert len(model.calls) == 8 and all(c[0] == 1 for c in model.calls)
    for chunk, order in itertools.product([2, 3, 8], [scales, scales[::-1], [0.5, 2.0, 1.0, 1.5]]):
        model.calls.clear()
        masks, cls = predict(model, image, order, True, chunk=chunk, pad_size=pad_size)
        assert max(c[0] for c in model.calls) <= chunk
        torch.testing.assert_close(masks, ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(cls, ref_cls, atol=1e-6, rtol=0)
    assert ref.shape == (3, 29, 41)
    torch.testing.assert_close(ref.sum(0), torch.ones(29, 41), atol=1e-5, rtol=0)


def test_infer_views_runs_predict_with_every_key_of_the_infer_section():
    """Scales, flip, chunk and canvas decide the batches; amp runs them under bf16 autocast; channels_last hands
    them over in channels-last memory format; the result is `predict`'s with the same arguments."""

    class Recording(GlobalModel):
        def forward(self, x):
            self.seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                              torch.is_autocast_enabled("cpu")))
            return super().forward(x)

    image = random_image(12, 14)
    icfg = {"scales": [1.0, 0.5], "flip": True, "chunk": 1, "pad_size": [16, 16], "amp": True, "channels_last": True}
    model = Recording()
    model.seen = []
    masks, presence = infer_views(model, image, icfg, "cpu")
    assert model.calls == [(1, 3, 16, 16)] * 4 and model.seen == [(True, True)] * 4  # 4 views, one per pass
    ref, ref_presence = predict(GlobalModel(), image, [1.0, 0.5], True, 1, [16, 16], "cpu", True, True)
    assert torch.equal(masks, ref) and torch.equal(presence, ref_presence)
    model.calls, model.seen = [], []
    infer_views(model, image, {**icfg, "flip": False, "chunk": 2, "pad_size": None, "amp": False,
                               "channels_last": False}, "cpu")
    assert model.calls == [(1, 3, 6, 7), (1, 3, 12, 14)] and model.seen == [(False, False)] * 2


def test_only_views_of_one_size_share_a_forward_pass():
    model = GlobalModel().eval()
    predict(model, random_image(29, 41), [1.0, 0.5, 1.5, 2.0], True, chunk=8)
    assert sorted(c[0] for c in model.calls) == [2, 2, 2, 2]  # each scale with its flip, nothing else


def test_multi_scale_is_the_average_of_the_single_views_unflipped():
    image = random_image(24, 32, seed=5)
    model = GlobalModel().eval()
    both, _ = predict(model, image, [1.0, 0.5], True, chunk=4)
    singles = []
    for scale in (1.0, 0.5):
        plain, _ = predict(model, image, [scale], False, chunk=4)
        flipped, _ = predict(model, image.transpose(Image.FLIP_LEFT_RIGHT), [scale], False, chunk=4)
        singles += [plain, flipped.flip(-1)]
    torch.testing.assert_close(both, sum(singles) / 4, atol=1e-6, rtol=0)
    assert (singles[0] - singles[1]).abs().max() > 1e-3  # the model is not flip-equivariant
    assert (singles[0] - singles[2]).abs().max() > 1e-3  # nor scale-equivariant


@pytest.mark.parametrize("context,fusion", [("aspp", "gci"), ("fca", "sf2"), ("fca_nosrm", "sf2"), ("ppm", "sum"),
                                            ("nonlocal", "concat"), ("largeconv", "mul")])
def test_real_networks_are_chunk_and_order_invariant(one_thread, context, fusion):
    cfg = config.load(["params.yaml"], [f"model.context={context}", f"model.fusion={fusion}"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    image = random_image(37, 45, seed=7)
    ref, ref_cls = predict(model, image, [1.0, 0.5, 1.5], True, chunk=1)
    masks, cls = predict(model, image, [1.5, 1.0, 0.5], True, chunk=6)
    torch.testing.assert_close(masks, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(cls, ref_cls, atol=1e-5, rtol=0)


def test_combine_keeps_present_classes_and_the_raw_scores():
    masks = torch.tensor([[[0.5, 0.1]], [[0.3, 0.8]], [[0.2, 0.1]]])  # C=3, H=1, W=2
    present = torch.tensor([True, False])
    ids, probs = combine(masks, present, {"background": "constant", "bg_const": 0.25, "bg_power": 3})
    assert ids.tolist() == [0, 1] and ids.dtype == np.uint8
    np.testing.assert_allclose(probs, [[[0.25, 0.25]], [[0.3, 0.8]]], rtol=1e-6)  # not renormalised
    ids, probs = combine(masks, present, {"background": "power", "bg_const": 0.25, "bg_power": 3})
    np.testing.assert_allclose(probs[0, 0], [0.125, 0.001], rtol=1e-4)
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
    ids = np.array([0, 3], np.uint8)
    refined = refine(image, ids, probs, CRF, num_classes=5)
    truth = np.zeros_like(raw)
    truth[:, : image.shape[1] // 2] = 3
    assert (refined == truth).mean() > 0.98 > (ids[raw] == truth).mean()
    every_label = refine(image, ids, probs, dict(CRF, labels="all"), num_classes=5)
    assert (every_label == refined).mean() > 0.999  # absent labels at score 0 almost never matter


def test_crf_background_from_the_raw_class_scores():
    # fg 0.12 at every pixel: the public rule gives bg (1 - 0.12) ** 5 = 0.528 > 0.12, so background wins;
    # renormalising first (fg / (0.25 + 0.12) = 0.32, bg 0.68 ** 5 = 0.14) would let the class win.
    image = np.full((6, 8, 3), 128, np.uint8)
    probs = np.stack([np.full((6, 8), 0.25), np.full((6, 8), 0.12)]).astype(np.float32)
    ids = np.array([0, 4], np.uint8)
    crf = dict(CRF, background="fg_power", iters=0)
    assert (refine(image, ids, probs, crf, num_classes=5) == 0).all()
    assert (refine(image, ids, np.stack([probs[0], probs[1] * 5]), crf, num_classes=5) == 4).all()  # fg 0.6 > 0.4 ** 5
    assert (refine(image, ids, probs, dict(crf, background="probs"), num_classes=5) == 0).all()  # 0.25 > 0.12


def test_crf_accepts_non_contiguous_read_only_inputs():
    image, probs = two_region_case()
    image.setflags(write=False)  # as np.asarray(PIL image) gives
    refined = refine(image[:, ::-1][:, ::-1], np.array([0, 1], np.uint8), probs[:, :, ::-1][:, :, ::-1],
                     dict(CRF, background="fg_power", bi_sxy=30), num_classes=2)
    assert refined.shape == image.shape[:2]


def test_crf_fg_power_replaces_the_background_by_the_largest_class_score():
    # bg 0.7, class scores 0.4 / 0.1 (left), 0.1 / 0.2 (right). Kept, the background wins everywhere.
    # Replaced by (1 - the pixel's largest class score) ** 5: 0.6 ** 5 = 0.078 < 0.4 on the left, the
    # class wins; 0.8 ** 5 = 0.328 > 0.2 on the right, the background wins (iters=0: the unary decides)
    image = np.full((4, 6, 3), 90, np.uint8)
    probs = np.zeros((3, 4, 6), np.float32)
    probs[0] = 0.7
    probs[1, :, :3], probs[2, :, :3] = 0.4, 0.1
    probs[1, :, 3:], probs[2, :, 3:] = 0.1, 0.2
    ids = np.array([0, 2, 5], np.uint8)
    crf = dict(CRF, iters=0)
    assert (refine(image, ids, probs, crf, num_classes=6) == 0).all()
    got = refine(image, ids, probs, dict(crf, background="fg_power"), num_classes=6)
    expected = np.where(np.arange(6) < 3, 2, 0)[None].repeat(4, 0)
    assert got.dtype == np.uint8 and (got == expected).all()


@pytest.mark.parametrize("background", ["probs", "fg_power"])
def test_crf_with_the_background_alone_labels_every_pixel_background(background):
    image = np.full((3, 5, 3), 10, np.uint8)
    got = refine(image, np.array([0], np.int64), np.full((1, 3, 5), 0.9, np.float32),
                 dict(CRF, background=background), num_classes=4)
    assert got.dtype == np.uint8 and got.shape == (3, 5) and (got == 0).all()


@pytest.mark.parametrize("labels", ["present", "all"])
def test_crf_runs_over_the_present_classes_or_every_class(monkeypatch, labels):
    """What reaches pydensecrf: the number of labels, the clipped unary of each, in class-id order."""
    import pydensecrf.densecrf as dcrf

    seen = {}

    class Recorder:
        def __init__(self, w, h, k):
            seen["size"] = (w, h, k)

        def setUnaryEnergy(self, unary):
            seen["unary"] = np.array(unary)

        def addPairwiseGaussian(self, **kw):
            pass

        def addPairwiseBilateral(self, **kw):
            seen["rgb"] = kw["rgbim"]

        def inference(self, iters):
            return np.exp(-seen["unary"])

    monkeypatch.setattr(dcrf, "DenseCRF2D", Recorder)
    probs = np.stack([np.full((2, 3), 0.6), np.full((2, 3), 0.3)]).astype(np.float32)
    image = np.asfortranarray(np.full((2, 3, 3), 7, np.uint8))
    got = refine(image, np.array([0, 2], np.uint8), probs, dict(CRF, labels=labels, unary_clip=1e-3), num_classes=4)
    assert got.tolist() == [[0, 0, 0], [0, 0, 0]]
    assert seen["rgb"].flags.c_contiguous and seen["rgb"].dtype == np.uint8
    unary = seen["unary"]
    if labels == "present":
        assert seen["size"] == (3, 2, 2)
        np.testing.assert_allclose(unary, -np.log([[0.6] * 6, [0.3] * 6]), rtol=1e-6)
    else:
        assert seen["size"] == (3, 2, 4)  # absent classes 1 and 3 at score 0, clipped at crf.unary_clip
        np.testing.assert_allclose(unary, -np.log([[0.6] * 6, [1e-3] * 6, [0.3] * 6, [1e-3] * 6]), rtol=1e-6)


def test_a_malformed_probability_file_is_named_with_what_is_expected(tmp_path):
    cases = {
        "ids2d": (np.array([[0], [7]], np.uint8), np.zeros((2, 4, 5), np.float16)),
        "probs2d": (np.array([0, 7], np.uint8), np.zeros((2, 4), np.float16)),
        "count": (np.array([0, 7, 9], np.uint8), np.zeros((2, 4, 5), np.float16)),
    }
    for name, (ids, probs) in cases.items():
        np.savez(tmp_path / f"{name}.npz", classes=ids, probs=probs)
        with pytest.raises(Exception) as err:
            read_probs(tmp_path / f"{name}.npz")
        assert str(err.value) == (
            f"probability file {tmp_path / name}.npz is malformed: classes {ids.shape}, probs {probs.shape} float16 "
            "(expected float16 scores, one row per class id); re-run `wsss infer`")


def test_probability_files_round_trip_and_corrupt_ones_are_named(tmp_path):
    _, probs = two_region_case()
    path = tmp_path / "a.npz"
    np.savez_compressed(path, classes=np.array([0, 7], np.uint8), probs=probs.astype(np.float16))
    ids, back = read_probs(path)
    assert ids.tolist() == [0, 7] and back.dtype == np.float32
    np.testing.assert_allclose(back, probs, rtol=1e-3)
    bad = tmp_path / "b.npz"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception, match="b.npz"):
        read_probs(bad)
    old = tmp_path / "c.npz"
    np.savez_compressed(old, classes=np.array([0, 7], np.uint8), probs=(probs * 255).astype(np.uint8))
    with pytest.raises(Exception, match="c.npz.*re-run `wsss infer`"):
        read_probs(old)


def test_the_scores_the_crf_reads_are_the_float16_ones_infer_stores(tmp_path):
    """`as_stored` (pseudo and predict run the CRF on it) equals what read_probs gives back from a file
    holding the float16 scores: 1/3 and 0.1 are rounded to float16's 11 significant bits, 0.5 is exact."""
    probs = np.array([[[1 / 3, 0.1], [0.5, 0.7]]], np.float32)
    stored = as_stored(probs)
    assert stored.dtype == np.float32 and stored.shape == (1, 2, 2)
    assert stored[0].tolist() == [[0.333251953125, 0.0999755859375], [0.5, 0.7001953125]]
    assert not np.array_equal(stored, probs)
    np.savez_compressed(tmp_path / "a.npz", classes=np.array([0], np.uint8), probs=probs.astype(np.float16))
    assert np.array_equal(read_probs(tmp_path / "a.npz")[1], stored)


def test_an_image_too_large_for_the_canvas_is_refused_before_any_compute(fake_voc_root):
    from wsss.data.dataset import VOCSegmentation
    from wsss.errors import WsssError
    from wsss.stages.infer import check_canvas

    dataset = VOCSegmentation(fake_voc_root, "val", 21)
    check_canvas(dataset, {"pad_size": [400, 400], "scales": [1.0, 2.0]})
    check_canvas(dataset, {"pad_size": [154, 206], "scales": [1.0, 2.0]})  # the largest view fits exactly
    with pytest.raises(WsssError, match=r"is 206x154, larger than key 'infer.pad_size' \[154, 205\]"):
        check_canvas(dataset, {"pad_size": [154, 205], "scales": [1.0, 2.0]})
    check_canvas(dataset, {"pad_size": None, "scales": [1.0, 2.0]})
    with pytest.raises(WsssError, match=r"2011_000002.jpg \(103x77\) at scale 2.0 is 206x154, larger than key 'infer.pad_size' \[150, 400\]"):
        check_canvas(dataset, {"pad_size": [150, 400], "scales": [1.0, 2.0]})
