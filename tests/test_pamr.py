import math

import pytest
import torch

from wsss.errors import WsssError
from wsss.model.pamr import PAMR, neighbour_offsets

DILATIONS = (1, 2, 4, 8, 12, 24)


def clamped_shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """t[..., clamp(y + dy), clamp(x + dx)]: replicate padding by index clamping."""
    h, w = t.shape[-2:]
    ys = (torch.arange(h) + dy).clamp(0, h - 1)
    xs = (torch.arange(w) + dx).clamp(0, w - 1)
    return t[..., ys, :][..., xs]


def test_offsets_are_the_48_stencil_neighbours():
    offsets = neighbour_offsets(DILATIONS)
    assert len(offsets) == 48 == len(set(offsets))
    assert (0, 0) not in offsets
    assert {(-24, -24), (24, 0), (0, 12), (1, 1)} <= set(offsets)


def test_affinities_sum_to_one():
    torch.manual_seed(0)
    alpha = PAMR().affinities(torch.rand(2, 3, 9, 11))
    assert alpha.shape == (2, 48, 9, 11)
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(1), torch.ones(2, 9, 11), atol=1e-6)


@pytest.mark.parametrize("unbiased, sigma", [(True, 0.5), (False, math.sqrt(2 / 9))])
def test_affinity_hand_computed(unbiased, sigma):
    # A 1x2 image (0 | 1), dilation 1. For the left pixel the clamped 3x3 stencil holds six 0s and
    # three 1s: mean 1/3, population variance 2/9, sample variance 1/4. Neighbours equal to the
    # centre get k = 0, the three others k = -1 / (0.1 sigma).
    image = torch.tensor([[[[0.0, 1.0]]]])
    alpha = PAMR(iters=1, dilations=(1,), std_unbiased=unbiased).affinities(image)[0, :, 0, 0]
    right = torch.tensor([dx == 1 for _, dx in neighbour_offsets((1,))])
    assert int(right.sum()) == 3
    k_far = -1.0 / (1e-8 + 0.1 * sigma)
    expected_same = 1.0 / (5 + 3 * math.exp(k_far))
    assert torch.allclose(alpha[~right], torch.full((5,), expected_same))
    assert torch.log(alpha[right] / alpha[~right][0]).tolist() == pytest.approx([k_far] * 3, rel=1e-4)


def test_constant_image_is_a_plain_neighbour_mean():
    torch.manual_seed(0)
    masks = torch.rand(2, 4, 7, 10).softmax(1)
    image = torch.full((2, 3, 7, 10), 0.3)
    alpha = PAMR().affinities(image)
    assert torch.allclose(alpha, torch.full_like(alpha, 1 / 48))
    once = torch.stack([clamped_shift(masks, dy, dx) for dy, dx in neighbour_offsets(DILATIONS)]).mean(0)
    assert torch.allclose(PAMR(iters=1)(image, masks), once, atol=1e-6)
    twice = torch.stack([clamped_shift(once, dy, dx) for dy, dx in neighbour_offsets(DILATIONS)]).mean(0)
    assert torch.allclose(PAMR(iters=2)(image, masks), twice, atol=1e-6)


def test_masks_stay_distributions():
    torch.manual_seed(1)
    masks = (3 * torch.randn(2, 5, 12, 12)).softmax(1)
    refined = PAMR(iters=10)(torch.rand(2, 3, 12, 12), masks)
    assert refined.shape == masks.shape
    assert (refined >= 0).all()
    assert torch.allclose(refined.sum(1), torch.ones(2, 12, 12), atol=1e-5)


def test_zero_iterations_is_identity():
    masks = torch.rand(1, 3, 5, 5).softmax(1)
    assert torch.equal(PAMR(iters=0)(torch.rand(1, 3, 5, 5), masks), masks)


def test_colour_edge_stops_bleeding():
    size = 16
    masks = torch.zeros(1, 2, size, size)
    masks[:, 0, :, : size // 2] = 1.0
    masks[:, 1, :, size // 2 :] = 1.0
    edge = torch.zeros(1, 3, size, size)
    edge[:, :, :, size // 2 :] = 1.0
    flat = torch.full((1, 3, size, size), 0.5)
    pamr = PAMR(iters=10)
    leak_edge = pamr(edge, masks)[0, 1, :, : size // 2].max().item()
    leak_flat = pamr(flat, masks)[0, 1, :, : size // 2].max().item()
    assert leak_flat > 0.3
    assert leak_edge < 1e-3


def test_bad_parameters_and_shapes():
    with pytest.raises(WsssError, match="train.pamr_iters"):
        PAMR(iters=-1)
    with pytest.raises(WsssError, match="train.pamr_dilations"):
        PAMR(dilations=())
    with pytest.raises(WsssError, match="train.pamr_dilations"):
        PAMR(dilations=(1, 0))
    with pytest.raises(WsssError, match="resize the guidance"):
        PAMR()(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4))


def test_defaults_are_ten_iterations_and_the_sample_std():
    pamr = PAMR()
    assert (pamr.iters, pamr.dilations, pamr.std_unbiased) == (10, list(DILATIONS), True)
    assert pamr.extra_repr() == "iters=10, dilations=[1, 2, 4, 8, 12, 24], std_unbiased=True"


@pytest.mark.parametrize("iters", [True, 2.0, "3"])
def test_iterations_must_be_an_int(iters):
    with pytest.raises(WsssError, match=rf"^key 'train\.pamr_iters': {iters!r} must be a non-negative integer$"):
        PAMR(iters=iters)


@pytest.mark.parametrize("dilations", [(1, True), (1, 2.0), (1, "2")])
def test_dilations_must_be_ints(dilations):
    message = rf"^key 'train\.pamr_dilations': \[1, {dilations[1]!r}\] must be a non-empty list of positive integers$"
    with pytest.raises(WsssError, match=message):
        PAMR(dilations=dilations)
