"""Loading ImageNet weights into a backbone, with an explicit report of missing and unexpected keys."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from wsss.engine import checkpoint
from wsss.errors import WsssError

log = logging.getLogger(__name__)

# The WR38 ImageNet weights published with the SSSS code (converted from MXNet, 402 MB).
WR38_WEIGHTS_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
# Classifier-only keys of the various weights files: never part of a backbone.
CLASSIFIER_PREFIXES = ("fc8.", "linear1000.", "fc.", "head.")
# A whole network's state dict (a wsss checkpoint) names its backbone's entries with this prefix.
BACKBONE_PREFIX = "backbone."
_SKIPPED_BUFFERS = ("num_batches_tracked",)
_LIST_LIMIT = 20


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = len(names) - _LIST_LIMIT
    return shown + (f", ... ({more} more)" if more > 0 else "")


def read_state_dict(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """A tensor state dict from ``path``: plain, or under a ``state_dict`` / ``model`` key;
    a ``module.`` prefix (DataParallel) is stripped and classifier keys are dropped. Errors name
    ``key``, the parameter that gave the file (``model.weights``, ``retrain.weights``).

    A wsss checkpoint (``pretrain.pt``, ``train.pt``, ...) gives its backbone: the ``backbone.``
    entries of its model, prefix stripped. That is how a backbone trained by one run starts another
    (the benchmark's shared backbone, workflow/benchmark.yaml).
    """
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"key '{key}': weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        try:
            obj = checkpoint.load(path)  # its RNG state holds numpy arrays: a full load
        except WsssError:
            raise WsssError(f"key '{key}': cannot read {path} as a PyTorch state dict: {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WsssError(f"key '{key}': {path} does not hold a state dict of tensors")
    obj = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    if any(k.startswith(BACKBONE_PREFIX) for k in obj):
        obj = {k[len(BACKBONE_PREFIX):]: v for k, v in obj.items() if k.startswith(BACKBONE_PREFIX)}
    return {k: v for k, v in obj.items() if not k.startswith(CLASSIFIER_PREFIXES)}


def load_backbone_weights(backbone: nn.Module, path: str | Path, allow_partial: bool = False,
                          key: str = "model.weights") -> dict[str, list[str]]:
    """Load ``path`` into ``backbone``. Missing, unexpected or wrongly shaped keys raise a
    WsssError that lists them, unless ``allow_partial``: then they are logged and skipped. Errors
    name ``key``, the parameter that gave the file; only ``model.weights`` offers a partial load.

    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.
    """
    state = read_state_dict(path, key)
    prefix = getattr(backbone, "weights_prefix", "")  # a ViT: timm's names sit under its ``vit`` module
    if prefix and not any(k.startswith(prefix) for k in state):
        state = {prefix + k: v for k, v in state.items()}
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith(_SKIPPED_BUFFERS))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                        for k in state if k in own and state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems and not allow_partial:
        hint = " (set model.allow_partial_weights=true to load the matching keys anyway)" if key == "model.weights" else ""
        raise WsssError(f"key '{key}': {path} does not fit the {type(backbone).__name__} backbone; "
                        + "; ".join(problems) + hint)
    for problem in problems:
        log.warning("loading %s with model.allow_partial_weights: %s", path, problem)
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    backbone.load_state_dict(loadable, strict=False)
    return {"loaded": sorted(loadable), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def default_weights_path(cfg: dict) -> Path:
    """Where the download stage puts the WR38 ImageNet weights: ``<data.downloads>/<WR38_WEIGHTS_FILE>``."""
    return Path(cfg["data"]["downloads"]) / WR38_WEIGHTS_FILE


def check_sha256(path: str | Path, expected: str | None) -> None:
    """Refuse the weights file ``path`` unless its SHA-256 is ``expected`` (``model.weights_sha256``;
    None: no check). WsssError naming the key, the file and both digests."""
    if not expected:
        return
    from wsss.data.download import sha256sum

    actual = sha256sum(path)
    if actual != expected.lower():
        raise WsssError(f"key 'model.weights_sha256': {path} has SHA-256 {actual}, expected {expected}")


def load_pretrained(backbone: nn.Module, cfg: dict) -> None:
    """Load the ImageNet weights the configuration asks for into ``backbone``.

    ``model.pretrained: false`` loads nothing. Otherwise ``model.weights`` (a local file) wins;
    if it is null, WR38 reads ``default_weights_path(cfg)`` and the ResNets torchvision's weights
    (from the torch hub cache, else downloaded).
    """
    model_cfg = cfg["model"]
    name = model_cfg["backbone"]
    if not model_cfg["pretrained"]:
        if model_cfg.get("weights"):
            raise WsssError("key 'model.weights' is set but model.pretrained is false: "
                            "set -S model.pretrained=true to load it, or -S model.weights=null")
        return
    allow_partial = model_cfg.get("allow_partial_weights", False)
    expected = model_cfg.get("weights_sha256")
    if model_cfg.get("weights"):
        check_sha256(model_cfg["weights"], expected)
        load_backbone_weights(backbone, model_cfg["weights"], allow_partial)
    elif name == "wr38":
        path = default_weights_path(cfg)
        if not path.is_file():
            raise WsssError(
                f"WR38 ImageNet weights not found at {path} (the download cache, key 'data.downloads'): "
                f"put {WR38_WEIGHTS_FILE} there (the weights download fetches it there), or pass a local "
                "copy with -S model.weights=PATH, or train from scratch with -S model.pretrained=false")
        check_sha256(path, expected)
        load_backbone_weights(backbone, path, allow_partial)
    elif expected:
        raise WsssError(f"key 'model.weights_sha256' is set, but the {name} weights come from torchvision's hub cache, "
                        "not a file: give the file with model.weights")
    elif name in ("resnet50", "resnet101"):
        load_torchvision_imagenet(backbone, name, "model")
    else:
        raise WsssError(f"key 'model.pretrained': no ImageNet weights exist for backbone {name!r}; "
                        "set -S model.pretrained=false or give a file with -S model.weights=PATH")


def load_torchvision_imagenet(backbone: nn.Module, name: str, section: str) -> None:
    """torchvision's ImageNet weights of ResNet ``name`` (``resnet50`` | ``resnet101``) into ``backbone``, from
    the torch hub cache, else downloaded; the classifier is dropped. ``section`` (``model`` or ``retrain``)
    is the params section whose ``weights`` and ``pretrained`` keys the error names as the way out."""
    from wsss.model.backbones.resnet import torchvision_imagenet_state_dict, torchvision_weights_url

    try:
        state = torchvision_imagenet_state_dict(name)
    except Exception as exc:  # no network, proxy errors, corrupt cache: all end the same way
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise WsssError(
            f"cannot obtain torchvision's ImageNet weights for {name} ({type(exc).__name__}: {exc}); "
            f"download {torchvision_weights_url(name)} elsewhere and either put it in {hub} or pass it "
            f"with -S {section}.weights=PATH, or train from scratch with -S {section}.pretrained=false") from None
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(_SKIPPED_BUFFERS)]
    if missing or unexpected:
        raise WsssError(f"torchvision weights for {name} do not fit: missing {missing}, unexpected {unexpected}")
