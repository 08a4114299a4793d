"""`wsss infer`: multi-scale + flip inference on the evaluation split.

For every image: views at ``infer.scales`` (each also flipped when ``infer.flip``), run in chunks of
at most ``infer.chunk`` views (padded to a common size), masks resized back, un-flipped and averaged.
Class presence comes from the classifier (max over views of sigmoid(score) > fp_cut) or from the
ground-truth image labels (the "clean" protocol). Background: a constant score or the averaged
background mask raised to a power. Writes, atomically, into ``results/<dataset>/<split>/infer/``:
``masks/<name>.png`` (class indices, VOC palette), ``probs/<name>.npz`` (the present classes and
their probabilities quantised to uint8: what the CRF needs), ``scores.tsv`` and ``config.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss import config as params
from wsss.data.dataset import VOCSegmentation
from wsss.data.palette import save_mask
from wsss.engine import checkpoint, device as devices
from wsss.errors import WsssError
from wsss.model.network import build_model
from wsss.paths import for_config
from wsss.utils.atomic import atomic_path, write_yaml

STRIDE = 8  # pad views to a multiple of the deepest output stride


def views(scales: list[float], flip: bool) -> list[tuple[float, bool]]:
    return [(s, f) for s in scales for f in ((False, True) if flip else (False,))]


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, scales: list[float], flip: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average masks (C,H,W) over the views and the max over views of sigmoid(class scores) (C-1,)."""
    _, height, width = image.shape
    plan = views(scales, flip)
    mask_sum, presence = None, None
    for start in range(0, len(plan), chunk):
        group = plan[start:start + chunk]
        sizes = [(max(1, round(height * s)), max(1, round(width * s))) for s, _ in group]
        pad_h = math.ceil(max(h for h, _ in sizes) / STRIDE) * STRIDE
        pad_w = math.ceil(max(w for _, w in sizes) / STRIDE) * STRIDE
        batch = image.new_zeros((len(group), 3, pad_h, pad_w))
        for i, ((_, flipped), (h, w)) in enumerate(zip(group, sizes)):
            view = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            batch[i, :, :h, :w] = view.flip(-1) if flipped else view
        out = model(batch)
        masks = out["masks"].float()
        stride = pad_h // masks.shape[-2]
        for i, ((_, flipped), (h, w)) in enumerate(zip(group, sizes)):
            # Only the cells covering the view, so the padding (which depends on the chunk) is never blended in.
            rows, cols = math.ceil(h / stride), math.ceil(w / stride)
            m = F.interpolate(masks[i:i + 1, :, :rows, :cols], size=(rows * stride, cols * stride), mode="bilinear", align_corners=False)
            m = F.interpolate(m[:, :, :h, :w], size=(height, width), mode="bilinear", align_corners=False)[0]
            m = m.flip(-1) if flipped else m
            mask_sum = m if mask_sum is None else mask_sum + m
        probs = torch.sigmoid(out["cls"].float()).amax(0)
        presence = probs if presence is None else torch.maximum(presence, probs)
    return mask_sum / len(plan), presence


def combine(masks: torch.Tensor, present: torch.Tensor, infer_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Background + present foreground classes -> (class ids (K,), probabilities (K,H,W) summing to 1)."""
    fg_ids = torch.nonzero(present).flatten() + 1
    if infer_cfg["background"] == "power":
        bg = masks[0] ** infer_cfg["bg_power"]
    else:
        bg = torch.full_like(masks[0], infer_cfg["bg_const"])
    stack = torch.cat([bg[None], masks[fg_ids]], 0).clamp_min(0)
    stack = stack / stack.sum(0, keepdim=True).clamp_min(1e-8)
    ids = torch.cat([torch.zeros(1, dtype=torch.long), fg_ids.cpu()])
    return ids.numpy().astype(np.uint8), stack.cpu().numpy()


def quantise(probs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def load_model(cfg: dict, dev: torch.device, path: Path) -> torch.nn.Module:
    state = checkpoint.load(path)
    checkpoint.check_signature(state, cfg, path)
    model = build_model(cfg, load_weights=False)
    model.load_state_dict(state["model"])
    return model.to(dev).eval()


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    icfg = cfg["infer"]
    dev = devices.resolve(icfg["device"])
    model = load_model(cfg, dev, Path(args.checkpoint) if args.checkpoint else paths.checkpoint("train"))
    dataset = VOCSegmentation(paths.data, cfg["data"]["eval_split"], params.num_classes(cfg))
    with atomic_path(paths.infer, directory=True) as tmp:
        (tmp / "masks").mkdir()
        (tmp / "probs").mkdir()
        score_rows = []
        for i in tqdm(range(len(dataset)), desc=f"infer {cfg['data']['eval_split']}", unit="img", dynamic_ncols=True):
            item = dataset[i]
            masks, scores = predict(model, item["image"].to(dev), icfg["scales"], icfg["flip"], icfg["chunk"])
            present = item["labels"].to(dev) > 0 if icfg["presence"] == "gt" else scores > icfg["fp_cut"]
            ids, probs = combine(masks, present, icfg)
            save_mask(ids[probs.argmax(0)], tmp / "masks" / f"{item['name']}.png")
            np.savez_compressed(tmp / "probs" / f"{item['name']}.npz", classes=ids, probs=quantise(probs))
            score_rows.append(item["name"] + "\t" + "\t".join(f"{v:.4f}" for v in scores.tolist()))
        if not score_rows:
            raise WsssError(f"split '{cfg['data']['eval_split']}' of {paths.data} is empty")
        header = "name\t" + "\t".join(f"c{c}" for c in range(1, params.num_classes(cfg)))
        (tmp / "scores.tsv").write_text(header + "\n" + "\n".join(score_rows) + "\n")
        write_yaml(tmp / "config.yaml", cfg)
    print(f"infer: wrote {len(score_rows)} masks to {paths.infer}")
