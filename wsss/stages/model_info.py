"""``wsss model-info``: parameter counts and output shapes of the configured model, as JSON.

Needs neither weights nor a GPU: the model is built on PyTorch's meta device (shapes only, no
memory, no arithmetic); should an operation lack a meta implementation, a CPU forward in eval
mode is used instead.
"""

from __future__ import annotations

import json
import logging

import torch

from wsss.config import num_classes
from wsss.model.network import build_model, describe

log = logging.getLogger(__name__)


def _millions(n: int) -> float:
    return round(n / 1e6, 2)


def _count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _shapes(cfg: dict, size: tuple[int, int], device: str) -> tuple[torch.nn.Module, dict]:
    with torch.device(device):
        model = build_model(cfg, load_weights=False).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *size))
    shapes = {
        "deep": list(out["features"]["deep"].shape[1:]),
        "shallow": list(out["features"]["shallow"].shape[1:]),
        "logits": list(out["logits"].shape[1:]),
        "cls": list(out["cls"].shape[1:]),
    }
    return model, shapes


def info(cfg: dict, size: tuple[int, int] | None = None) -> dict:
    """The model-info record for ``cfg`` at input ``size`` (H, W); default ``train.crop_size`` square."""
    if size is None:
        size = (cfg["train"]["crop_size"], cfg["train"]["crop_size"])
    size = (int(size[0]), int(size[1]))
    try:
        model, shapes = _shapes(cfg, size, "meta")
    except (NotImplementedError, RuntimeError) as exc:
        log.info("meta-device forward failed (%s); using a CPU forward", exc)
        model, shapes = _shapes(cfg, size, "cpu")
    parts = {name: _millions(_count(child)) for name, child in model.named_children() if _count(child)}
    return {
        "dataset": cfg["data"]["name"],
        **describe(cfg),
        "num_classes": num_classes(cfg),
        "params_total_m": _millions(_count(model)),
        "params_trainable_m": _millions(_count(model, trainable_only=True)),
        "params_by_module_m": parts,
        "input": [1, 3, *size],
        "shapes": shapes,
    }


def run(cfg: dict, args) -> None:
    size = getattr(args, "size", None)
    print(json.dumps(info(cfg, tuple(size) if size else None), indent=2))
