"""The full networks: the single-stage model (SSSS / WS-FCN and their ablations) and the CAM baseline.

Forward contract, for an input ``(B, 3, H, W)`` normalised with ImageNet mean/std; ``C`` classes
including background (channel 0); ``(h, w)`` the size of the shallow (OS 4) features:

- ``logits``: ``(B, C, h, w)``, background first;
- ``masks``: ``(B, C, h, w)``, per-pixel class probabilities (background first);
- ``cls``: ``(B, C-1)``, foreground class scores (logits for a multi-label soft-margin loss);
- ``features``: ``{"shallow": ..., "deep": ...}`` from the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import num_classes
from wsss.errors import WsssError
from wsss.model.backbones.vit import ViT
from wsss.model.backbones import Backbone, build_backbone
from wsss.model.context import build_context, context_name
from wsss.model.fusion import build_fusion, fusion_name
from wsss.model.gate import StochasticGate
from wsss.model.layers import conv_bn_relu, kaiming_init, resize_to
from wsss.model.scores import class_scores

METHODS = ("single_stage", "cam")


class _Network(nn.Module):
    backbone: Backbone

    def pretrained_parameter_names(self) -> set[str]:
        """Full names of the parameters that come from the (ImageNet) backbone; all others are new."""
        return {f"backbone.{name}" for name in self.backbone.pretrained_parameter_names()}


class SingleStageNet(_Network):
    """backbone -> context -> fusion -> stochastic gate -> two 3x3 conv-BN-ReLU (Dropout 0.5, 0.1)
    -> 1x1 conv to the C-1 foreground logits, with a constant background logit prepended."""

    def __init__(self, backbone: Backbone, context: nn.Module, fusion: nn.Module, classes: int,
                 width: int, psi: float, bg_logit: float, focal_p: float, focal_lambda: float):
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.fusion = fusion
        self.gate = StochasticGate(psi)
        self.decoder = nn.Sequential(
            conv_bn_relu(width, width, 3), nn.Dropout(0.5),
            conv_bn_relu(width, width, 3), nn.Dropout(0.1),
            nn.Conv2d(width, classes - 1, 1),
        )
        kaiming_init(self.decoder)
        classifier = self.decoder[-1]  # the public code sets only its weight: the bias keeps PyTorch's default
        bound = 1.0 / classifier.weight[0].numel() ** 0.5
        nn.init.uniform_(classifier.bias, -bound, bound)
        self.bg_logit = float(bg_logit)
        self.focal_p = float(focal_p)
        self.focal_lambda = float(focal_lambda)

    def forward(self, x: torch.Tensor) -> dict:
        feats = self.backbone(x)
        x1, x2 = self.fusion(feats["shallow"], self.context(feats["deep"]))
        fg = self.decoder(self.gate(x1, x2))
        bg = fg.new_full((fg.shape[0], 1, *fg.shape[2:]), self.bg_logit)
        logits = torch.cat([bg, fg], 1)
        masks = F.softmax(logits.float(), dim=1)
        cls = class_scores(logits, masks, self.focal_p, self.focal_lambda)
        return {"logits": logits, "masks": masks, "cls": cls, "features": feats}


class CAMNet(_Network):
    """Plain CAM baseline: a bias-free 1x1 classifier on the deep features.

    ``cls`` = classifier(GAP(Dropout2d(deep))); the CAMs (classifier on deep) are upsampled to the
    shallow size; ``masks[:, 1:]`` = ReLU(CAM) normalised by its spatial max, ``masks[:, 0]`` =
    1 - max over the foreground; ``logits`` = [constant background logit, raw CAMs].
    """

    def __init__(self, backbone: Backbone, classes: int, bg_logit: float):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout2d(0.5)
        self.classifier = nn.Conv2d(backbone.deep_channels, classes - 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.bg_logit = float(bg_logit)

    def forward(self, x: torch.Tensor) -> dict:
        feats = self.backbone(x)
        deep = feats["deep"]
        cls = self.classifier(self.dropout(deep).mean(dim=(2, 3), keepdim=True)).flatten(1)
        cams = resize_to(self.classifier(deep), feats["shallow"].shape[-2:])
        fg = F.relu(cams.float())
        fg = fg / (1e-5 + fg.amax(dim=(2, 3), keepdim=True))
        masks = torch.cat([1.0 - fg.amax(dim=1, keepdim=True), fg], 1)
        bg = cams.new_full((cams.shape[0], 1, *cams.shape[2:]), self.bg_logit)
        logits = torch.cat([bg, cams], 1)
        return {"logits": logits, "masks": masks, "cls": cls, "features": feats}


def build_model(cfg: dict, load_weights: bool = True) -> _Network:
    """The network ``cfg`` (a resolved configuration) describes.

    With ``load_weights`` (the default) and ``model.pretrained`` the backbone's ImageNet weights
    are loaded (``wsss.model.weights.load_pretrained``); pass ``load_weights=False`` to get a
    randomly initialised model, e.g. before loading a checkpoint.
    """
    model_cfg = cfg["model"]
    classes = num_classes(cfg)
    backbone = build_backbone(model_cfg)
    if isinstance(backbone, ViT) and cfg["train"]["crop_size"] % backbone.output_stride:
        raise WsssError(f"key 'train.crop_size': {cfg['train']['crop_size']} is not a multiple of the "
                        f"{model_cfg['backbone']} backbone's patch stride {backbone.output_stride}")
    method = model_cfg["method"]
    if method == "single_stage":
        width = model_cfg["head_channels"]
        model: _Network = SingleStageNet(
            backbone,
            build_context(model_cfg, backbone.deep_channels),
            build_fusion(model_cfg, backbone.shallow_channels),
            classes, width, model_cfg["psi"], model_cfg["bg_logit"],
            model_cfg["focal_p"], model_cfg["focal_lambda"],
        )
    elif method == "cam":
        model = CAMNet(backbone, classes, model_cfg["bg_logit"])
    else:
        raise WsssError(f"key 'model.method': unknown method {method!r} (valid: {', '.join(METHODS)})")
    if load_weights:
        from wsss.model.weights import load_pretrained

        load_pretrained(model.backbone, cfg)
    return model


def describe(cfg: dict) -> dict[str, str]:
    """The module names a configuration resolves to (``auto`` expanded)."""
    model_cfg = cfg["model"]
    if model_cfg["method"] == "cam":
        return {"method": "cam", "backbone": model_cfg["backbone"], "context": "none", "fusion": "none"}
    return {"method": model_cfg["method"], "backbone": model_cfg["backbone"],
            "context": context_name(model_cfg), "fusion": fusion_name(model_cfg)}
