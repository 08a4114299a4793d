import pytest
import torch

from wsss.errors import WsssError
from wsss.model.pseudo_labels import class_thresholds, clean_masks, pseudo_labels

# One image, background + 2 classes, five pixels in a row.
#   background peak 0.9 -> threshold 0.7 * 0.9 = 0.63
#   class 1 peak 0.7    -> threshold 0.6 * 0.7 = 0.42
#   class 2 peak 0.15   -> 0.6 * 0.15 = 0.09, raised to the 0.2 floor
MASKS = torch.tensor(
    [
        [0.90, 0.50, 0.20, 0.10, 0.80],
        [0.05, 0.50, 0.70, 0.10, 0.60],
        [0.05, 0.00, 0.10, 0.15, 0.05],
    ]
).reshape(1, 3, 1, 5)
BOTH = torch.tensor([[1.0, 1.0]])


def test_thresholds_kappa_and_floor():
    thr = class_thresholds(MASKS, kappa_bg=0.7, kappa_fg=0.6, floor=0.2).flatten()
    assert torch.allclose(thr, torch.tensor([0.63, 0.42, 0.2]))


def test_labels_and_ignore_for_none_or_several():
    got = pseudo_labels(MASKS, BOTH)
    # pixel 0: background only; 1, 2: class 1 only; 3: nothing passes; 4: background and class 1
    assert got.dtype == torch.int64
    assert got.tolist() == [[[0, 1, 1, 255, 255]]]


def test_absent_classes_are_zeroed():
    got = pseudo_labels(MASKS, torch.tensor([[0.0, 1.0]]))
    # class 1 is absent: pixel 4 is no longer ambiguous, pixels 1 and 2 claim nothing
    assert got.tolist() == [[[0, 255, 255, 255, 0]]]


def test_parameters_are_honoured():
    # a lower floor lets class 2 claim pixel 3 (0.15 > max(0.1, 0.09))
    assert pseudo_labels(MASKS, BOTH, floor=0.1).tolist() == [[[0, 1, 1, 2, 255]]]
    # a higher background kappa (0.9 * 0.9 = 0.81) drops the background at pixel 4
    assert pseudo_labels(MASKS, BOTH, kappa_bg=0.9).tolist() == [[[0, 1, 1, 255, 1]]]
    assert pseudo_labels(MASKS, BOTH, ignore_index=-1).tolist() == [[[0, 1, 1, -1, -1]]]


def test_thresholds_are_per_image():
    masks = torch.cat([MASKS, MASKS * 0.5])
    thr = class_thresholds(masks, 0.7, 0.6, 0.2).flatten(1)
    assert torch.allclose(thr, torch.tensor([[0.63, 0.42, 0.2], [0.315, 0.21, 0.2]]))
    got = pseudo_labels(masks, torch.cat([BOTH, BOTH]))
    # relative thresholds above the floor: halving an image's masks keeps its labels
    assert got.shape == (2, 1, 5)
    assert got[1].tolist() == got[0].tolist() == [[0, 1, 1, 255, 255]]


def test_bad_input():
    with pytest.raises(WsssError, match="train.pseudo_kappa_fg"):
        pseudo_labels(MASKS, BOTH, kappa_fg=1.5)
    with pytest.raises(WsssError, match=r"\(B, C-1\)"):
        pseudo_labels(MASKS, torch.ones(1, 3))
    with pytest.raises(WsssError, match="ignore_index"):
        pseudo_labels(MASKS, BOTH, ignore_index=2)


@pytest.mark.parametrize("key,kwarg", [("pseudo_kappa_bg", "kappa_bg"), ("pseudo_kappa_fg", "kappa_fg"),
                                       ("pseudo_floor", "floor")])
def test_each_fraction_is_named_and_its_ends_are_allowed(key, kwarg):
    for bad in (-0.01, 1.01):
        with pytest.raises(WsssError, match=rf"key 'train\.{key}': {bad} must lie in \[0, 1\]"):
            pseudo_labels(MASKS, BOTH, **{kwarg: bad})
    for end in (0.0, 1.0):
        assert pseudo_labels(MASKS, BOTH, **{kwarg: end}).shape == (1, 1, 5)


def test_ignore_index_may_be_anything_but_a_class_index():
    for index in (0, 1, 2):
        with pytest.raises(WsssError, match=f"ignore_index {index} collides with a class index \\(C=3\\)"):
            pseudo_labels(MASKS, BOTH, ignore_index=index)
    assert pseudo_labels(MASKS, BOTH, ignore_index=3).tolist() == [[[0, 1, 1, 3, 3]]]


def test_masks_must_be_four_dimensional():
    flat = MASKS[:, :, 0]  # (B, C, W): labels (B, C-1) would fit its first two sizes
    with pytest.raises(WsssError, match=r"masks \(1, 3, 5\) must be \(B, C, H, W\)"):
        clean_masks(flat, BOTH)
    with pytest.raises(WsssError, match=r"must be \(B, C, H, W\)"):
        pseudo_labels(flat, BOTH, ignore_index=0)


def test_clean_masks_zeroes_absent_classes_exactly_and_keeps_the_rest():
    cleaned = clean_masks(MASKS, torch.tensor([[0.0, 1.0]]))
    assert cleaned.dtype == MASKS.dtype
    assert torch.equal(cleaned[:, 1], torch.zeros_like(MASKS[:, 1]))
    assert torch.equal(cleaned[:, 0], MASKS[:, 0]) and torch.equal(cleaned[:, 2], MASKS[:, 2])
