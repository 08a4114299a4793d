"""ACR (wsss.plugins.acr), its localisation (wsss.model.acr_cam) and the CNN analogue
(wsss.plugins.flip_affinity), on hand-sized tensors, a flip-equivariant toy block and the toy ViT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss import config
from wsss.errors import WsssError
from wsss.model.acr_cam import ACRLocaliser, localise
from wsss.model.layers import resize_to
from wsss.model.network import build_model
from wsss.model.scores import classification_loss
from wsss.plugins import PluginSet, Step, build_plugins, check_plugins
from wsss.plugins.acr import acr_terms, unflip_attention, unflip_order
from wsss.plugins.flip_affinity import affinity

REPO = Path(__file__).resolve().parents[1]


def test_unflip_order_maps_each_token_to_its_mirror_and_keeps_the_class_token():
    # a 2 x 3 grid: tokens 1..6 row-major; the mirror of column j is 2 - j
    assert unflip_order(2, 3).tolist() == [0, 3, 2, 1, 6, 5, 4]
    order = unflip_order(3, 4)
    assert torch.equal(order[order], torch.arange(13))  # its own inverse
    assert unflip_order(1, 3, prefix=2).tolist() == [0, 1, 4, 3, 2]  # two prefix tokens stay in place


def test_unflipping_and_the_terms_keep_every_prefix_token_in_place():
    g = torch.Generator().manual_seed(3)
    attention = torch.rand(1, 2, 5, 5, generator=g)  # two prefix tokens, a 1 x 3 grid
    order = [0, 1, 4, 3, 2]
    assert torch.equal(unflip_attention(attention, 1, 3, prefix=2), attention[..., order, :][..., :, order])
    a = torch.rand(1, 2, 5, 5, generator=g)
    cls_term, aff_term = acr_terms([a], [attention], (1, 3), prefix=2)
    b = attention.mean(1)[:, order][:, :, order]
    assert torch.isclose(cls_term, (a.mean(1)[:, 0, 2:] - b[:, 0, 2:]).abs().mean())
    assert torch.isclose(aff_term, (a.mean(1)[:, 2:, 2:] - b[:, 2:, 2:]).abs().mean())


def toy_attention(tokens: torch.Tensor) -> torch.Tensor:
    """A flip-equivariant toy block: softmax of the dot products of the tokens (B, N, D) -> (B, 1, N, N)."""
    return torch.softmax(tokens @ tokens.transpose(1, 2), -1)[:, None]


def test_the_flipped_view_s_attention_unflipped_equals_the_original_s():
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(2, 5, 3, 4, generator=g)  # (B, D, h, w) patch features
    cls = torch.randn(2, 5, 1, generator=g)

    def tokens(features):  # class token first, then the patches row-major
        return torch.cat([cls, features.flatten(2)], 2).transpose(1, 2)

    original = toy_attention(tokens(grid))
    flipped = toy_attention(tokens(grid.flip(-1)))
    assert not torch.allclose(flipped, original)
    assert torch.allclose(unflip_attention(flipped, 3, 4), original, atol=1e-6)
    cls_term, aff_term = acr_terms([original], [flipped], (3, 4))
    assert cls_term.item() < 1e-6 and aff_term.item() < 1e-6


def test_the_acr_terms_are_block_averaged_l1_of_the_head_averaged_attention():
    a = torch.zeros(1, 2, 3, 3)
    b = torch.zeros(1, 2, 3, 3)
    a[0, 0, 0, 1] = 0.8  # head 0, class token -> patch 1; head average 0.4
    b[0, 1, 1, 2] = 0.6  # flipped view, head 1, patch 1 -> patch 2 (a 1 x 2 grid: patch 2 is patch 1's mirror)
    cls_term, aff_term = acr_terms([a, a], [b, torch.zeros_like(b)], (1, 2))
    # class-token row: |0.4 - 0| and |0 - 0| over 2 patches -> 0.2 in both blocks
    assert torch.isclose(cls_term, torch.tensor(0.2))
    # affinity: block 0: b un-flipped has 0.3 at (patch 2 -> patch 1), mean over 4 entries 0.075; block 1: 0
    assert torch.isclose(aff_term, torch.tensor(0.075 / 2))


def test_localisation_is_the_positive_gradient_of_the_score_on_the_class_token_row():
    attention = torch.tensor([[[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]], requires_grad=True)
    # score = 2 * A[0, 1] - A[0, 2]: gradient +2 at patch 1, -1 at patch 2 (its positive part 0)
    cls = (2 * attention[0, 0, 0, 1] - attention[0, 0, 0, 2]).reshape(1, 1)
    maps = localise(cls, [attention], (1, 2), blocks=1, use_affinity=False)
    assert torch.allclose(maps, torch.tensor([[[[1.0, 0.0]]]]), atol=1e-4)
    # with the affinity (here: patch 2 attends to patch 1 only) the map spreads along it
    affine = torch.tensor([[[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]], requires_grad=True)
    cls = (2 * affine[0, 0, 0, 1] - affine[0, 0, 0, 2]).reshape(1, 1)
    maps = localise(cls, [affine], (1, 2), blocks=1, use_affinity=True)
    assert torch.allclose(maps, torch.tensor([[[[1.0, 1.0]]]]), atol=1e-4)


def test_localisation_sums_the_last_blocks_and_normalises_each_class_over_the_patches():
    first = torch.full((1, 2, 3, 3), 1 / 3, requires_grad=True)  # (B, heads, N, N): two blocks, two heads
    last = torch.full((1, 2, 3, 3), 1 / 3, requires_grad=True)
    # class 0: 2 A_last[head 0, cls -> patch 1] + A_first[head 1, cls -> patch 2];
    # class 1: 0.1 A_last[head 1, cls -> patch 1] + 0.5 A_last[head 0, cls -> patch 2]
    cls = torch.stack([2 * last[0, 0, 0, 1] + first[0, 1, 0, 2],
                       0.1 * last[0, 1, 0, 1] + 0.5 * last[0, 0, 0, 2]]).reshape(1, 2)
    # the last block only: head-averaged gradients, class 0 (1, 0), class 1 (0.05, 0.25), each over its own maximum
    maps = localise(cls, [first, last], (1, 2), blocks=1, use_affinity=False)
    assert torch.allclose(maps, torch.tensor([[[[1.0, 0.0]], [[0.2, 1.0]]]]), atol=1e-4)
    # both blocks: class 0 gains 0.5 at patch 2 from the first block
    maps = localise(cls, [first, last], (1, 2), blocks=2, use_affinity=False)
    assert torch.allclose(maps, torch.tensor([[[[1.0, 0.5]], [[0.2, 1.0]]]]), atol=1e-4)


@pytest.fixture
def vit_cfg():
    return config.load([REPO / "params.yaml"], ["model.backbone=vit_toy", "plugins.acr.enabled=true"])


def test_acr_on_the_toy_vit_gives_finite_terms_with_gradients(vit_cfg, one_thread):
    torch.manual_seed(0)
    model = build_model(vit_cfg, load_weights=False)
    plugins = build_plugins(vit_cfg, model)
    images = torch.randn(2, 3, 32, 48)
    raw = torch.rand(2, 3, 32, 48)
    views = plugins.extra_views(images, raw)
    assert torch.equal(views["flip"][0], images.flip(-1)) and torch.equal(views["flip"][1], raw.flip(-1))
    outputs = {"crop": model(images), "flip": model(views["flip"][0])}
    labels = torch.tensor([[1.0] + [0.0] * 9, [0.0, 1.0] + [0.0] * 8])
    terms = plugins.losses(Step(0, False, images, images, labels, outputs, views))
    assert set(terms) == {"acr.cls_attention", "acr.affinity", "acr.cls_flip"}
    assert [w for _, w in terms.values()] == [125.0, 125.0, 1.0]
    assert all(torch.isfinite(v) and v > 0 for v, _ in terms.values())
    PluginSet.total(terms).backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_acr_on_a_cnn_is_refused_naming_the_key_and_the_analogue():
    cfg = config.load([REPO / "params.yaml"], ["plugins.acr.enabled=true"])
    with pytest.raises(WsssError, match=r"key 'plugins.acr.enabled': ACR needs a transformer's attention, model.backbone "
                                        r"one of vit_toy, vit_b16, vit_hybrid, not 'small' \(on a CNN, "
                                        r"plugins.flip_affinity is the flip-consistency analogue\)$"):
        check_plugins(cfg)


def test_the_network_for_inference_is_acr_s_localiser_and_channels_last_as_the_keys_say(vit_cfg, monkeypatch):
    """`inference_network` (what infer, pseudo, predict and submit load) wraps the network in ACR's localisation
    with ``infer.localisation: acr`` and converts it to channels-last with ``infer.channels_last``."""
    import copy

    from wsss.stages import infer

    model = build_model(vit_cfg, load_weights=False).eval()
    monkeypatch.setattr(infer, "load_model", lambda cfg, dev, path: (model, {"path": str(path)}))
    plain, source = infer.inference_network(vit_cfg, torch.device("cpu"), Path("a.pt"))
    assert plain is model and source == {"path": "a.pt"}
    cfg = copy.deepcopy(vit_cfg)
    cfg["infer"].update(localisation="acr", acr_blocks=3, acr_affinity=False)
    localiser, _ = infer.inference_network(cfg, torch.device("cpu"), Path("a.pt"))
    assert isinstance(localiser, ACRLocaliser) and localiser.blocks == 3 and localiser.use_affinity is False
    assert localiser.network is model
    cnn = build_model(config.load([REPO / "params.yaml"], ["infer.channels_last=true"]), load_weights=False)
    monkeypatch.setattr(infer, "load_model", lambda cfg, dev, path: (cnn, {}))
    converted, _ = infer.inference_network(config.load([REPO / "params.yaml"], ["infer.channels_last=true"]),
                                           torch.device("cpu"), Path("a.pt"))
    weight = next(w for w in converted.parameters() if w.dim() == 4 and w.shape[-1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_the_localiser_gives_masks_of_the_network_s_size_from_the_attention(vit_cfg, one_thread):
    torch.manual_seed(0)
    model = build_model(vit_cfg, load_weights=False).eval()
    localiser = ACRLocaliser(model, 2, True)
    with torch.no_grad():  # as infer runs it
        out = localiser(torch.randn(1, 3, 32, 40))
        plain = model(torch.randn(1, 3, 32, 40))
    assert out["masks"].shape == plain["masks"].shape and out["cls"].shape == plain["cls"].shape
    fg = out["masks"][:, 1:]
    assert torch.all(fg >= 0) and torch.all(fg <= 1 + 1e-5)
    assert torch.allclose(out["masks"][:, 0], 1 - fg.amax(1))
    cnn = build_model(config.load([REPO / "params.yaml"]), load_weights=False)
    with pytest.raises(WsssError, match=r"^key 'infer.localisation': acr needs a ViT backbone \(model.backbone vit_toy, "
                                        r"vit_b16 or vit_hybrid\), whose attention it reads$"):
        ACRLocaliser(cnn, 2, True)
    with pytest.raises(WsssError, match="key 'infer.acr_blocks': 7 blocks, the backbone has 6"):
        ACRLocaliser(model, 7, True)
    with pytest.raises(WsssError, match="key 'infer.acr_blocks': 0 blocks, the backbone has 6"):
        ACRLocaliser(model, 0, True)
    assert ACRLocaliser(model, 1, False).blocks == 1 and ACRLocaliser(model, 6, False).blocks == 6  # the bounds


def test_flip_affinity_is_zero_for_a_flip_equivariant_map_and_trains_on_a_cnn(one_thread):
    features = torch.randn(1, 4, 3, 5)
    symmetric = features + features.flip(-1)
    assert torch.allclose(affinity(symmetric), affinity(symmetric.flip(-1).flip(-1)))
    cfg = config.load([REPO / "params.yaml"], ["plugins.flip_affinity.enabled=true"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    plugins = build_plugins(cfg, model)
    images = torch.randn(2, 3, 32, 32)
    outputs = {"crop": model(images), "flip": model(images.flip(-1))}
    labels = torch.zeros(2, 10)
    labels[:, 3] = 1
    terms = plugins.losses(Step(0, False, images, images, labels, outputs, plugins.extra_views(images, images)))
    assert set(terms) == {"flip_affinity.affinity", "flip_affinity.cls_flip"}
    mine = affinity(outputs["crop"]["features"]["deep"])
    theirs = affinity(outputs["flip"]["features"]["deep"].flip(-1))
    assert torch.allclose(terms["flip_affinity.affinity"][0], (mine - theirs).abs().mean())
    assert F.relu(mine).equal(mine)


def test_flip_affinity_hand_computed_its_flipped_view_and_its_weighted_terms(one_thread):
    # three positions with feature vectors (3, 4), (1, 0), (-1, 0): cosines 0.6, -0.6 and -1, the negatives cut
    features = torch.tensor([[3.0, 1.0, -1.0], [4.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)
    expected = torch.tensor([[[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.allclose(affinity(features), expected, atol=1e-6)
    cfg = config.load([REPO / "params.yaml"], ["plugins.flip_affinity.enabled=true",
                                               "plugins.flip_affinity.affinity_weight=0.25",
                                               "plugins.flip_affinity.flip_cls_weight=3.0"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    plugins = build_plugins(cfg, model)
    images, raw = torch.randn(2, 3, 32, 40), torch.rand(2, 3, 32, 40)  # not square: W and H flips differ
    views = plugins.extra_views(images, raw)
    assert set(views) == {"flip"}  # the name the trainer runs the network on and the terms read
    assert views["flip"][0].equal(images.flip(3)) and views["flip"][1].equal(raw.flip(3))
    outputs = {"crop": model(images), "flip": model(views["flip"][0])}
    labels = torch.zeros(2, 10)
    labels[:, 3] = 1
    terms = plugins.losses(Step(0, False, images, raw, labels, outputs, views))
    assert terms["flip_affinity.affinity"][1] == 0.25 and terms["flip_affinity.cls_flip"][1] == 3.0
    assert torch.allclose(terms["flip_affinity.cls_flip"][0], classification_loss(outputs["flip"]["cls"], labels))


@pytest.mark.parametrize("use_affinity", [True, False])
def test_the_localiser_is_localise_on_the_network_s_attention(vit_cfg, one_thread, use_affinity):
    torch.manual_seed(0)
    model = build_model(vit_cfg, load_weights=False).eval()
    x = torch.randn(1, 3, 32, 40)
    out = ACRLocaliser(model, 2, use_affinity)(x)
    with torch.enable_grad():
        own = model(x)
        maps = localise(own["cls"].float(), own["features"]["attentions"], (4, 5), 2, use_affinity)
    fg = resize_to(maps.detach(), tuple(own["masks"].shape[2:]))
    assert torch.allclose(out["masks"][:, 1:], fg, atol=1e-5)
    other = ACRLocaliser(model, 1 if use_affinity else 3, not use_affinity)(x)
    assert not torch.allclose(other["masks"], out["masks"], atol=1e-3)  # the blocks and the affinity are used
