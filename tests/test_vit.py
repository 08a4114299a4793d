"""The ViT backbones (wsss.model.backbones.vit): the CNN backbones' contract, every block's attention,
the frozen parts, the crop check and ImageNet weights from a local file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss import config
from wsss.errors import WsssError
from wsss.model.backbones import build_backbone
from wsss.model.backbones.vit import ViT
from wsss.model.network import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def vit(one_thread) -> ViT:
    return build_backbone({"backbone": "vit_toy", "freeze_bn": False, "freeze_early": False})


def test_the_taps_are_feature_maps_at_their_strides_and_every_block_s_attention_is_kept(vit):
    out = vit(torch.randn(2, 3, 64, 96))
    assert out["deep"].shape == (2, 96, 8, 12) and out["shallow"].shape == (2, 96, 16, 24)
    assert len(out["attentions"]) == 6
    for attention in out["attentions"]:
        assert attention.shape == (2, 3, 1 + 8 * 12, 1 + 8 * 12)
        assert torch.allclose(attention.sum(-1), torch.ones(2, 3, 97), atol=1e-5)  # softmax rows
    # the deep map is the final normed patch tokens in row-major order
    tokens = vit.vit.forward_features(torch.zeros(1, 3, 64, 96))
    again = vit(torch.zeros(1, 3, 64, 96))["deep"]
    assert torch.allclose(again.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-5)


def test_the_attention_is_part_of_the_graph(vit):
    x = torch.randn(1, 3, 32, 32)
    out = vit(x)
    grads = torch.autograd.grad(out["deep"].sum(), out["attentions"][-1])
    assert grads[0].abs().sum() > 0


def test_an_input_off_the_stride_is_resized_to_the_nearest_multiples(vit):
    out = vit(torch.randn(1, 3, 70, 101))
    assert out["deep"].shape[-2:] == (9, 13) and out["shallow"].shape[-2:] == (18, 26)


def test_freeze_early_freezes_the_embeddings_only():
    vit = build_backbone({"backbone": "vit_toy", "freeze_bn": True, "freeze_early": True})
    frozen = {name for name, p in vit.named_parameters() if not p.requires_grad}
    assert frozen == {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.bias"}


def test_a_crop_that_is_not_a_multiple_of_the_patch_stride_is_refused():
    cfg = config.load([REPO / "params.yaml"], ["model.backbone=vit_toy", "presets.toy.train.crop_size=100"])
    with pytest.raises(WsssError, match=r"key 'train.crop_size': 100 is not a multiple of the vit_toy backbone's patch stride 8"):
        build_model(cfg, load_weights=False)


def test_imagenet_weights_come_from_a_local_file_in_timm_s_names(tmp_path, one_thread):
    import timm

    donor = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, patch_size=8, embed_dim=96,
                              depth=6, num_heads=3, img_size=96)
    torch.save(donor.state_dict(), tmp_path / "vit_toy.pth")  # with its classifier, as timm's files are
    cfg = config.load([REPO / "params.yaml"], ["model.backbone=vit_toy", "model.pretrained=true",
                                               f"model.weights={tmp_path / 'vit_toy.pth'}"])
    model = build_model(cfg)
    assert torch.equal(model.backbone.vit.pos_embed, donor.pos_embed)
    assert torch.equal(model.backbone.vit.blocks[5].mlp.fc2.weight, donor.blocks[5].mlp.fc2.weight)


def test_weights_of_another_variant_are_refused_listing_the_keys(tmp_path, one_thread):
    import timm

    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=8, embed_dim=96,
                              depth=4, num_heads=3, img_size=96)
    torch.save(other.state_dict(), tmp_path / "depth4.pth")
    cfg = config.load([REPO / "params.yaml"], ["model.backbone=vit_toy", "model.pretrained=true",
                                               f"model.weights={tmp_path / 'depth4.pth'}"])
    with pytest.raises(WsssError) as err:
        build_model(cfg)
    message = str(err.value)
    assert "key 'model.weights'" in message and "depth4.pth" in message
    assert "missing keys: vit.blocks.4." in message and "vit.blocks.5." in message


def test_model_info_counts_the_paper_sizes():
    from conftest import run_cli
    import json

    proc = run_cli(["model-info", "--params", str(REPO / "params.yaml"), "-S", "model.backbone=vit_b16",
                    "-S", "model.pretrained=false"], REPO)
    info = json.loads(proc.stdout)
    assert info["params_by_module_m"]["backbone"] == 85.8  # ViT-B/16 without its classifier: 85.80 M
    assert info["shapes"]["deep"] == [768, 6, 6]


def test_the_weights_file_is_checked_against_its_sha256_before_loading(tmp_path, one_thread):
    import hashlib

    import timm

    donor = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=8, embed_dim=96,
                              depth=6, num_heads=3, img_size=96)
    path = tmp_path / "vit_toy.pth"
    torch.save(donor.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    base = ["model.backbone=vit_toy", "model.pretrained=true", f"model.weights={path}"]
    model = build_model(config.load([REPO / "params.yaml"], [*base, f"model.weights_sha256={digest}"]))
    assert torch.equal(model.backbone.vit.cls_token, donor.cls_token)
    wrong = "0" * 64
    with pytest.raises(WsssError, match=rf"key 'model.weights_sha256': {path} has SHA-256 {digest}, expected {wrong}"):
        build_model(config.load([REPO / "params.yaml"], [*base, f"model.weights_sha256={wrong}"]))
    with pytest.raises(config.ParamsError, match="key 'model.weights_sha256'"):
        config.load([REPO / "params.yaml"], [*base, "model.weights_sha256=abc"])
