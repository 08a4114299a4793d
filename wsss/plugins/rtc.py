"""RTC (representation, transform, compensator; Wang, Zhang, Yan, TCSVT 2024) as a training plug-in.

The parts that fit the single-stage network (``plugins.rtc``; spec: seed-methods.md, "RTC"):

- **transform**: a second view, the crop resized to ``view_size`` x ``view_size``, through the same
  network; ``equiv``: L1 between the two views' max-normalised CAMs; ``cross``: each view's CAM
  against the other view's detached arg-max CAM, over the top ``cross_top`` (20 %) errors;
- **representation**: ``contrast``, a pixel-to-prototype InfoNCE on 256-d L2-normalised projections
  of the deep features at ``proj_size`` x ``proj_size`` (16): prototypes are the CAM-weighted means
  of the *other* view's projections at each class's top HW/8 CAM positions over the batch; pixel
  labels are the arg-max of [``contrast_bg``, CAM]; three terms (intra-view, cross pseudo-label,
  cross prototype), each averaged over both views, temperature 0.1, weight 0.1 each;
- **compensator**: ``struct``, each present class's CAM plus an attention over the batch's top
  positions of that class (global context) propagating their CAM values; L1 between the arg-max
  CAMs of the compensated and the raw CAM over the top ``struct_top`` (80 %) errors;
- **pseudo-labels** with two background thresholds (``pseudo_bg_high`` 0.55, ``pseudo_bg_low``
  0.20) on the max-normalised refined masks: a pixel keeps its label where both agree, else ignored.

Which map plays the CAM: the network's ``masks`` (softmax over [constant background logit,
foreground logits]) without the background channel, max-normalised per image and class and zeroed
for absent classes; the background channel is ``1 - max`` over the foreground. They are what
WS-FCN's classification score and pseudo-labels are made of, so RTC's terms act on the same maps.
The cross-representation refinement of RTC (two affinity propagations) is not part of this
plug-in: WS-FCN's PAMR plays that role.

Reading of the public RTC code (``contrast_train.py``), not copied: the arg-max CAM keeps the
winning class's value (so the terms have gradients through it); prototypes and attention use
detached projections, the anchors of the InfoNCE live ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import WsssError
from wsss.model.layers import resize_to
from wsss.plugins.base import Step, TrainingPlugin, top_fraction_mean


def max_norm(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """Each (image, class) map divided by its spatial maximum (ReLU first); (B, K, H, W) -> same."""
    cam = F.relu(cam)
    return cam / (cam.flatten(2).amax(-1)[:, :, None, None] + eps)


def rtc_cam(masks: Tensor, labels: Tensor) -> Tensor:
    """RTC's CAM of WS-FCN masks (or of a compensated CAM), (B, C, h, w) -> same: [1 - max fg,
    max-normalised foreground channels of the present classes]; ``labels`` (B, C-1) multi-hot."""
    fg = max_norm(masks[:, 1:].float()) * labels.float()[:, :, None, None]
    return torch.cat([1.0 - fg.amax(1, keepdim=True), fg], dim=1)


def argmax_keep(cam: Tensor) -> Tensor:
    """Each pixel's winning class keeps its value, every other class 0 (RTC's "max one-hot"); a tie goes
    to the first class. ``max(1).indices`` is ``argmax(1)`` (both take the first maximum), several times faster
    on channel-first CPU tensors."""
    return cam * F.one_hot(cam.max(1).indices, cam.shape[1]).permute(0, 3, 1, 2)


def pixel_labels(cam: Tensor, bg: float) -> Tensor:
    """(B, h, w) arg-max of [bg, foreground CAMs]: 0 is background."""
    fg = cam[:, 1:]
    return torch.cat([fg.new_full((fg.shape[0], 1, *fg.shape[2:]), bg), fg], 1).max(1).indices


def prototypes(cam: Tensor, features: Tensor, k: int) -> Tensor:
    """Class prototypes (C, D): for each class, the CAM-weighted mean of ``features`` (B, D, h, w) at the
    top-``k`` positions of ``cam`` (B, C, h, w) over the whole batch, L2-normalised (so the mean's
    denominator, a positive factor per class, cancels and is left out)."""
    scores = cam.transpose(0, 1).flatten(1)  # (C, B*h*w)
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*h*w, D)
    values, index = scores.topk(k)
    return F.normalize((values[:, :, None] * flat[index]).sum(1))


def compensate(cam: Tensor, features: Tensor, labels: Tensor, k: int) -> Tensor:
    """RTC's compensator: each present class's CAM plus softmax-attention of every position's
    normalised feature over that class's top-``k`` positions of the batch, carrying their CAM values.
    ``cam`` (B, C, h, w) with background first, ``features`` (B, D, h, w); absent classes are unchanged."""
    b, c, h, w = cam.shape
    flat = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))  # (B*h*w, D), unit rows
    out = cam.clone()
    present = labels.sum(0) > 0
    for cls in range(1, c):
        if not bool(present[cls - 1]):
            continue
        values, index = cam[:, cls].flatten().topk(k)
        attention = torch.softmax(flat @ flat[index].t(), dim=1)  # (B*h*w, k)
        out[:, cls] = cam[:, cls] + (attention @ values).view(b, h, w)
    return out


class RTC(TrainingPlugin):
    name = "rtc"
    terms = ("equiv", "cross", "contrast", "struct")
    methods = ("single_stage",)

    def __init__(self, cfg: dict, network: nn.Module):
        super().__init__(cfg)
        self.projection = nn.Conv2d(network.backbone.deep_channels, self.settings["proj_dim"], 1)

    @classmethod
    def check(cls, cfg: dict) -> None:
        s = cfg["plugins"]["rtc"]
        if not s["pseudo_bg_low"] <= s["pseudo_bg_high"]:
            raise WsssError(f"key 'plugins.rtc.pseudo_bg_low' ({s['pseudo_bg_low']}) must not exceed "
                            f"'plugins.rtc.pseudo_bg_high' ({s['pseudo_bg_high']})")

    def extra_views(self, images: Tensor, raw: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        size = (self.settings["view_size"],) * 2
        return {"rtc_view": (resize_to(images, size), resize_to(raw, size))}

    def adjust_pseudo(self, pseudo: Tensor, refined: Tensor, labels: Tensor) -> Tensor:
        """Labels of [threshold, max-normalised refined foreground masks] at both thresholds; disagreement -> ignore."""
        ignore = int(self.cfg["eval"]["ignore_index"])
        cam = rtc_cam(refined, labels)
        high = pixel_labels(cam, self.settings["pseudo_bg_high"])
        low = pixel_labels(cam, self.settings["pseudo_bg_low"])
        return torch.where(high == low, high, torch.full_like(high, ignore))

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        s = self.settings
        labels = step.labels
        out1, out2 = step.outputs["crop"], step.outputs["rtc_view"]
        cam2 = rtc_cam(out2["masks"], labels)
        cam1 = rtc_cam(resize_to(out1["masks"].float(), tuple(cam2.shape[2:])), labels)
        equiv = (cam1[:, 1:] - cam2[:, 1:]).abs().mean()
        cross = (top_fraction_mean_per_image(argmax_keep(cam2.detach()) - cam1, s["cross_top"])
                 + top_fraction_mean_per_image(argmax_keep(cam1.detach()) - cam2, s["cross_top"]))

        grid = (s["proj_size"],) * 2
        proj1 = F.normalize(resize_to(self.projection(out1["features"]["deep"].float()), grid))  # unit over channels
        proj2 = F.normalize(resize_to(self.projection(out2["features"]["deep"].float()), grid))
        small1, small2 = resize_to(cam1, grid), resize_to(cam2, grid)
        k = max(1, s["proj_size"] ** 2 // 8)  # RTC's HW/8 positions (at least one)
        with torch.no_grad():
            proto1 = prototypes(small1, proj2.detach(), k)  # view 1's positions, view 2's features
            proto2 = prototypes(small2, proj1.detach(), k)
        lab1, lab2 = pixel_labels(small1, s["contrast_bg"]).flatten(), pixel_labels(small2, s["contrast_bg"]).flatten()
        anchors1 = proj1.permute(0, 2, 3, 1).reshape(-1, proj1.shape[1])
        anchors2 = proj2.permute(0, 2, 3, 1).reshape(-1, proj2.shape[1])
        t = s["temperature"]
        contrast = ((prototype_nce(anchors1, proto1, lab1, t) + prototype_nce(anchors2, proto2, lab2, t)) / 2  # intra-view
                    + (prototype_nce(anchors1, proto1, lab2, t) + prototype_nce(anchors2, proto2, lab1, t)) / 2  # cross label
                    + (prototype_nce(anchors1, proto2, lab1, t) + prototype_nce(anchors2, proto1, lab2, t)) / 2)  # cross prototype

        with torch.no_grad():
            comp1 = compensate(small1.detach(), proj1.detach(), labels, k)
            comp2 = compensate(small2.detach(), proj2.detach(), labels, k)
        struct = (top_fraction_mean_per_image(
                      argmax_keep(rtc_cam(resize_to(comp1, tuple(cam1.shape[2:])), labels))[:, 1:]
                      - argmax_keep(cam1)[:, 1:], s["struct_top"])
                  + top_fraction_mean_per_image(
                      argmax_keep(rtc_cam(resize_to(comp2, tuple(cam2.shape[2:])), labels))[:, 1:]
                      - argmax_keep(cam2)[:, 1:], s["struct_top"]))
        return {"equiv": (equiv, s["equiv_weight"]), "cross": (cross, s["cross_weight"]),
                "contrast": (contrast, s["contrast_weight"]), "struct": (struct, s["struct_weight"])}


def top_fraction_mean_per_image(diff: Tensor, fraction: float) -> Tensor:
    """Mean over images of the mean of each image's top ``fraction`` absolute errors (all channels, pixels)."""
    return torch.stack([top_fraction_mean(d.abs(), fraction) for d in diff]).mean()


def prototype_nce(anchors: Tensor, protos: Tensor, target: Tensor, temperature: float) -> Tensor:
    """InfoNCE of every anchor (N, D) against its class prototype ``protos[target]`` (target (N,)
    class indices) among all prototypes (C, D): cross-entropy of the similarities / temperature."""
    logits = anchors @ protos.t() / temperature
    return F.cross_entropy(logits, target)
