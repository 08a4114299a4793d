"""Backbones: WR38 layout and naming, ResNet OS 16, the small backbone, freezing, weights loading."""

from __future__ import annotations

import logging
import re
import urllib.error

import pytest
import torch
from torch import nn

from wsss.engine import checkpoint
from wsss.errors import WsssError
from wsss.model import weights as weights_mod
from wsss.model.backbones import BACKBONES, build_backbone
from wsss.model.backbones.resnet import ResNet
from wsss.model.backbones.small import SmallNet
from wsss.model.backbones.wr38 import WR38
from wsss.model.weights import load_backbone_weights, read_state_dict

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


pytestmark = pytest.mark.usefixtures("one_thread")


def psa_wr38_keys() -> set[str]:
    """The key names of the public WR38 ImageNet file, written out from the spec's table."""
    res_blocks = [("b2", True), ("b2_1", False), ("b2_2", False),
                  ("b3", True), ("b3_1", False), ("b3_2", False),
                  ("b4", True)] + [(f"b4_{i}", False) for i in range(1, 6)] + \
                 [("b5", True), ("b5_1", False), ("b5_2", False)]
    keys = {"conv1a.weight"}
    for name, projects in res_blocks:
        keys |= {f"{name}.bn_branch2a.{k}" for k in BN_KEYS} | {f"{name}.bn_branch2b1.{k}" for k in BN_KEYS}
        keys |= {f"{name}.conv_branch2a.weight", f"{name}.conv_branch2b1.weight"}
        if projects:
            keys.add(f"{name}.conv_branch1.weight")
    for name in ("b6", "b7"):
        for bn in ("bn_branch2a", "bn_branch2b1", "bn_branch2b2"):
            keys |= {f"{name}.{bn}.{k}" for k in BN_KEYS}
        keys |= {f"{name}.conv_branch{c}.weight" for c in ("1", "2a", "2b1", "2b2")}
    keys |= {f"bn7.{k}" for k in BN_KEYS}
    return keys


PSA_PATTERN = re.compile(
    r"^(conv1a\.weight"
    r"|b[2-7](_[1-5])?\.(bn_branch2a|bn_branch2b1|bn_branch2b2)\.(weight|bias|running_mean|running_var)"
    r"|b[2-7](_[1-5])?\.conv_branch(1|2a|2b1|2b2)\.weight"
    r"|bn7\.(weight|bias|running_mean|running_var))$"
)


@pytest.fixture(scope="module")
def wr38_meta() -> WR38:
    with torch.device("meta"):
        return WR38()


def own_keys(module: nn.Module) -> set[str]:
    return {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}


def test_wr38_parameter_count(wr38_meta):
    n = sum(p.numel() for p in wr38_meta.parameters())
    assert n == pytest.approx(105.1e6, rel=0.002)


def test_wr38_key_names_follow_psa_naming(wr38_meta):
    keys = own_keys(wr38_meta)
    assert keys == psa_wr38_keys()
    assert all(PSA_PATTERN.match(k) for k in keys)


def test_wr38_layer_sizes_and_dilations(wr38_meta):
    m = wr38_meta
    expect = {
        "conv1a": (64, 3, 3, 3), "b2.conv_branch2a": (128, 64, 3, 3), "b2.conv_branch1": (128, 64, 1, 1),
        "b3.conv_branch2b1": (256, 256, 3, 3), "b4.conv_branch2a": (512, 256, 3, 3),
        "b5.conv_branch2a": (512, 512, 3, 3), "b5.conv_branch2b1": (1024, 512, 3, 3),
        "b5_1.conv_branch2a": (512, 1024, 3, 3), "b6.conv_branch2a": (512, 1024, 1, 1),
        "b6.conv_branch2b1": (1024, 512, 3, 3), "b6.conv_branch2b2": (2048, 1024, 1, 1),
        "b7.conv_branch2a": (1024, 2048, 1, 1), "b7.conv_branch2b1": (2048, 1024, 3, 3),
        "b7.conv_branch2b2": (4096, 2048, 1, 1), "b7.conv_branch1": (4096, 2048, 1, 1),
    }
    for name, shape in expect.items():
        assert tuple(m.get_submodule(name).weight.shape) == shape, name
    assert m.bn7.num_features == 4096
    strides = {n: m.get_submodule(n).stride for n in ("b2.conv_branch2a", "b3.conv_branch2a", "b4.conv_branch2a",
                                                      "b5.conv_branch2a", "b6.conv_branch2b1")}
    assert strides == {"b2.conv_branch2a": (2, 2), "b3.conv_branch2a": (2, 2), "b4.conv_branch2a": (2, 2),
                       "b5.conv_branch2a": (1, 1), "b6.conv_branch2b1": (1, 1)}
    assert m.b5.conv_branch2a.dilation == (1, 1) and m.b5.conv_branch2b1.dilation == (2, 2)
    assert m.b5_1.conv_branch2a.dilation == (2, 2) and m.b5_2.conv_branch2b1.dilation == (2, 2)
    assert m.b6.conv_branch2b1.dilation == (4, 4) and m.b7.conv_branch2b1.dilation == (4, 4)
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    drop6 = [d.p for d in m.b6.modules() if isinstance(d, nn.Dropout2d)]
    drop7 = [d.p for d in m.b7.modules() if isinstance(d, nn.Dropout2d)]
    assert drop6 == [0.3, 0.3] and drop7 == [0.5, 0.5]
    assert m.shallow_channels == 256 and m.deep_channels == 4096 and m.output_stride == 8


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_psa_state_dict_loads_without_missing_keys(wr38_meta, monkeypatch):
    """A state dict with exactly the public names (no num_batches_tracked, plus a classifier) loads."""
    shapes = {k: v.shape for k, v in wr38_meta.state_dict().items()}
    state = {k: torch.empty(shapes[k], device="meta") for k in psa_wr38_keys()}
    state["fc8.weight"] = torch.empty(20, 4096, 1, 1, device="meta")
    monkeypatch.setattr(weights_mod, "read_state_dict",
                        lambda path, key: {k: v for k, v in state.items() if not k.startswith("fc8.")})
    report = load_backbone_weights(wr38_meta, "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth", allow_partial=False)
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    assert set(report["loaded"]) == psa_wr38_keys()


def test_wr38_freezing(wr38_meta):
    m = wr38_meta.set_freezing(freeze_bn=True, freeze_early=True)
    m.train()
    for name, p in m.named_parameters():
        early = name.startswith(("conv1a.", "b2.", "b2_1.", "b2_2."))
        is_bn = ".bn_" in name or name.startswith("bn7.")
        assert p.requires_grad == (not early and not is_bn), name
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert all(d.training for d in m.modules() if isinstance(d, nn.Dropout2d))
    assert m.b4.conv_branch2a.training
    m.set_freezing(False, False).train()
    assert all(p.requires_grad for p in m.parameters())
    assert all(bn.training for bn in bns)


def test_resnet_output_stride_16_and_freezing():
    cfg = {"backbone": "resnet50", "freeze_bn": True, "freeze_early": True}
    m = build_backbone(cfg).train()
    assert isinstance(m, ResNet) and not hasattr(m, "fc")
    out = m(torch.randn(1, 3, 65, 65))
    assert tuple(out["shallow"].shape) == (1, 256, 17, 17)
    assert tuple(out["deep"].shape) == (1, 2048, 5, 5)
    assert not m.conv1.weight.requires_grad and not m.bn1.weight.requires_grad
    assert m.layer1[0].conv1.weight.requires_grad and not m.layer1[0].bn1.weight.requires_grad
    assert not any(x.training for x in m.modules() if isinstance(x, nn.BatchNorm2d))
    assert m.layer4[0].conv2.stride == (1, 1) and m.layer4[0].conv2.dilation == (1, 1)


def test_resnet101_depth():
    with torch.device("meta"):
        m = build_backbone({"backbone": "resnet101"})
    assert len(m.layer3) == 23 and m.deep_channels == 2048


@pytest.mark.parametrize("size", [(65, 65), (96, 128), (113, 101), (33, 47)])
def test_small_backbone_odd_sizes(size):
    m = SmallNet().eval()
    out = m(torch.randn(2, 3, *size))
    h4, w4 = [(s + 3) // 4 for s in size]
    h8, w8 = [(s + 7) // 8 for s in size]
    assert tuple(out["shallow"].shape) == (2, m.shallow_channels, h4, w4)
    assert tuple(out["deep"].shape) == (2, m.deep_channels, h8, w8)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(WsssError) as err:
        build_backbone({"backbone": "vgg16"})
    msg = str(err.value)
    assert "model.backbone" in msg and "vgg16" in msg
    assert all(name in msg for name in BACKBONES)


# --- weights files (the small backbone keeps the files tiny) ---

def test_weights_file_round_trip(tmp_path):
    src, dst = SmallNet(), SmallNet()
    path = tmp_path / "w.pth"
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["fc8.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, path)
    report = load_backbone_weights(dst, path, allow_partial=False)
    assert report["missing"] == report["unexpected"] == []
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    assert "fc8.weight" not in read_state_dict(path)


def test_weights_with_missing_and_unexpected_keys_raise_a_listing(tmp_path):
    state = {k: v for k, v in SmallNet().state_dict().items() if not k.startswith("stem.0.0.")}
    state["extra.conv.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WsssError) as err:
        load_backbone_weights(SmallNet(), path, allow_partial=False)
    msg = str(err.value)
    assert "missing keys: stem.0.0.weight" in msg
    assert "unexpected keys: extra.conv.weight" in msg
    assert "allow_partial_weights" in msg
    with pytest.raises(WsssError) as err:  # the second stage's file: its own key, no partial load to offer
        load_backbone_weights(SmallNet(), path, allow_partial=False, key="retrain.weights")
    assert str(err.value).startswith(f"key 'retrain.weights': {path} does not fit the SmallNet backbone; missing keys:")
    assert "allow_partial_weights" not in str(err.value)
    with pytest.raises(WsssError, match=f"key 'retrain.weights': weights file not found: {tmp_path / 'x.pth'}"):
        read_state_dict(tmp_path / "x.pth", "retrain.weights")
    torch.save({"model": {"a": 1}}, tmp_path / "odd.pth")  # a wrapper key of the file is not the parameter's name
    with pytest.raises(WsssError, match=f"^key 'retrain.weights': {tmp_path / 'odd.pth'} does not hold a state dict"):
        read_state_dict(tmp_path / "odd.pth", "retrain.weights")


def test_weights_partial_load_is_logged(tmp_path, caplog):
    src = SmallNet()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("stem.0.0.")}
    state["stage3.0.0.weight"] = torch.zeros(5, 5, 3, 3)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    dst = SmallNet()
    with caplog.at_level(logging.WARNING):
        report = load_backbone_weights(dst, path, allow_partial=True)
    assert report["missing"] == ["stem.0.0.weight"]
    assert report["mismatched"] and "stage3.0.0.weight" in report["mismatched"][0]
    assert "stem.0.0.weight" in caplog.text
    assert torch.equal(dst.stage2[0][0].weight, src.stage2[0][0].weight)


def test_a_wsss_checkpoint_gives_its_backbone(tmp_path):
    """A pretrain/train checkpoint (numpy RNG state inside, so not a weights-only file) starts another
    run's backbone: its backbone.* entries load, the head's entries are left out."""
    src, dst = SmallNet(), SmallNet()
    model = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    model["decoder.0.weight"] = torch.ones(4, 4, 1, 1)
    path = tmp_path / "pretrain.pt"
    checkpoint.save(path, {"model": model, "signature": {"model": {}}, "rng": checkpoint.rng_state(), "epoch": 2})
    state = read_state_dict(path)
    assert set(state) == set(src.state_dict())
    report = load_backbone_weights(dst, path, allow_partial=False)
    assert report["missing"] == report["unexpected"] == []
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_weights_file_errors(tmp_path):
    with pytest.raises(WsssError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WsssError, match="cannot read"):
        read_state_dict(bad)


def test_resnet_pretrained_without_network_says_how_to_provide_weights(monkeypatch):
    from wsss.model.backbones import resnet

    def offline(name):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(resnet, "torchvision_imagenet_state_dict", offline)
    cfg = {"model": {"backbone": "resnet50", "pretrained": True, "weights": None}, "data": {"downloads": "x"}}
    with torch.device("meta"):
        m = build_backbone({"backbone": "resnet50"})
    with pytest.raises(WsssError) as err:
        weights_mod.load_pretrained(m, cfg)
    msg = str(err.value)
    assert "model.weights" in msg and "resnet50-" in msg and "model.pretrained=false" in msg


def test_wr38_pretrained_without_file(tmp_path):
    cfg = {"model": {"backbone": "wr38", "pretrained": True, "weights": None}, "data": {"downloads": str(tmp_path)}}
    with pytest.raises(WsssError) as err:
        weights_mod.load_pretrained(nn.Module(), cfg)
    assert "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth" in str(err.value) and "model.weights" in str(err.value)
