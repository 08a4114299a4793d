"""ACR's localisation (Sun et al., 2023): class maps from the gradient of the class scores with respect
to a ViT's attention, the inference option ``infer.localisation: acr``.

For every foreground class ``c`` and image, with ``A_b`` block ``b``'s attention ``(heads, N, N)``
(token 0 the class token) and ``s_c`` the network's class score:

    G_c = sum over the last ``infer.acr_blocks`` blocks b of  mean over heads of  relu(d s_c / d A_b)
    l_c = G_c[0, 1:]                       the class token's row: one value per patch, (P,)
    l_c = R @ l_c   with ``infer.acr_affinity``, R the patch-to-patch attention of those blocks, averaged
                    over blocks and heads (P, P): each patch gathers from the patches it attends to
    map_c = l_c / max(l_c)                 on the patch grid, resized (bilinear) to the network's mask size

``ACRLocaliser`` wraps a trained network so that ``wsss.stages.infer.predict`` runs it in place of
the network: its output's ``masks`` are ``[1 - max_c map_c, map_1, ..., map_{C-1}]`` and ``cls``
the network's own scores (class presence is decided from them as for the head). Each class costs
one backward pass per batch of views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import WsssError
from wsss.model.backbones.vit import prefix_tokens
from wsss.model.layers import resize_to


def gradient_maps(cls: Tensor, attentions: list[Tensor], blocks: int) -> Tensor:
    """``(B, K, N, N)``: for each of the K class scores of ``cls`` (B, K), the positive part of its gradient
    with respect to the last ``blocks`` attentions ``(B, heads, N, N)``, head-averaged and summed over them."""
    chosen = attentions[-blocks:]
    maps = []
    for k in range(cls.shape[1]):
        grads = torch.autograd.grad(cls[:, k].sum(), chosen, retain_graph=True)
        maps.append(sum(F.relu(g).mean(1) for g in grads))
    return torch.stack(maps, 1)


def localise(cls: Tensor, attentions: list[Tensor], grid: tuple[int, int], blocks: int, use_affinity: bool,
             prefix: int = 1, eps: float = 1e-5) -> Tensor:
    """The max-normalised class maps ``(B, K, gh, gw)`` of the module docstring."""
    grads = gradient_maps(cls, attentions, blocks)  # (B, K, N, N)
    rows = grads[:, :, 0, prefix:]  # (B, K, P)
    if use_affinity:
        affinity = torch.stack([a.detach().float().mean(1) for a in attentions[-blocks:]]).mean(0)[:, prefix:, prefix:]
        rows = rows @ affinity.transpose(1, 2)  # (B, K, P): l <- R l for every class
    rows = rows / (rows.amax(-1, keepdim=True) + eps)
    return rows.reshape(*rows.shape[:2], *grid)


class ACRLocaliser(nn.Module):
    """A trained network whose ``masks`` are ACR's localisation (see the module docstring)."""

    def __init__(self, network: nn.Module, blocks: int, use_affinity: bool):
        super().__init__()
        from wsss.model.backbones.vit import ViT

        if not isinstance(network.backbone, ViT):
            raise WsssError("key 'infer.localisation': acr needs a ViT backbone (model.backbone vit_toy, vit_b16 or "
                            "vit_hybrid), whose attention it reads")
        depth = len(network.backbone.vit.blocks)
        if not 1 <= blocks <= depth:
            raise WsssError(f"key 'infer.acr_blocks': {blocks} blocks, the backbone has {depth}")
        self.network, self.blocks, self.use_affinity = network, blocks, use_affinity

    def forward(self, x: Tensor) -> dict:
        with torch.enable_grad():
            out = self.network(x)
            features = out["features"]
            maps = localise(out["cls"].float(), features["attentions"], tuple(features["deep"].shape[2:]), self.blocks,
                            self.use_affinity, prefix_tokens(features))
        fg = resize_to(maps.detach(), tuple(out["masks"].shape[2:]))
        masks = torch.cat([1.0 - fg.amax(1, keepdim=True), fg], 1)
        return {"masks": masks, "cls": out["cls"].detach()}
