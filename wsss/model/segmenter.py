"""The second stage's fully supervised network: torchvision's DeepLabV3, trained on pseudo-masks.

``retrain.network`` names one of torchvision's builders (``torchvision.models.segmentation``):
``deeplabv3_resnet101`` (the VOC / COCO presets: the field's second stage is a DeepLab on a
ResNet-101), ``deeplabv3_resnet50``, ``deeplabv3_mobilenet_v3_large`` (the toy preset: small enough
for a CPU) or ``lraspp_mobilenet_v3_large`` (LR-ASPP, 3.2 M parameters, about 2.5x faster a step
than the DeepLabV3-MobileNetV3 on one CPU thread: the ablation benchmark's second stage). Built
without the auxiliary head, with ``num_classes`` outputs (background included);
with ``retrain.pretrained`` the backbone starts from ImageNet weights: the file ``retrain.weights``
(torchvision's ResNet ImageNet file, e.g. ``resnet101-63fe2227.pth``), else torchvision's own weights
from the torch hub cache. The head is always new.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import segmentation

from wsss import config as params
from wsss.errors import WsssError

NETWORKS = ("deeplabv3_resnet101", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
_RESNETS = {"deeplabv3_resnet101": "resnet101", "deeplabv3_resnet50": "resnet50"}


class Segmenter(nn.Module):
    """A torchvision segmentation network with the output keys the inference stage reads.

    ``forward(images (B, 3, H, W))`` -> ``{"logits": (B, C, H, W), "masks": softmax over C}``, at the
    input size (torchvision upsamples bilinearly inside the network).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        logits = self.net(images)["out"]
        return {"logits": logits, "masks": torch.softmax(logits.float(), dim=1)}

    def pretrained_parameter_names(self) -> set[str]:
        """The backbone's parameters (ImageNet-initialised when pretrained); the head's are new."""
        return {f"net.backbone.{name}" for name, _ in self.net.backbone.named_parameters()}


def build_segmenter(cfg: dict, load_weights: bool = True) -> Segmenter:
    """The network of ``cfg['retrain']``; with ``load_weights`` and ``retrain.pretrained`` its ImageNet backbone."""
    r = cfg["retrain"]
    name = r["network"]
    if name not in NETWORKS:
        raise WsssError(f"key 'retrain.network': {name!r} is not allowed (allowed: {', '.join(NETWORKS)})")
    net = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=params.num_classes(cfg),
                                      aux_loss=False)
    if r["weights"] and not r["pretrained"]:
        raise WsssError("key 'retrain.weights' is set but retrain.pretrained is false: set -S retrain.pretrained=true "
                        "to load it, or -S retrain.weights=null")
    model = Segmenter(net)
    if load_weights and r["pretrained"]:
        load_imagenet_backbone(model, name, r["weights"])
    return model


def load_imagenet_backbone(model: Segmenter, name: str, weights: str | None) -> None:
    """torchvision's ImageNet ResNet weights into the backbone: from the file ``weights``, else the hub cache."""
    if name not in _RESNETS:
        raise WsssError(f"key 'retrain.pretrained': no ImageNet weights are wired for {name!r}; "
                        f"use {' or '.join(_RESNETS)}, or set -S retrain.pretrained=false")
    from wsss.model.weights import load_backbone_weights, load_torchvision_imagenet

    if weights:
        if not Path(weights).is_file():
            raise WsssError(f"key 'retrain.weights': {weights} is not a file")
        load_backbone_weights(model.net.backbone, weights, key="retrain.weights")
        return
    load_torchvision_imagenet(model.net.backbone, _RESNETS[name], "retrain")
