"""Backbone registry: ``build_backbone(model_cfg)`` by ``model.backbone``."""

from __future__ import annotations

from typing import Callable

from wsss.errors import WsssError
from wsss.model.backbones.base import Backbone
from wsss.model.backbones.resnet import ResNet
from wsss.model.backbones.small import SmallNet
from wsss.model.backbones.vit import VARIANTS as VIT_VARIANTS, ViT
from wsss.model.backbones.wr38 import WR38

BACKBONES: dict[str, Callable[[], Backbone]] = {
    "wr38": WR38,
    "resnet50": lambda: ResNet("resnet50"),
    "resnet101": lambda: ResNet("resnet101"),
    "small": SmallNet,
    **{name: (lambda name=name: ViT(name)) for name in VIT_VARIANTS},
}


def build_backbone(model_cfg: dict) -> Backbone:
    """The backbone named by ``model.backbone``, with ``model.freeze_bn`` / ``model.freeze_early`` applied.

    No weights are loaded here (see ``wsss.model.weights``).
    """
    name = model_cfg["backbone"]
    if name not in BACKBONES:
        raise WsssError(f"key 'model.backbone': unknown backbone {name!r} (valid: {', '.join(BACKBONES)})")
    backbone = BACKBONES[name]()
    return backbone.set_freezing(model_cfg.get("freeze_bn", False), model_cfg.get("freeze_early", False))


__all__ = ["BACKBONES", "Backbone", "build_backbone"]
