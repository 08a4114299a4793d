"""Flip-consistency of feature affinities: the CNN analogue of ACR, under its own name.

ACR (``wsss.plugins.acr``) needs a transformer's attention. On any backbone, this plug-in asks for
the crop flipped horizontally, un-flips the flipped view's deep features, and takes each view's
all-pairs affinity ``relu(cos(f_i, f_j))`` of the L2-normalised deep features ``(B, P, P)``; the
term ``affinity`` is the L1 between the two views' affinities (mean over the entries), weight
``affinity_weight``; ``cls_flip`` is the classification loss on the flipped view, weight
``flip_cls_weight``. It is our analogue, not a method of the literature: every constant is ours.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from wsss.model.scores import classification_loss
from wsss.plugins.base import Step, TrainingPlugin


def affinity(features: Tensor) -> Tensor:
    """``relu(cos)`` between every pair of positions of ``features`` (B, D, h, w): (B, h*w, h*w)."""
    flat = F.normalize(features.float().flatten(2))  # over the channels (F.normalize's default dim 1)
    return F.relu(flat.transpose(1, 2) @ flat)


class FlipAffinity(TrainingPlugin):
    name = "flip_affinity"
    terms = ("affinity", "cls_flip")
    methods = ("single_stage", "cam")

    def extra_views(self, images: Tensor, raw: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        return {"flip": (images.flip(-1), raw.flip(-1))}

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        s = self.settings
        crop, flip = step.outputs["crop"], step.outputs["flip"]
        mine = affinity(crop["features"]["deep"])
        theirs = affinity(flip["features"]["deep"].flip(-1))
        cls_flip = classification_loss(flip["cls"], step.labels)
        return {"affinity": ((mine - theirs).abs().mean(), s["affinity_weight"]),
                "cls_flip": (cls_flip, s["flip_cls_weight"])}
