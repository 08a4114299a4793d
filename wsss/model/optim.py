"""Optimiser parameter groups: pretrained/new x weights/biases, with LR multipliers and weight decay on weights only."""

from __future__ import annotations

import torch
from torch import nn

GROUP_NAMES = ("pretrained_weights", "pretrained_biases", "new_weights", "new_biases")


def param_groups(model: nn.Module, cfg: dict, extra: nn.Module | None = None, section: str = "train") -> list[dict]:
    """Four SGD parameter groups, in the order of ``<section>.lr_mults`` (``train``; ``retrain`` for the second stage):
    pretrained weights, pretrained biases, new weights, new biases.

    "Pretrained" means a backbone parameter (``model.pretrained_parameter_names()``), "bias" a
    parameter whose name ends in ``bias``. Each group has ``lr = train.lr * mult`` (and its
    ``lr_mult``); weight decay ``train.weight_decay`` applies to the weight groups only.
    Frozen parameters (``requires_grad`` false) are left out. Groups may be empty. ``extra``: more
    trainable modules (training plug-ins' heads), whose parameters are new layers, after the model's.
    """
    train = cfg[section]
    lr, wd, mults = float(train["lr"]), float(train["weight_decay"]), train["lr_mults"]
    pretrained = model.pretrained_parameter_names()
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        origin = "pretrained" if name in pretrained else "new"
        kind = "biases" if name.endswith("bias") else "weights"
        buckets[f"{origin}_{kind}"].append(param)
    for name, param in (extra.named_parameters() if extra is not None else ()):
        if param.requires_grad:
            buckets["new_biases" if name.endswith("bias") else "new_weights"].append(param)
    groups = []
    for name, mult in zip(GROUP_NAMES, mults):
        groups.append({
            "name": name,
            "params": buckets[name],
            "lr": lr * float(mult),
            "lr_mult": float(mult),
            "weight_decay": wd if name.endswith("weights") else 0.0,
        })
    return groups


def build_optimizer(model: nn.Module, cfg: dict, extra: nn.Module | None = None, section: str = "train") -> torch.optim.SGD:
    """SGD with momentum ``<section>.momentum`` and base LR ``<section>.lr`` over ``param_groups``."""
    train = cfg[section]
    return torch.optim.SGD(param_groups(model, cfg, extra, section), lr=float(train["lr"]),
                           momentum=float(train["momentum"]))
