"""ACR: all-pairs consistency regularisation (Sun et al., 2023) as a training plug-in on a ViT backbone.

(spec: seed-methods.md, "ACR"). The second view is the crop flipped horizontally, through the same
network. For every block, the head-averaged attention ``(B, N, N)`` of the flipped view is
un-flipped (its token order mapped back: ``unflip_attention``) and compared with the crop's:

- ``cls_attention``: L1 between the two views' class-token-to-patch attention (row 0, columns 1..),
  weight ``attention_weight`` 125;
- ``affinity``: L1 between their patch-to-patch attention (rows and columns 1..), weight
  ``affinity_weight`` 125;
- ``cls_flip``: the classification loss (multi-label soft margin, as the network's own) on the
  flipped view, weight ``flip_cls_weight`` 1: with the network's term on the crop, both views'.

Each L1 is the mean over its entries, averaged over the blocks (ours: the paper sums "for all
blocks" without saying how the blocks are combined; the mean keeps the weight 125 independent of
the depth). ACR's localisation (the positive part of the class score's gradient with respect to
the attention) is an inference option, ``infer.localisation: acr`` (``wsss.model.acr_cam``).

ACR needs a transformer's attention: on a CNN backbone it is refused before training. The CNN
analogue, flip-consistency of the deep features' affinities, is a plug-in of its own name,
``plugins.flip_affinity`` (``wsss.plugins.flip_affinity``), never called ACR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsss.errors import WsssError
from wsss.model.backbones.vit import prefix_tokens
from wsss.model.scores import classification_loss
from wsss.plugins.base import Step, TrainingPlugin

VIT_BACKBONES = ("vit_toy", "vit_b16", "vit_hybrid")


def unflip_order(grid_h: int, grid_w: int, prefix: int = 1) -> Tensor:
    """The token permutation that maps a horizontally flipped image's tokens back to the original's
    positions: ``order[k]`` is the flipped view's index of the original token ``k`` (prefix tokens, the
    class token, stay in place); its own inverse."""
    cols = torch.arange(grid_w)
    patch = (torch.arange(grid_h)[:, None] * grid_w + (grid_w - 1 - cols)[None, :]).flatten() + prefix
    return torch.cat([torch.arange(prefix), patch])


def unflip_attention(attention: Tensor, grid_h: int, grid_w: int, prefix: int = 1) -> Tensor:
    """``attention`` (..., N, N) of the flipped view in the original view's token order, rows and columns."""
    order = unflip_order(grid_h, grid_w, prefix).to(attention.device)
    return attention[..., order, :][..., :, order]


def acr_terms(crop: list[Tensor], flipped: list[Tensor], grid: tuple[int, int], prefix: int = 1) -> tuple[Tensor, Tensor]:
    """(class-token attention L1, affinity L1), each averaged over the blocks, from every block's attention
    ``(B, heads, N, N)`` of the crop and of its flip."""
    cls_terms, aff_terms = [], []
    for a, b in zip(crop, flipped):
        a = a.float().mean(1)
        b = unflip_attention(b.float().mean(1), *grid, prefix)
        cls_terms.append((a[:, 0, prefix:] - b[:, 0, prefix:]).abs().mean())
        aff_terms.append((a[:, prefix:, prefix:] - b[:, prefix:, prefix:]).abs().mean())
    return torch.stack(cls_terms).mean(), torch.stack(aff_terms).mean()


class ACR(TrainingPlugin):
    name = "acr"
    terms = ("cls_attention", "affinity", "cls_flip")
    methods = ("single_stage", "cam")

    @classmethod
    def check(cls, cfg: dict) -> None:
        backbone = cfg["model"]["backbone"]
        if backbone not in VIT_BACKBONES:
            raise WsssError(f"key 'plugins.acr.enabled': ACR needs a transformer's attention, model.backbone one of "
                            f"{', '.join(VIT_BACKBONES)}, not {backbone!r} (on a CNN, plugins.flip_affinity is the "
                            "flip-consistency analogue)")

    def extra_views(self, images: Tensor, raw: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        return {"flip": (images.flip(-1), raw.flip(-1))}

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        s = self.settings
        crop, flip = step.outputs["crop"], step.outputs["flip"]
        cls_attention, affinity = acr_terms(crop["features"]["attentions"], flip["features"]["attentions"],
                                            tuple(crop["features"]["deep"].shape[2:]), prefix_tokens(crop["features"]))
        cls_flip = classification_loss(flip["cls"], step.labels)
        return {"cls_attention": (cls_attention, s["attention_weight"]), "affinity": (affinity, s["affinity_weight"]),
                "cls_flip": (cls_flip, s["flip_cls_weight"])}
