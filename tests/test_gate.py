"""The stochastic gate: unbiased in training, a fixed mix at test time."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import WsssError
from wsss.model.gate import StochasticGate


def test_training_expectation_is_the_deep_input():
    torch.manual_seed(0)
    gate = StochasticGate(psi=0.3).train()
    x1 = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    x2 = torch.tensor([[4.0, 1.0, -1.0, 0.0]])
    n = 200_000
    out = gate(x1.expand(n, -1), x2.expand(n, -1))
    assert torch.allclose(out.mean(0), x1[0], atol=0.03)


def test_training_output_takes_two_values_with_rate_psi():
    torch.manual_seed(1)
    psi = 0.3
    gate = StochasticGate(psi).train()
    x1 = torch.full((100_000,), 2.0)
    x2 = torch.full((100_000,), -1.0)
    out = gate(x1, x2)
    kept = (2.0 - psi * -1.0) / (1 - psi)
    is_x2 = torch.isclose(out, torch.tensor(-1.0))
    is_kept = torch.isclose(out, torch.tensor(kept))
    assert bool((is_x2 | is_kept).all())
    assert is_x2.float().mean().item() == pytest.approx(psi, abs=0.01)


def test_eval_is_the_fixed_mix():
    gate = StochasticGate(psi=0.3).eval()
    x1, x2 = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    assert torch.allclose(gate(x1, x2), 0.7 * x1 + 0.3 * x2)
    assert torch.equal(gate(x1, x2), gate(x1, x2))


def test_psi_zero_passes_the_deep_input():
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(StochasticGate(0.0).train()(x1, x2), x1)


def test_gradients_flow_to_both_inputs():
    gate = StochasticGate(0.3).train()
    x1 = torch.randn(64, 64, requires_grad=True)
    x2 = torch.randn(64, 64, requires_grad=True)
    gate(x1, x2).sum().backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0


def test_invalid_psi():
    with pytest.raises(WsssError, match="model.psi"):
        StochasticGate(1.0)
