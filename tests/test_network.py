"""The full networks: the paper's parameter counts, output contract, ablation switches, freezing, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss import config
from wsss.errors import WsssError
from wsss.model.context import CONTEXTS, build_context
from wsss.model.fusion import FUSIONS, build_fusion
from wsss.model.layers import FrozenStatsBatchNorm2d
from wsss.model.network import CAMNet, SingleStageNet, build_model, describe

PARAMS = config.REPO_ROOT / "params.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def load_cfg(*overrides: str) -> dict:
    return config.load([PARAMS], overrides)


def meta_model(*overrides: str) -> nn.Module:
    cfg = load_cfg("data.name=voc", *overrides)
    with torch.device("meta"):
        return build_model(cfg, load_weights=False)


def trainable_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


def total_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# The paper's Table I and Table II (WR38, 21 classes), and the overrides that select each row.
TABLE_I = [
    ("baseline", 137.10, ["model.fca=false", "model.sf2=false"]),
    ("+FCA without SRM", 143.52, ["model.fca_srm=false", "model.sf2=false"]),
    ("+FCA", 143.52, ["model.sf2=false"]),
    ("+SF2", 140.92, ["model.fca=false"]),
    ("WS-FCN", 147.34, []),
]
TABLE_II = [
    ("+Non-local", 140.97, ["model.context=nonlocal", "model.sf2=false"]),
    ("+Large Conv", 157.75, ["model.context=largeconv", "model.sf2=false"]),
    ("+PPM", 142.03, ["model.context=ppm", "model.sf2=false"]),
    ("+Summation", 140.85, ["model.fca=false", "model.fusion=sum"]),
    ("+Concatenation", 142.03, ["model.fca=false", "model.fusion=concat"]),
    ("+Multiplication", 140.85, ["model.fca=false", "model.fusion=mul"]),
]


@pytest.mark.parametrize("row,paper,overrides", TABLE_I, ids=[r[0] for r in TABLE_I])
def test_table_i_parameter_counts(row, paper, overrides):
    model = meta_model(*overrides)
    assert trainable_m(model) == pytest.approx(paper, rel=0.01)
    assert total_m(model) == pytest.approx(paper, rel=0.01)
    # The paper counts what is optimised: the frozen conv1a/b2 and backbone BN affine are left out.
    assert round(trainable_m(model), 2) == pytest.approx(paper, abs=0.011)


@pytest.mark.parametrize("row,paper,overrides", TABLE_II, ids=[r[0] for r in TABLE_II])
def test_table_ii_parameter_counts(row, paper, overrides):
    assert trainable_m(meta_model(*overrides)) == pytest.approx(paper, rel=0.01)


def test_ablation_switches_select_modules():
    assert describe(load_cfg("data.name=voc")) == {"method": "single_stage", "backbone": "wr38",
                                                   "context": "fca", "fusion": "sf2"}
    cfg = load_cfg("data.name=voc", "model.fca=false", "model.sf2=false")
    assert (describe(cfg)["context"], describe(cfg)["fusion"]) == ("aspp", "gci")
    assert describe(load_cfg("model.fca_srm=false"))["context"] == "fca_nosrm"
    assert describe(load_cfg("model.context=ppm", "model.fusion=concat"))["context"] == "ppm"
    assert type(meta_model("model.context=aspp").context).__name__ == "ASPP"
    assert meta_model("model.fca_srm=false").context.srm is None


def test_wr38_ws_fcn_shapes_at_321():
    """One real WR38 forward (CPU, eval, no grad) at the paper's crop size."""
    torch.manual_seed(0)
    cfg = load_cfg("data.name=voc")
    model = build_model(cfg, load_weights=False).eval()
    taps = {}
    model.backbone.b3_2.register_forward_hook(lambda m, i, o: taps.setdefault("b3_2", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 321, 321))
    assert tuple(out["features"]["deep"].shape) == (1, 4096, 41, 41)
    assert tuple(out["features"]["shallow"].shape) == (1, 256, 81, 81)
    assert tuple(out["logits"].shape) == (1, 21, 81, 81)
    assert tuple(out["masks"].shape) == (1, 21, 81, 81)
    assert tuple(out["cls"].shape) == (1, 20)
    assert out["features"]["shallow"] is taps["b3_2"]            # the raw residual sum, before BN/ReLU
    assert (out["features"]["shallow"] < 0).any()
    assert (out["features"]["deep"] >= 0).all()                   # after bn7 + ReLU
    assert torch.allclose(out["logits"][:, 0], torch.ones(1, 81, 81))


def toy_model(*overrides: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(load_cfg(*overrides), load_weights=False)


COMBOS = [(c, f) for c in CONTEXTS for f in ("sf2", "gci")] + [("aspp", f) for f in ("sum", "concat", "mul")]


@pytest.mark.parametrize("context,fusion", COMBOS)
@pytest.mark.parametrize("size", [(65, 65), (97, 71)])
def test_small_model_output_contract_at_odd_sizes(context, fusion, size):
    model = toy_model(f"model.context={context}", f"model.fusion={fusion}").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = [(s + 3) // 4 for s in size]
    classes = 11
    assert set(out) == {"logits", "masks", "cls", "features"}
    assert tuple(out["logits"].shape) == (2, classes, h, w)
    assert tuple(out["masks"].shape) == (2, classes, h, w)
    assert tuple(out["cls"].shape) == (2, classes - 1)
    assert tuple(out["features"]["shallow"].shape[-2:]) == (h, w)
    assert torch.allclose(out["masks"].sum(1), torch.ones(2, h, w), atol=1e-5)
    assert torch.allclose(out["logits"][:, 0], torch.ones(2, h, w))
    assert torch.isfinite(out["cls"]).all()


def test_bg_logit_parameter():
    model = toy_model("model.bg_logit=0.5").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.allclose(out["logits"][:, 0], torch.full((1, 16, 16), 0.5))


def test_cls_are_the_class_scores_of_the_logits():
    from wsss.model.scores import class_scores

    model = toy_model().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    expected = class_scores(out["logits"], out["masks"], 3.0, 0.01)
    assert torch.allclose(out["cls"], expected)


def test_cam_baseline():
    model = toy_model("model.method=cam").eval()
    assert isinstance(model, CAMNet)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 72, 88))
    masks = out["masks"]
    assert tuple(masks.shape) == (2, 11, 18, 22) and tuple(out["cls"].shape) == (2, 10)
    fg = masks[:, 1:]
    assert (fg >= 0).all() and (fg <= 1 + 1e-6).all()
    assert torch.allclose(masks[:, 0], 1 - fg.amax(1))
    peaks = fg.flatten(2).amax(-1)
    assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones_like(peaks), atol=1e-3))
    deep = model.backbone(torch.zeros(1, 3, 8, 8))["deep"]
    assert model.classifier.in_channels == deep.shape[1]


def test_eval_mode_is_deterministic_and_training_is_not():
    model = toy_model()
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], model(x)["logits"])
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x)["logits"], model(x)["logits"])


def test_gradients_reach_every_new_module():
    model = toy_model("model.freeze_bn=true", "model.freeze_early=true").train()
    out = model(torch.randn(4, 3, 64, 64))
    labels = torch.zeros(4, 10)
    labels[:, :3] = 1
    loss = nn.functional.multilabel_soft_margin_loss(out["cls"], labels) + out["logits"].square().mean()
    loss.backward()
    for part in ("context", "fusion", "decoder"):
        for name, p in getattr(model, part).named_parameters():
            assert p.grad is not None, f"{part}.{name}"
            assert torch.isfinite(p.grad).all(), f"{part}.{name}"
            if p.requires_grad and p.numel() > 1:
                assert p.grad.abs().sum() > 0, f"{part}.{name}"
    assert model.fusion.align.flow.weight.grad.abs().sum() > 0
    assert model.context.srm.conv.weight.grad.abs().sum() > 0
    for name, p in model.backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_frozen_parts_stay_frozen_in_training():
    model = toy_model("model.freeze_bn=true", "model.freeze_early=true", "model.fca_bn=frozen")
    model.train()
    bb = model.backbone
    assert not any(p.requires_grad for p in bb.stem.parameters())
    bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(bn.training or bn.weight.requires_grad for bn in bns)
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running" in k}
    ctx_before = {k: v.clone() for k, v in model.context.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(before[k], bb.state_dict()[k]) for k in before)
    assert all(torch.equal(ctx_before[k], model.context.state_dict()[k]) for k in ctx_before)
    # the head's ordinary BatchNorms do train and update their statistics
    assert model.decoder[0][1].training


@pytest.mark.parametrize("name", ["aspp", "fca", "fca_nosrm", "ppm", "nonlocal", "largeconv"])
def test_context_batchnorms_keep_their_initial_statistics(name):
    model = toy_model(f"model.context={name}", "model.fca_bn=frozen").train()
    bns = [m for m in model.context.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(bn, FrozenStatsBatchNorm2d) for bn in bns)
    model(torch.randn(2, 3, 64, 64))
    for bn in bns:
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.weight.requires_grad


@pytest.mark.parametrize("name", ["fca", "fca_nosrm"])
def test_fca_bn_batch_bounds_the_output_scale_and_frozen_does_not(name):
    """FCA is linear in its input up to the channel attention: with frozen statistics its output
    scales with the input; with batch statistics (the toy preset) the output BN normalises it."""
    x = torch.randn(4, 128, 12, 12)
    for mode in ("frozen", "batch"):
        torch.manual_seed(0)
        fca = build_context(load_cfg(f"model.context={name}", f"model.fca_bn={mode}")["model"], 128)
        fca.dropout.p = 0.0
        fca.train()
        small, large = fca(x).std().item(), fca(100 * x).std().item()
        bn = fca.bn
        if mode == "frozen":
            assert isinstance(bn, FrozenStatsBatchNorm2d) and large > 50 * small
        else:
            assert type(bn) is nn.BatchNorm2d and large < 2 * small
            assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert load_cfg()["model"]["fca_bn"] == "batch" and load_cfg("data.name=voc")["model"]["fca_bn"] == "frozen"
    with pytest.raises(WsssError, match="model.fca_bn"):
        build_context({**load_cfg()["model"], "fca_bn": "group"}, 128)


def test_frozen_stats_batchnorm_is_an_affine():
    bn = FrozenStatsBatchNorm2d(3).train()
    nn.init.constant_(bn.weight, 2.0)
    nn.init.constant_(bn.bias, 0.5)
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(bn(x), 2.0 * x / (1 + bn.eps) ** 0.5 + 0.5)
    assert bn(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_unknown_context_and_fusion_list_valid_names():
    model_cfg = load_cfg()["model"]
    with pytest.raises(WsssError) as err:
        build_context({**model_cfg, "context": "transformer"}, 128)
    assert "model.context" in str(err.value) and all(n in str(err.value) for n in CONTEXTS)
    with pytest.raises(WsssError) as err:
        build_fusion({**model_cfg, "fusion": "attention"}, 32)
    assert "model.fusion" in str(err.value) and all(n in str(err.value) for n in FUSIONS)
    cfg = load_cfg()
    cfg["model"]["method"] = "mil"
    with pytest.raises(WsssError, match="model.method"):
        build_model(cfg, load_weights=False)


def test_build_model_loads_weights_only_when_asked(tmp_path):
    cfg = load_cfg("data.name=voc", f"data.downloads={tmp_path}")
    with torch.device("meta"), pytest.raises(WsssError, match="model.weights"):
        build_model(cfg)
    with torch.device("meta"):
        assert isinstance(build_model(cfg, load_weights=False), SingleStageNet)
    toy = load_cfg(f"model.weights={tmp_path / 'w.pth'}")
    with pytest.raises(WsssError, match="model.pretrained"):
        build_model(toy)


def test_toy_weights_file_is_loaded(tmp_path):
    source = toy_model()
    path = tmp_path / "small.pth"
    torch.save(source.backbone.state_dict(), path)
    model = build_model(load_cfg("model.pretrained=true", f"model.weights={path}"))
    assert torch.equal(model.backbone.stem[0][0].weight, source.backbone.stem[0][0].weight)


def test_sf2_alignment_with_zero_flow_is_bilinear_upsampling():
    from wsss.model.fusion import SemanticFlowAlign
    from wsss.model.layers import resize_to

    align = SemanticFlowAlign(shallow_ch=8, width=16)
    nn.init.zeros_(align.flow.weight)
    context = torch.randn(2, 16, 5, 9)
    shallow = torch.randn(2, 8, 9, 17)
    assert torch.allclose(align(shallow, context), resize_to(context, (9, 17)), atol=1e-5)


def test_bf16_autocast_forward():
    model = toy_model().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out["cls"]).all() and out["masks"].dtype == torch.float32
