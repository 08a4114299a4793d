import math

import pytest
import torch

from wsss.errors import WsssError
from wsss.model.scores import class_scores, classification_loss, focal_penalty, ngwp


def test_ngwp_hand_computed():
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, 3.0]]]])  # (1, 2, 1, 2)
    masks = torch.tensor([[[[0.5, 0.75]], [[0.5, 0.25]]]])
    got = ngwp(logits, masks)
    # background: (0*0.5 + 2*0.75) / (1 + 1.25); class 1: (1*0.5 + 3*0.25) / (1 + 0.75)
    assert torch.allclose(got, torch.tensor([[1.5 / 2.25, 1.25 / 1.75]]))


def test_focal_penalty_values():
    mbar = torch.tensor([0.0, 0.5, 1.0, 0.625])
    got = focal_penalty(mbar, 3.0, 0.01)
    expected = torch.tensor([math.log(0.01), 0.125 * math.log(0.51), 0.0, 0.375**3 * math.log(0.635)])
    assert torch.allclose(got, expected)
    # p = 0 leaves the plain log; lambda shifts the log argument
    assert torch.allclose(focal_penalty(torch.tensor([0.2]), 0.0, 0.1), torch.tensor([math.log(0.3)]))


def test_class_scores_hand_computed():
    # background logit 0, foreground logits 0 and ln 3: the foreground softmax is 0.5 and 0.75
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    masks = logits.softmax(1)
    got = class_scores(logits, masks, focal_p=3.0, focal_lambda=0.01)
    pooled = (0.75 * math.log(3.0)) / (1 + 1.25)
    penalty = (1 - 0.625) ** 3 * math.log(0.01 + 0.625)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(pooled + penalty, rel=1e-6)


def test_class_scores_shape_and_foreground_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 3)
    masks = logits.softmax(1)
    got = class_scores(logits, masks, 3.0, 0.01)
    assert got.shape == (2, 4)
    full = ngwp(logits, masks) + focal_penalty(masks.mean((2, 3)), 3.0, 0.01)
    assert torch.allclose(got, full[:, 1:])


def test_class_scores_bad_input():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(WsssError, match="model.focal_lambda"):
        class_scores(logits, logits.softmax(1), 3.0, 0.0)
    with pytest.raises(WsssError, match="differ in shape"):
        class_scores(logits, torch.zeros(1, 2, 2, 2), 3.0, 0.01)


def test_classification_loss_is_multilabel_soft_margin():
    scores = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.5, -3.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    sig = torch.sigmoid
    per = -(labels * torch.log(sig(scores)) + (1 - labels) * torch.log(sig(-scores)))
    assert classification_loss(scores, labels).item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_focal_constants_are_checked_at_their_bounds_and_named():
    logits = torch.zeros(1, 3, 2, 2)
    for p in (0.0, 0.5):  # p = 0 turns the penalty's size factor off; any p >= 0 is allowed
        assert class_scores(logits, logits.softmax(1), p, 0.01).shape == (1, 2)
    with pytest.raises(WsssError, match=r"^key 'model.focal_p': -0.5 must be >= 0$"):
        class_scores(logits, logits.softmax(1), -0.5, 0.01)
    with pytest.raises(WsssError, match=r"^key 'model.focal_lambda': 0.0 must be > 0$"):
        class_scores(logits, logits.softmax(1), 3.0, 0.0)


def test_shape_errors_name_the_shapes():
    flat = torch.zeros(1, 3, 4)  # three dimensions, though with C >= 2
    with pytest.raises(WsssError, match=r"^class_scores: logits must be \(B, C>=2, h, w\), got \(1, 3, 4\)$"):
        class_scores(flat, flat, 3.0, 0.01)
    with pytest.raises(WsssError, match=r"got \(1, 1, 2, 2\)$"):
        class_scores(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 3.0, 0.01)
    with pytest.raises(WsssError, match=r"^classification_loss: scores \(3,\) and labels \(3,\) must both be \(B, C-1\)$"):
        classification_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(WsssError, match=r"^classification_loss: scores \(1, 3\) and labels \(1, 2\) must both be \(B, C-1\)$"):
        classification_loss(torch.zeros(1, 3), torch.zeros(1, 2))
