"""MainNet / SupportNet (Yoon, Kweon et al., arXiv 2112.05351) as a training plug-in.

The trained network is the MainNet; the SupportNet is its EMA teacher (``wsss.plugins.teacher``,
``plugins.supportnet.momentum``). No public code exists; this is the spec's reading
(seed-methods.md, "Pixel-level self-supervision with MainNet / SupportNet"), every constant a key:

- **RCM** (regional contrastive module, term ``rcm``): the teacher's CAM of the crop (the masks'
  foreground channels max-normalised per image and class, absent classes zeroed, background
  ``1 - max``: ``wsss.plugins.rtc.rtc_cam``) gives each pixel of the deep-feature grid its class,
  the arg-max, where that value reaches ``region_threshold`` (else the pixel is in no region).
  The teacher's projections (an EMA copy of the projection head on the teacher's deep features,
  L2-normalised) averaged over each class's region over the batch are the class prototypes,
  background included. Every region pixel's projection of the trained network (a 1x1 head of
  ``proj_dim`` channels on the deep features, L2-normalised) is pulled to its class's prototype
  against the other prototypes: InfoNCE, ``temperature`` 0.1, weight ``rcm_weight`` 0.1. With
  fewer than two prototypes there is nothing to contrast and the term is 0.
- **MAM** (multi-scale attentive module, term ``mam``): the teacher runs on the crop resized to
  each of ``mam_scales`` (0.5, 1, 1.5, 2; bilinear); its foreground CAMs, resized to the trained
  network's mask size, are averaged into one target ``T``. The trained network's CAM ``S`` (the
  same map) is pulled toward it with L1, each pixel weighted by their dissimilarity ``1 - cos(S, T)``
  over the classes (detached), so that the pixels where the two disagree most, the less
  discriminative parts the teacher's larger views reach, count most; weight ``mam_weight``.

Ours, because the paper gives none: the momentum's default 0.999 (the mean teacher's), the region
threshold 0.5, the 128-d head, MAM's L1 with the cosine weighting and its weight 0.1, and the
use of the crop's own scales (no extra augmentation). docs/plugins.md lists them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import WsssError
from wsss.model.layers import resize_to
from wsss.plugins.base import Step, TrainingPlugin, zero_like_graph
from wsss.plugins.rtc import prototype_nce, rtc_cam
from wsss.plugins.teacher import EMATeacher, check_momentum


def regions(cam: Tensor, threshold: float) -> Tensor:
    """Each pixel's region, (B, h, w) int64: the arg-max class of ``cam`` (B, C, h, w; channel 0 the
    background) where its value is at least ``threshold``, else -1 (no region)."""
    value, cls = cam.max(1)
    return torch.where(value >= threshold, cls, torch.full_like(cls, -1))


def region_prototypes(features: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
    """Class prototypes from ``features`` (B, D, h, w) and ``region`` (B, h, w; -1 none): the classes
    with a region anywhere in the batch, sorted (K,), and the L2-normalised mean feature of each
    class's region pixels over the batch (K, D)."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    where = region.flatten()
    classes = where[where >= 0].unique()
    protos = torch.stack([flat[where == c].mean(0) for c in classes.tolist()]) if len(classes) else flat[:0]
    return classes, F.normalize(protos, dim=1)


def rcm_loss(student: Tensor, teacher: Tensor, region: Tensor, temperature: float) -> Tensor:
    """RCM: InfoNCE of every region pixel's ``student`` projection (B, D, h, w, L2-normalised along D)
    against the prototypes of ``teacher`` (B, D, h, w, likewise) over ``region`` (B, h, w)."""
    classes, protos = region_prototypes(teacher, region)
    if len(classes) < 2:
        return zero_like_graph(student)
    where = region.flatten()
    keep = where >= 0
    anchors = student.permute(0, 2, 3, 1).reshape(-1, student.shape[1])[keep]
    target = torch.searchsorted(classes, where[keep])  # the index of each pixel's class among the prototypes
    return prototype_nce(anchors, protos, target, temperature)


def fused_target(cams: list[Tensor], size: tuple[int, int]) -> Tensor:
    """MAM's target: the teacher's CAMs at several scales (each (B, K, h_s, w_s)) resized to ``size``
    and averaged, (B, K, h, w)."""
    return torch.stack([resize_to(cam, size) for cam in cams]).mean(0)


def mam_loss(student: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """MAM: mean over (B, K, h, w) of ``w * |S - T|`` with ``w = 1 - cos(S, T)`` over the K classes
    at each pixel, detached; ``student`` S and ``target`` T non-negative (B, K, h, w), so w in [0, 1]."""
    with torch.no_grad():
        weight = 1.0 - F.cosine_similarity(student, target, dim=1, eps=eps)  # (B, h, w)
    return (weight[:, None] * (student - target).abs()).mean()


class SupportNet(TrainingPlugin):
    name = "supportnet"
    terms = ("rcm", "mam")
    methods = ("single_stage",)

    def __init__(self, cfg: dict, network: nn.Module):
        super().__init__(cfg)
        s = self.settings
        self.head = nn.Conv2d(network.backbone.deep_channels, s["proj_dim"], 1)
        self.teacher = EMATeacher(network, s["momentum"])
        self.teacher_head = EMATeacher(self.head, s["momentum"])

    @classmethod
    def check(cls, cfg: dict) -> None:
        s = cfg["plugins"]["supportnet"]
        check_momentum(s["momentum"], "plugins.supportnet.momentum")
        if not s["mam_scales"]:
            raise WsssError("key 'plugins.supportnet.mam_scales': at least one scale")

    def after_step(self, network: nn.Module) -> None:
        self.teacher.update(network)
        self.teacher_head.update(self.head)

    def teacher_cams(self, images: Tensor, labels: Tensor) -> tuple[list[Tensor], dict]:
        """The teacher's CAMs (``rtc_cam``, background first) at every MAM scale, and its output on the crop."""
        cams, crop = [], None
        for scale in self.settings["mam_scales"]:
            size = (max(1, round(images.shape[2] * scale)), max(1, round(images.shape[3] * scale)))
            view = images if size == tuple(images.shape[2:]) else F.interpolate(images, size=size, mode="bilinear",
                                                                                  align_corners=False)
            out = self.teacher(view)
            cams.append(rtc_cam(out["masks"].float(), labels))
            if view is images:
                crop = out
        if crop is None:
            crop = self.teacher(images)
        return cams, crop

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        s = self.settings
        out = step.outputs["crop"]
        cams, teacher_out = self.teacher_cams(step.images, step.labels)

        deep = out["features"]["deep"].float()
        student = F.normalize(self.head(deep), dim=1)
        with torch.no_grad():
            t_deep = teacher_out["features"]["deep"].float()
            teacher = F.normalize(self.teacher_head(t_deep), dim=1)
            t_cam = resize_to(rtc_cam(teacher_out["masks"].float(), step.labels), tuple(deep.shape[2:]))
            region = regions(t_cam, s["region_threshold"])
        rcm = rcm_loss(student, teacher, region, s["temperature"])

        mine = rtc_cam(out["masks"].float(), step.labels)[:, 1:]
        target = fused_target([cam[:, 1:] for cam in cams], tuple(mine.shape[2:]))
        mam = mam_loss(mine, target)
        return {"rcm": (rcm, s["rcm_weight"]), "mam": (mam, s["mam_weight"])}
