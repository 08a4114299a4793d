"""Loading the checkpoints the SSSS and WS-FCN authors published: their key names mapped onto ours.

The public state dicts are laid out from the key lists in tests/data/public_keys/ (each codebase's
WR38 network for VOC's 21 classes: names and shapes, in file order) with random tensors.
"""

from __future__ import annotations

import hashlib
import re

from pathlib import Path

import pytest
import torch

from wsss import config
from wsss.errors import WsssError
from wsss.model import public_checkpoints as public
from wsss.model.network import build_model, describe
from wsss.stages.infer import describe_checkpoint, load_model

KEYS = Path(__file__).parent / "data" / "public_keys"
PARAMS = config.REPO_ROOT / "params.yaml"
OVERRIDES = {"wsfcn": [], "ssss": ["model.fca=false", "model.sf2=false"]}
# Pairs read off the two codebases' module definitions, independent of the rule table.
EXPECTED = {
    "wsfcn": {
        "conv1a.weight": "backbone.conv1a.weight",
        "b4_5.bn_branch2b1.running_var": "backbone.b4_5.bn_branch2b1.running_var",
        "fca.fca3.conv1_1.weight": "context.branches.2.path_a.0.weight",
        "fca.fca3.conv2_2.weight": "context.branches.2.path_b.1.weight",
        "fca.ca.sharedMLP.2.weight": "context.attention.mlp.2.weight",
        "fca.global_avg_pool.2.bias": "context.pool.proj.1.bias",
        "fca.bn1.weight": "context.bn.weight",
        "fca.sa.conv.weight": "context.srm.conv.weight",
        "align1.down_h.weight": "fusion.align.reduce_context.weight",
        "align1.down_l.weight": "fusion.align.reduce_shallow.weight",
        "align1.flow_make.weight": "fusion.align.flow.weight",
        "sf2.conv1h.weight": "fusion.h1.0.weight",
        "sf2.bn4v.running_mean": "fusion.v4.1.running_mean",
        "last_conv.5.weight": "decoder.2.1.weight",
        "last_conv.8.bias": "decoder.4.bias",
    },
    "ssss": {
        "aspp.aspp4.atrous_conv.weight": "context.branches.3.0.weight",
        "aspp.global_avg_pool.1.weight": "context.pool.proj.0.weight",
        "aspp.bn1.bias": "context.project.1.bias",
        "fc8_skip.1.running_var": "fusion.skip.1.running_var",
        "fc8_x.0.weight": "fusion.merge.0.weight",
        "shallow_mask.fc_deep.0.weight": "fusion.gci.film.0.weight",
        "shallow_mask.fc_skip.1.running_mean": "fusion.gci.shallow.1.running_mean",
        "shallow_mask.fc_cls.1.weight": "fusion.gci.out.1.weight",
        "last_conv.0.weight": "decoder.0.0.weight",
    },
}


def public_state(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for line in (KEYS / f"{kind}_wr38_voc.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        dims = [int(d) for d in shape.split("x")] if shape else []
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.rand(dims, generator=generator) + 0.5  # positive: valid BN variances
    return state


@pytest.fixture(scope="module", params=["wsfcn", "ssss"])
def case(request, one_thread):
    kind = request.param
    cfg = config.load([PARAMS], ["data.name=voc", *OVERRIDES[kind]])
    return kind, cfg, build_model(cfg, load_weights=False), public_state(kind)


def test_every_public_key_reaches_its_wsss_parameter(case):
    kind, cfg, model, state = case
    names = describe(cfg)
    assert public.load_into(model, state, "released.pth", names["context"], names["fusion"]) == kind
    own = model.state_dict()
    for theirs, ours in EXPECTED[kind].items():
        assert torch.equal(own[ours], state[theirs]), (theirs, ours)
    dropped = {k for k in state if public.map_key(k, public.RULES[kind]) is None}
    assert dropped == {k for k in state if k.startswith("_aff.") or (k.startswith("fca.fca") and ".bn." in k)}
    assert len(state) - len(dropped) == len(own)  # one to one: strict loading filled every wsss key


def test_an_unknown_or_missing_key_is_listed(case):
    kind, cfg, model, state = case
    names = describe(cfg)
    extra = dict(state, **{"layer8.weight": torch.zeros(1)})
    with pytest.raises(WsssError, match=r"released.pth: 1 key\(s\) of the .* map to no wsss parameter: layer8.weight"):
        public.load_into(model, extra, "released.pth", names["context"], names["fusion"])
    short = {k: v for k, v in state.items() if k != "last_conv.8.bias"}
    with pytest.raises(WsssError, match=r"missing: decoder.4.bias"):
        public.load_into(model, short, "released.pth", names["context"], names["fusion"])


def test_the_other_network_is_refused_with_the_overrides_that_select_it(case):
    kind, _, model, state = case
    other = ("fca", "sf2") if kind == "ssss" else ("aspp", "gci")
    needed = "the defaults" if kind == "wsfcn" else "-S model.fca=false -S model.sf2=false"
    with pytest.raises(WsssError, match=f"public {kind} checkpoint .*run with {needed}"):
        public.load_into(model, state, "released.pth", *other)


def test_infer_loads_a_released_file_as_it_is(tmp_path, one_thread, capsys):
    state = public_state("wsfcn")
    path = tmp_path / "model_enc_e018Xs0.905.pth"
    torch.save(state, path)
    cfg = config.load([PARAMS], ["data.name=voc"])
    model, source = load_model(cfg, torch.device("cpu"), path)
    assert capsys.readouterr().out == f"infer: loaded the public wsfcn checkpoint {path}\n"
    assert source == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "made_by": "public wsfcn checkpoint"}
    assert not model.training
    assert torch.equal(model.state_dict()["fusion.align.flow.weight"], state["align1.flow_make.weight"])
    with pytest.raises(WsssError, match=rf"{path.name}.*public wsfcn checkpoint"):
        load_model(config.load([PARAMS], ["data.name=voc", "model.sf2=false"]), torch.device("cpu"), path)
    for overrides, named in ((["model.backbone=resnet50"], "single_stage, resnet50"), (["model.method=cam"], "cam, wr38")):
        with pytest.raises(WsssError) as err:
            load_model(config.load([PARAMS], ["data.name=voc", *overrides]), torch.device("cpu"), path)
        assert str(err.value) == (f"{path} is a public SSSS / WS-FCN checkpoint: it needs model.method single_stage "
                                  f"and model.backbone wr38 (params: {named})")


def test_infer_names_a_file_that_is_no_checkpoint_and_one_made_under_other_params(tmp_path):
    cfg = config.load([PARAMS], [])
    path = tmp_path / "weights.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)  # a dict, but neither a state dict nor a wsss checkpoint
    with pytest.raises(WsssError) as err:
        load_model(cfg, torch.device("cpu"), path)
    assert str(err.value) == f"checkpoint {path} is neither a wsss checkpoint nor a public SSSS / WS-FCN state dict"
    other = config.load([PARAMS], ["train.lr=0.5"])
    torch.save({"model": {}, "signature": {}, "stage": "train", "config": other}, path)
    with pytest.raises(WsssError, match=rf"^{re.escape(str(path))} was made by `wsss train` under other parameters"):
        load_model(cfg, torch.device("cpu"), path)
    # a checkpoint without a recorded configuration is checked on its model signature alone
    torch.save({"model": {}, "signature": {"dataset": "voc"}, "stage": "train"}, path)
    with pytest.raises(WsssError, match=rf"^checkpoint {re.escape(str(path))} was made for a different model configuration"):
        load_model(cfg, torch.device("cpu"), path)


def test_checkpoint_yaml_names_the_wsss_stage_that_made_it(tmp_path):
    path = tmp_path / "train.pt"
    path.write_bytes(b"x" * (3 << 20))  # several read blocks
    record = describe_checkpoint(path, {"model": {}, "signature": {}, "stage": "train"})
    assert record == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "made_by": "wsss train"}


def test_a_backbone_weights_file_is_named_and_pointed_to_model_weights():
    backbone = {"conv1a.weight": torch.zeros(64, 3, 3, 3), "b2.bn_branch2a.weight": torch.zeros(64)}
    with pytest.raises(WsssError, match=r"ilsvrc.pth: not a public SSSS / WS-FCN checkpoint.*go in model.weights"):
        public.load_into(torch.nn.Module(), backbone, "ilsvrc.pth", "fca", "sf2")
