"""The speed keys: channels-last memory, torch.compile and bf16 inference compute what the defaults do,
to float (or bf16) rounding, and the weights they save are the eager network's.

Dropout and the stochastic gate draw their masks in the tensor's memory order (and under
torch.compile from another generator), so the training comparisons take those random layers out
in both runs, as tests/ddp_run.py does."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAINING, small_toy_data_cfg
from wsss import config
from wsss.engine import trainer
from wsss.model.network import build_model
from wsss.paths import for_config
from wsss.stages.infer import predict

REPO = Path(__file__).resolve().parents[1]
# a low learning rate: at the toy's 0.05 this tiny run amplifies rounding (tests/test_distributed.py)
STABLE = [*TINY_TRAINING, "presets.toy.train.lr=0.0005"]


def pretrain(toy_root: Path, results: Path, *changes: str) -> tuple[list[dict], dict]:
    """A one-epoch pretrain with the network's random layers taken out."""
    from wsss.model.gate import StochasticGate

    cfg = config.load([REPO / "params.yaml"], [*STABLE, *changes])
    cfg["data"] = small_toy_data_cfg(toy_root.parent)
    paths = for_config(cfg, results)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
        patch.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
        patch.setattr(StochasticGate, "forward", lambda self, x1, x2: (1.0 - self.psi) * x1 + self.psi * x2)
        trainer.run(cfg, trainer.phase_for("pretrain", cfg, paths), paths)
    with open(paths.train_log("pretrain")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows, torch.load(paths.checkpoint("pretrain"), weights_only=False)["model"]


def assert_same(a: tuple[list[dict], dict], b: tuple[list[dict], dict], tol: float) -> None:
    assert len(a[0]) == len(b[0]) == 6
    for x, y in zip(a[0], b[0]):
        assert abs(float(x["loss"]) - float(y["loss"])) <= tol
    assert a[1].keys() == b[1].keys()  # the same state-dict names: checkpoints interchangeable
    gap = max((a[1][k].float() - b[1][k].float()).abs().max().item() for k in a[1])
    assert gap <= tol


@pytest.fixture(scope="module")
def eager(toy_root, tmp_path_factory):
    return pretrain(toy_root, tmp_path_factory.mktemp("eager"))


def test_channels_last_trains_the_same_network(toy_root, tmp_path, eager):
    ours = pretrain(toy_root, tmp_path, "train.channels_last=true")
    assert_same(ours, eager, tol=1e-4)


@pytest.mark.slow
def test_compile_trains_the_same_network_and_saves_the_eager_weights(toy_root, tmp_path, eager):
    ours = pretrain(toy_root, tmp_path, "train.compile=true")
    assert not any(k.startswith("_orig_mod") for k in ours[1])
    assert_same(ours, eager, tol=1e-4)


@pytest.fixture(scope="module")
def toy_model():
    cfg = config.load([REPO / "params.yaml"], [])
    torch.manual_seed(0)
    return build_model(cfg, load_weights=False).eval()


def image() -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_bf16_inference_is_close_to_float32_but_not_equal(toy_model):
    masks, scores = predict(toy_model, image(), [1.0, 0.5], True, 4)
    low, low_scores = predict(toy_model, image(), [1.0, 0.5], True, 4, amp=True)
    assert low.dtype == torch.float32 and low.shape == masks.shape
    assert not torch.equal(low, masks)  # the forward really ran in bf16
    assert (low - masks).abs().max() < 0.05 and (low_scores - scores).abs().max() < 0.05


def test_channels_last_inference_is_float32_inference(toy_model):
    masks, scores = predict(toy_model, image(), [1.0, 0.5], True, 4)
    model = toy_model.to(memory_format=torch.channels_last)
    try:
        ours, our_scores = predict(model, image(), [1.0, 0.5], True, 4, channels_last=True)
    finally:
        toy_model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(ours, masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_scores, scores, atol=1e-5, rtol=1e-5)
