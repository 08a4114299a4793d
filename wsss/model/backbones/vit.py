"""Vision transformer backbones from timm, with the contract of the CNN ones and every block's attention.

``model.backbone``:

- ``vit_toy``: patch 8, width 96, depth 6, 3 heads (about 0.7 M parameters): learns the embedded
  dataset on a CPU in minutes, from scratch;
- ``vit_b16``: ViT-B/16 (timm ``vit_base_patch16_224``; ToCo, DuPL and most ViT methods of the field);
- ``vit_hybrid``: the hybrid ViT-B, a ResNet-50 stem then ViT-B at stride 16 (timm
  ``vit_base_r50_s16_224``; the ACR paper's backbone).

The contract (``wsss.model.backbones.base.Backbone``): ``forward(x)`` returns ``deep``, the final
(normed) patch tokens as a feature map ``(B, D, H/s, W/s)`` at the token stride ``s``
(``output_stride``: 8 or 16), and ``shallow``, the tokens after the first quarter of the blocks as
a map upsampled (bilinear) to stride 4, ``(B, D, H/4, W/4)``; and ``attentions``, every block's
attention probabilities ``(B, heads, N, N)``, ``N = 1 + (H/s)(W/s)``, index 0 the class token.
An input whose sides are not multiples of ``s`` is resized (bilinear) to the nearest multiples
first (training crops must be multiples: ``wsss.model.network.build_model`` refuses another
``train.crop_size``). Position embeddings are interpolated to any grid (timm's
``dynamic_img_size``). The attention is computed unfused (timm's explicit softmax path) so that its
probabilities exist as tensors in the graph (ACR's losses and its gradient localisation need them).

Frozen parts (``model.freeze_early``): the patch embedding (the hybrid's ResNet stem included),
the position embedding and the class token. A ViT has no BatchNorm, so ``model.freeze_bn`` changes
nothing. ImageNet weights only from a local file (``model.weights``): timm's state dict of the
same variant (its classifier ``head.*`` dropped); another variant's file is refused, listing the
missing and unexpected keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.model.backbones.base import Backbone


@dataclass(frozen=True)
class ViTVariant:
    timm_name: str
    stride: int
    kwargs: tuple = ()


VARIANTS = {
    "vit_toy": ViTVariant("vit_tiny_patch16_224", 8, (("patch_size", 8), ("embed_dim", 96), ("depth", 6),
                                                       ("num_heads", 3), ("img_size", 96))),
    "vit_b16": ViTVariant("vit_base_patch16_224", 16),
    "vit_hybrid": ViTVariant("vit_base_r50_s16_224", 16),
}


def prefix_tokens(features: dict) -> int:
    """The tokens before the patches (the class token) in a ViT's ``features`` (``deep`` (B, D, h, w) and
    ``attentions`` (B, heads, N, N)): ``N - h * w``."""
    deep = features["deep"]
    return features["attentions"][0].shape[-1] - deep.shape[2] * deep.shape[3]


class ViT(Backbone):
    weights_prefix = "vit."  # timm's state-dict names sit under this module

    def __init__(self, variant: str) -> None:
        super().__init__()
        import timm

        spec = VARIANTS[variant]
        self.variant = variant
        self.vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                     **dict(spec.kwargs))
        self.output_stride = spec.stride
        self.deep_channels = self.shallow_channels = self.vit.embed_dim
        self.shallow_block = len(self.vit.blocks) // 4 - 1 if len(self.vit.blocks) >= 4 else 0
        self._attentions: list[torch.Tensor] = []
        for block in self.vit.blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(self._keep_attention)

    def _keep_attention(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._attentions.append(output)

    def early_modules(self) -> list[nn.Module]:
        return [self.vit.patch_embed]

    def set_freezing(self, freeze_bn: bool, freeze_early: bool) -> "ViT":
        super().set_freezing(freeze_bn, freeze_early)
        for p in (self.vit.pos_embed, self.vit.cls_token):
            if p is not None:
                p.requires_grad_(not freeze_early)
        return self

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the tokens are made at: each side rounded to a multiple of the stride (at least one)."""
        s = self.output_stride
        return max(s, round(height / s) * s), max(s, round(width / s) * s)

    def forward(self, x: torch.Tensor) -> dict:
        b = x.shape[0]
        size = self.grid_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        gh, gw = size[0] // self.output_stride, size[1] // self.output_stride
        vit = self.vit
        self._attentions = []
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        shallow = None
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index == self.shallow_block:
                shallow = tokens
        tokens = vit.norm(tokens)
        prefix = vit.num_prefix_tokens

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, prefix:].transpose(1, 2).reshape(b, -1, gh, gw)

        shallow_map = F.interpolate(as_map(shallow), size=(size[0] // 4, size[1] // 4), mode="bilinear",
                                    align_corners=False)
        attentions, self._attentions = self._attentions, []
        return {"shallow": shallow_map, "deep": as_map(tokens), "attentions": attentions}
