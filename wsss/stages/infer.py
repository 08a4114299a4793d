"""`wsss infer`: multi-scale + flip inference on the evaluation split.

For every image, as the public WS-FCN / SSSS inference does (``infer_val.py`` with its multi-scale
loader and ``MergeMultiScale`` writer):

1. a view per scale of ``infer.scales`` (each also flipped when ``infer.flip``): the RGB image
   resized with PIL bicubic to ``round(W * s) x round(H * s)``, normalised;
2. with ``infer.pad_size`` ``[H, W]`` each view is centred on a canvas of that size filled with
   zeros after normalisation (the public code's ``PAD_SIZE``, 1024 x 1024 for VOC); with ``null``
   each view runs at its own size. Either way, only views of one size share a forward pass, at most
   ``infer.chunk`` of them, so no view sees another's padding and the result never depends on
   ``chunk`` or on the order of ``infer.scales``;
3. the model's masks upsampled to its input size (bilinear, ``align_corners=True``, as the public
   model does at test time), the view's box cut out, resized to the image size (bilinear,
   ``align_corners=False``), un-flipped, and averaged over the views in a fixed order;
4. class presence: the classifier (max over views of sigmoid(score) > ``fp_cut``) or the
   ground-truth image labels (the "clean" protocol); background: the constant ``bg_const`` (WS-FCN
   code) or the averaged background mask raised to ``bg_power`` (SSSS code).

Writes, atomically, into ``results/<dataset>/<split>/infer/``: ``checkpoint.yaml`` (the model file,
its SHA-256 and the stage or release that made it), ``masks/<name>.png`` (argmax over
the background and the present classes, VOC palette), ``probs/<name>.npz`` (``classes``: the ids,
background first; ``probs``: their float16 scores, the background by the rule above, the classes'
averaged masks, not renormalised: what the CRF needs), ``scores.tsv`` and ``config.yaml``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.dataset import VOCSegmentation, labels_from_mask, normalize, to_tensor
from wsss.data.download import sha256sum
from wsss.data.palette import save_mask
from wsss.engine import checkpoint, device as devices
from wsss.errors import WsssError
from wsss.model import public_checkpoints
from wsss.model.network import build_model, describe
from wsss.paths import for_config
from wsss.stages import shards
from wsss.utils.atomic import atomic_path, write_yaml


def views(scales: list[float], flip: bool) -> list[tuple[float, bool]]:
    """The views of one image, ``(scale, flipped)``, in the order the public loader makes them."""
    return [(s, f) for s in scales for f in ((False, True) if flip else (False,))]


def view_size(size_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(round(H * s), round(W * s))``, at least 1: the public loader's ``int(round(...))``."""
    return max(1, int(round(size_hw[0] * scale))), max(1, int(round(size_hw[1] * scale)))


def make_view(image: Image.Image, scale: float, flipped: bool) -> torch.Tensor:
    """One view ``(3, h, w)``: PIL bicubic resize, optional horizontal flip, ImageNet normalisation."""
    h, w = view_size((image.height, image.width), scale)
    view = image.resize((w, h), resample=Image.BICUBIC) if (h, w) != (image.height, image.width) else image
    if flipped:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(to_tensor(view))


def place(view: torch.Tensor, pad_size: list[int] | None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The view on its canvas and its box ``(top, left, h, w)``: centred on a zero ``pad_size`` canvas
    (top/left = half the padding, rounded down, as the public loader), or alone when ``pad_size`` is None."""
    _, h, w = view.shape
    if pad_size is None:
        return view, (0, 0, h, w)
    ph, pw = pad_size
    if h > ph or w > pw:
        raise ValueError(f"a {h}x{w} view does not fit the {ph}x{pw} canvas")
    top, left = (ph - h) // 2, (pw - w) // 2
    canvas = view.new_zeros((3, ph, pw))
    canvas[:, top:top + h, left:left + w] = view
    return canvas, (top, left, h, w)


@torch.no_grad()
def predict(model: torch.nn.Module, image: Image.Image, scales: list[float], flip: bool, chunk: int,
            pad_size: list[int] | None = None, device: torch.device | str = "cpu", amp: bool = False,
            channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale + flip inference on one RGB image.

    Returns the masks ``(C, H, W)`` averaged over the views (float32; for the single-stage network
    each view's masks sum to 1 over C, the CAM baseline's need not) and the class presence scores
    ``(C-1,)``: the max over views of sigmoid(class score); None for a network without class scores
    (the second stage's, whose masks are its softmax).
    Views of one size run together, at most ``chunk`` per forward pass; the result does not depend
    on ``chunk`` or on the order of ``scales``. ``amp``: the network's forward under bf16 autocast
    (``infer.amp``; the masks are averaged in float32); ``channels_last``: the views in channels-last
    memory format (``infer.channels_last``, for a model converted likewise). Raises ValueError when a
    view exceeds ``pad_size``.
    """
    device_type = torch.device(device).type
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    height, width = image.height, image.width
    plan = views(scales, flip)
    placed = {}
    groups: dict[tuple[int, int], list[tuple[float, bool]]] = defaultdict(list)
    for key in sorted(set(plan)):
        canvas, box = place(make_view(image, *key), pad_size)
        placed[key] = (canvas, box)
        groups[tuple(canvas.shape[-2:])].append(key)
    per_view, presence = {}, None
    for size in sorted(groups):
        members = groups[size]
        for start in range(0, len(members), chunk):
            keys = members[start:start + chunk]
            batch = torch.stack([placed[k][0] for k in keys]).to(device).contiguous(memory_format=memory_format)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                out = model(batch)
            masks = F.interpolate(out["masks"].float(), size=size, mode="bilinear", align_corners=True)
            for i, key in enumerate(keys):
                top, left, h, w = placed[key][1]
                m = F.interpolate(masks[i:i + 1, :, top:top + h, left:left + w], size=(height, width),
                                  mode="bilinear", align_corners=False)[0]
                per_view[key] = m.flip(-1) if key[1] else m
            if "cls" in out:  # a fully supervised network (the second stage's) has no class scores
                probs = torch.sigmoid(out["cls"].float()).amax(0)
                presence = probs if presence is None else torch.maximum(presence, probs)
    # A fixed summation order (sorted views), the same for every chunk and every order of scales; a
    # view listed twice (a repeated scale) counts twice, as in the public loader.
    mask_sum = sum(per_view[key] * plan.count(key) for key in sorted(per_view))
    return mask_sum / len(plan), presence


def combine(masks: torch.Tensor, present: torch.Tensor, infer_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Background + present foreground classes -> (class ids (K,) uint8, scores (K, H, W) float32).

    ``scores[0]`` is the background by ``infer.background`` (the constant ``bg_const`` or the averaged
    background mask ** ``bg_power``), ``scores[1:]`` the averaged masks of the present classes, not
    renormalised (the public writers' ``mean_mask``; absent classes are zeroed there, left out here).
    """
    fg_ids = torch.nonzero(present).flatten() + 1
    if infer_cfg["background"] == "power":
        bg = masks[0] ** infer_cfg["bg_power"]
    else:
        bg = torch.full_like(masks[0], infer_cfg["bg_const"])
    stack = torch.cat([bg[None], masks[fg_ids]], 0)
    ids = torch.cat([torch.zeros(1, dtype=torch.long), fg_ids.cpu()])
    return ids.numpy().astype(np.uint8), stack.cpu().numpy()


def infer_views(model: torch.nn.Module, image: Image.Image, icfg: dict, device: torch.device | str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` under the ``infer`` section ``icfg``: its ``scales``, ``flip``, ``chunk``, ``pad_size``,
    ``amp`` and ``channels_last``. The one call of `predict` of the stages that label images with the
    first stage's network (infer, pseudo, predict, submit), so that they see the same views."""
    return predict(model, image, icfg["scales"], icfg["flip"], icfg["chunk"], icfg["pad_size"], device, icfg["amp"],
                   icfg["channels_last"])


def check_canvas(dataset: VOCSegmentation, infer_cfg: dict) -> None:
    """Refuse, before any compute, an image whose largest view does not fit ``infer.pad_size``."""
    if infer_cfg["pad_size"] is None:
        return
    ph, pw = infer_cfg["pad_size"]
    top = max(infer_cfg["scales"])
    for name in dataset.names:
        path = dataset.image_path(name)
        with Image.open(path) as im:  # the header only
            h, w = view_size((im.height, im.width), top)
        if h > ph or w > pw:
            raise WsssError(f"{path} ({im.width}x{im.height}) at scale {top} is {w}x{h}, larger than key "
                            f"'infer.pad_size' {infer_cfg['pad_size']} (H, W): raise it or drop that scale")


def describe_checkpoint(path: Path, state: object) -> dict:
    """What ``infer`` writes to ``checkpoint.yaml``: the file, its SHA-256 and what made it."""
    made_by = (f"public {public_checkpoints.flavour(state)} checkpoint" if public_checkpoints.is_public(state)
               else f"wsss {checkpoint.made_by(state)}")
    return {"path": str(path), "sha256": sha256sum(path), "made_by": made_by}


def load_model(cfg: dict, dev: torch.device, path: Path) -> tuple[torch.nn.Module, dict]:
    """The network in ``path``, in eval mode on ``dev``, and ``describe_checkpoint``'s record of it.

    ``path``: a wsss checkpoint made under the current params (else refused, naming the keys that
    differ), or a checkpoint the SSSS / WS-FCN authors published (``wsss.model.public_checkpoints``),
    for the network the params describe."""
    state = checkpoint.read(path)
    model = build_model(cfg, load_weights=False)
    if public_checkpoints.is_public(state):
        names = describe(cfg)
        if names["method"] != "single_stage" or names["backbone"] != "wr38":
            raise WsssError(f"{path} is a public SSSS / WS-FCN checkpoint: it needs model.method single_stage and "
                            f"model.backbone wr38 (params: {names['method']}, {names['backbone']})")
        kind = public_checkpoints.load_into(model, state, path, names["context"], names["fusion"])
        print(f"infer: loaded the public {kind} checkpoint {path}")
    else:
        if not checkpoint.is_wsss(state):
            raise WsssError(f"checkpoint {path} is neither a wsss checkpoint nor a public SSSS / WS-FCN state dict")
        checkpoint.check_made_by(state, cfg, path)
        checkpoint.check_signature(state, cfg, path)
        model.load_state_dict(state["model"])
    return model.to(dev).eval(), describe_checkpoint(path, state)


def inference_network(cfg: dict, dev: torch.device, path: Path) -> tuple[torch.nn.Module, dict]:
    """The module whose ``masks`` inference averages, and ``describe_checkpoint``'s record of its file:
    `load_model`, converted to channels-last memory format with ``infer.channels_last``, then
    `for_inference` (ACR's localisation with ``infer.localisation: acr``). Every stage that runs the
    first stage's network on images (infer, pseudo, predict, submit) takes it from here."""
    model, source = load_model(cfg, dev, path)
    if cfg["infer"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return for_inference(model, cfg), source


def load_segmenter(cfg: dict, dev: torch.device, path: Path) -> tuple[torch.nn.Module, dict]:
    """The second stage's network in ``path`` (a `wsss retrain` checkpoint made under the current params),
    in eval mode on ``dev``, and ``describe_checkpoint``'s record of it."""
    from wsss.model.segmenter import build_segmenter

    state = checkpoint.load(path)
    checkpoint.check_made_by(state, cfg, path, "retrain")
    model = build_segmenter(cfg, load_weights=False)
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), describe_checkpoint(path, state)


def for_inference(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """The module whose ``masks`` inference averages: the network (``infer.localisation: head``) or ACR's
    localisation on it (``acr``, a ViT backbone; ``wsss.model.acr_cam``)."""
    icfg = cfg["infer"]
    if icfg["localisation"] == "acr":
        from wsss.model.acr_cam import ACRLocaliser

        return ACRLocaliser(model, icfg["acr_blocks"], icfg["acr_affinity"])
    return model


def run(cfg: dict, args) -> None:
    """The `infer` CLI: the whole split, one shard of it (``--shard I/N``), or the shards gathered
    (``--gather N``; `wsss.stages.shards`)."""
    stage2 = args.stage2
    paths = for_config(cfg, args.results, stage2=stage2)
    icfg = cfg["infer"]
    provenance.check_dataset(paths.data, cfg)
    dataset = VOCSegmentation(paths.data, cfg["data"]["eval_split"], params.num_classes(cfg))
    check_canvas(dataset, icfg)
    model_path = Path(args.checkpoint) if args.checkpoint else paths.checkpoint("retrain" if stage2 else "train")
    if args.gather is not None:
        return gather(cfg, paths.infer, dataset.names, args.gather, stage2, model_path)
    shard = shards.Shard.parse(args.shard, len(dataset)) if args.shard else None
    indices = shard.take(range(len(dataset))) if shard else range(len(dataset))
    target = shards.shard_dir(paths.infer, shard) if shard else paths.infer
    dev = devices.resolve(icfg["device"])
    if stage2:
        model, source = load_segmenter(cfg, dev, model_path)
        if icfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
    else:
        model, source = inference_network(cfg, dev, model_path)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "masks").mkdir()
        (tmp / "probs").mkdir()
        score_rows = []
        desc = f"infer {cfg['data']['eval_split']}" + (f" {shard.name}" if shard else "")
        for i in tqdm(indices, desc=desc, unit="img", dynamic_ncols=True):
            name = dataset.names[i]
            image, mask = dataset.load(i)  # one decode of each file, the mask checked
            masks, scores = infer_views(model, image, icfg, dev)
            if stage2:  # every class, the background the network's own: its averaged softmax
                ids, probs = np.arange(dataset.num_classes, dtype=np.uint8), masks.cpu().numpy()
            else:
                if icfg["presence"] == "gt":
                    present = torch.from_numpy(labels_from_mask(mask, dataset.num_classes)).to(dev) > 0
                else:
                    present = scores > icfg["fp_cut"]
                ids, probs = combine(masks, present, icfg)
                score_rows.append(name + "\t" + "\t".join(f"{v:.4f}" for v in scores.tolist()) + "\n")
            save_mask(ids[probs.argmax(0)], tmp / "masks" / f"{name}.png")
            np.savez_compressed(tmp / "probs" / f"{name}.npz", classes=ids, probs=probs.astype(np.float16))
        if not stage2:
            (tmp / "scores.tsv").write_text(scores_header(cfg) + "".join(score_rows))
        write_yaml(tmp / "config.yaml", cfg)
        write_yaml(tmp / "checkpoint.yaml", source)
    print(f"infer: wrote {len(indices)} masks to {target}")


def scores_header(cfg: dict) -> str:
    return "name\t" + "\t".join(f"c{c}" for c in range(1, params.num_classes(cfg))) + "\n"


def gather(cfg: dict, target: Path, names: list[str], count: int, stage2: bool, model_path: Path) -> None:
    """``--gather N``: the N shards of ``target`` into it (`wsss.stages.shards.gather`), refusing shards
    made under another configuration or from another file than ``model_path`` as it is now."""
    stage = "infer_stage2" if stage2 else "infer"
    if not model_path.is_file():
        raise WsssError(f"checkpoint not found: {model_path} (the shards must come from it)")
    expected = sha256sum(model_path)
    sources: list[dict] = []

    def check(folder: Path) -> None:
        provenance.check_stage_dir(folder, cfg, stage)
        source = params.load_mapping(folder / "checkpoint.yaml", "shard record")
        if source.get("sha256") != expected:
            raise WsssError(f"{folder}: made from {source.get('path')} (SHA-256 {str(source.get('sha256'))[:12]}), "
                            f"but {model_path} is now {expected[:12]}; re-run the shards")
        sources.append(source)

    def finish(tmp: Path, dirs: list[Path]) -> None:
        if not stage2:
            rows = [line for d in dirs for line in (d / "scores.tsv").read_text().splitlines(keepends=True)[1:]]
            (tmp / "scores.tsv").write_text(scores_header(cfg) + "".join(rows))
        write_yaml(tmp / "config.yaml", cfg)
        write_yaml(tmp / "checkpoint.yaml", sources[0])

    shards.gather(target, count, names, ["masks", "probs"], "infer" + (" --stage2" if stage2 else ""), check, finish)
    print(f"infer: gathered {count} shards ({len(names)} masks) into {target}")
