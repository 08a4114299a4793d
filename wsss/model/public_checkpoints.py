"""The checkpoints the SSSS and WS-FCN authors published, loaded into the wsss network.

Both public codebases save the network's plain ``state_dict`` (no wrapper entry, no ``module.``
prefix; ``utils/checkpoints.py`` of either), e.g. ``model_enc_e020Xs0.928.pth`` (SSSS, WR38, VOC)
and ``model_enc_e018Xs0.905.pth`` (WS-FCN, WR38, VOC). Their module names map onto ours one to one:

- the WR38 backbone keeps its names (``conv1a``, ``b2.bn_branch2a``, ...) under ``backbone.``;
- the decoder ``last_conv.{0,1,4,5,8}`` is our ``decoder.{0.0,0.1,2.0,2.1,4}``;
- SSSS: ``aspp.aspp{i}`` -> ``context.branches.{i-1}``, ``aspp.global_avg_pool`` -> ``context.pool``,
  ``aspp.conv1``/``bn1`` -> ``context.project``; ``fc8_skip`` -> ``fusion.skip``, ``fc8_x`` ->
  ``fusion.merge``; GCI's ``shallow_mask.fc_deep``/``fc_skip``/``fc_cls`` -> ``fusion.gci.film``/
  ``shallow``/``out``;
- WS-FCN: ``fca.fca{i}.conv1_1``/``conv1_2`` (k x 1 then 1 x k) -> ``context.branches.{i-1}.path_a``,
  ``conv2_1``/``conv2_2`` -> ``path_b``; ``fca.ca.sharedMLP`` -> ``context.attention.mlp``;
  ``fca.sa.conv`` -> ``context.srm.conv``; ``fca.conv1``/``bn1`` -> ``context.fuse``/``bn``;
  ``align1.down_h``/``down_l``/``flow_make`` -> ``fusion.align.reduce_context``/``reduce_shallow``/
  ``flow``; ``sf2.conv{n}{h,v}``/``bn{n}{h,v}`` -> ``fusion.{h,v}{n}.0``/``.1``.

Dropped, having no counterpart: PAMR's fixed shift kernels ``_aff.aff_{x,m,std}.kernel`` (ours are
built in) and WS-FCN's ``fca.fca{i}.bn.*`` (created by its strip module, never used in its forward).
A key that matches no rule, or a wsss key that receives nothing, is an error that lists them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from wsss.errors import WsssError

_BACKBONE = (r"((?:conv1a|bn7|b\d+(?:_\d+)?)\..+)", r"backbone.\1")
_DECODER = [(rf"last_conv\.{old}\.", f"decoder.{new}.") for old, new in
            (("0", "0.0"), ("1", "0.1"), ("4", "2.0"), ("5", "2.1"), ("8", "4"))]
_PAMR = (r"_aff\.aff_(?:x|m|std)\.kernel", None)

# (regex at the start of a public key, its wsss replacement: a template, a function of the match, or None to drop)
RULES: dict[str, list[tuple[str, object]]] = {
    "ssss": [
        _BACKBONE, _PAMR, *_DECODER,
        (r"aspp\.aspp([1-4])\.atrous_conv\.", lambda m: f"context.branches.{int(m.group(1)) - 1}.0."),
        (r"aspp\.aspp([1-4])\.bn\.", lambda m: f"context.branches.{int(m.group(1)) - 1}.1."),
        (r"aspp\.global_avg_pool\.([12])\.", lambda m: f"context.pool.proj.{int(m.group(1)) - 1}."),
        (r"aspp\.conv1\.", "context.project.0."),
        (r"aspp\.bn1\.", "context.project.1."),
        (r"fc8_skip\.([01])\.", r"fusion.skip.\1."),
        (r"fc8_x\.([01])\.", r"fusion.merge.\1."),
        (r"shallow_mask\.fc_deep\.", "fusion.gci.film."),
        (r"shallow_mask\.fc_skip\.", "fusion.gci.shallow."),
        (r"shallow_mask\.fc_cls\.", "fusion.gci.out."),
    ],
    "wsfcn": [
        _BACKBONE, _PAMR, *_DECODER,
        (r"fca\.fca([1-4])\.conv1_([12])\.", lambda m: f"context.branches.{int(m.group(1)) - 1}.path_a.{int(m.group(2)) - 1}."),
        (r"fca\.fca([1-4])\.conv2_([12])\.", lambda m: f"context.branches.{int(m.group(1)) - 1}.path_b.{int(m.group(2)) - 1}."),
        (r"fca\.fca[1-4]\.bn\.", None),
        (r"fca\.ca\.sharedMLP\.([02])\.", r"context.attention.mlp.\1."),
        (r"fca\.sa\.conv\.", "context.srm.conv."),
        (r"fca\.global_avg_pool\.([12])\.", lambda m: f"context.pool.proj.{int(m.group(1)) - 1}."),
        (r"fca\.conv1\.", "context.fuse."),
        (r"fca\.bn1\.", "context.bn."),
        (r"align1\.down_h\.", "fusion.align.reduce_context."),
        (r"align1\.down_l\.", "fusion.align.reduce_shallow."),
        (r"align1\.flow_make\.", "fusion.align.flow."),
        (r"sf2\.conv([1-4])([hv])\.", r"fusion.\2\1.0."),
        (r"sf2\.bn([1-4])([hv])\.", r"fusion.\2\1.1."),
    ],
}
# What each public network is in wsss terms: (context, fusion) and the overrides that select it.
ARCHITECTURES = {"ssss": (("aspp", "gci"), "-S model.fca=false -S model.sf2=false"),
                 "wsfcn": (("fca", "sf2"), "the defaults (model.fca=true, model.sf2=true)")}


def is_public(state: object) -> bool:
    """Whether a loaded file is a public SSSS / WS-FCN checkpoint: a plain dict of tensors."""
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def flavour(state: dict) -> str:
    """``"wsfcn"`` or ``"ssss"`` from the head's module names; WsssError for anything else."""
    keys = [k.removeprefix("module.") for k in state]
    if any(k.startswith("fca.") for k in keys):
        return "wsfcn"
    if any(k.startswith("aspp.") for k in keys):
        return "ssss"
    raise WsssError("not a public SSSS / WS-FCN checkpoint: no 'aspp.*' or 'fca.*' keys")


def map_key(key: str, rules: list) -> str | None:
    """The wsss name of a public key, None for a dropped one; KeyError when no rule matches."""
    key = key.removeprefix("module.")
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
            if replacement is None:
                return None
            new = replacement(match) if callable(replacement) else match.expand(replacement)
            return new + key[match.end():]
    raise KeyError(key)


def convert(state: dict, kind: str | None = None) -> dict[str, torch.Tensor]:
    """A public state dict renamed to wsss's keys; ``kind`` (``ssss`` / ``wsfcn``) is detected when None.

    Raises WsssError listing every key that no rule maps.
    """
    kind = kind or flavour(state)
    out, unmapped = {}, []
    for key, value in state.items():
        try:
            new = map_key(key, RULES[kind])
        except KeyError:
            unmapped.append(key)
            continue
        if new is not None:
            out[new] = value
    if unmapped:
        raise WsssError(f"{len(unmapped)} key(s) of the {kind} checkpoint map to no wsss parameter: {', '.join(unmapped)}")
    return out


def load_into(model: torch.nn.Module, state: dict, path: str | Path, context: str, fusion: str) -> str:
    """Load a public checkpoint into ``model`` (built for ``context`` / ``fusion``); returns its kind.

    Refuses a checkpoint of the other network (naming the overrides that select it), and one whose
    keys or shapes do not fit, listing the missing, unexpected and wrongly shaped keys.
    """
    try:
        kind = flavour(state)
    except WsssError as exc:
        backbone_only = all(re.match(_BACKBONE[0], k.removeprefix("module.")) for k in state)
        hint = "; backbone weights (e.g. ImageNet) go in model.weights" if backbone_only else ""
        raise WsssError(f"{path}: {exc}{hint}") from None
    expected, overrides = ARCHITECTURES[kind]
    if (context, fusion) != expected:
        raise WsssError(f"{path} is a public {kind} checkpoint ({expected[0]} + {expected[1]}), but params build "
                        f"{context} + {fusion}; run with {overrides}")
    try:
        converted = convert(state, kind)
    except WsssError as exc:
        raise WsssError(f"{path}: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    shapes = sorted(f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(converted)
                    if converted[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise WsssError(f"{path} does not fit the configured network ({'; '.join(parts)}); check data.name "
                        "(the classes) and model.backbone")
    model.load_state_dict(converted)
    return kind
