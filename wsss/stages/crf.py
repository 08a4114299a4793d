"""`wsss crf`: dense-CRF refinement of the inferred probabilities, parallel over images.

Unary = -log p (clipped at ``crf.unary_clip``); a Gaussian kernel (``gauss_sxy``, ``gauss_compat``)
and a bilateral kernel (``bi_sxy``, ``bi_srgb``, ``bi_compat``) at full resolution; ``crf.iters``
mean-field iterations. ``crf.background: fg_power`` replaces the background by (1 - max fg) ** bg_power
(the WS-FCN code) before the CRF. Writes ``results/<dataset>/<split>/crf/masks/<name>.png``.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.dataset import read_image
from wsss.data.palette import save_mask
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.utils.atomic import atomic_path, write_yaml


def read_probs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (K,), probabilities (K,H,W) float32) from an infer ``probs/*.npz`` file."""
    try:
        with np.load(path) as f:
            ids, probs = f["classes"], f["probs"]
    except Exception as exc:
        raise WsssError(f"probability file {path} is unreadable or corrupt: {exc}") from None
    if probs.ndim != 3 or ids.ndim != 1 or len(ids) != probs.shape[0] or probs.dtype != np.uint8:
        raise WsssError(f"probability file {path} is malformed: classes {ids.shape}, probs {probs.shape} {probs.dtype}")
    return ids, probs.astype(np.float32) / 255.0


def refine(image: np.ndarray, probs: np.ndarray, crf: dict) -> np.ndarray:
    """Mean-field dense CRF; returns the index (into the K channels) of the most probable label per pixel."""
    import pydensecrf.densecrf as dcrf

    if crf["background"] == "fg_power" and probs.shape[0] > 1:
        probs = probs.copy()
        probs[0] = (1.0 - probs[1:].max(0)) ** crf["bg_power"]
        probs /= probs.sum(0, keepdims=True).clip(min=1e-8)
    k, h, w = probs.shape
    if k == 1:
        return np.zeros((h, w), dtype=np.int64)
    unary = np.ascontiguousarray(-np.log(np.clip(probs, crf["unary_clip"], 1.0)).reshape(k, -1), dtype=np.float32)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=crf["gauss_sxy"], compat=crf["gauss_compat"])
    rgb = np.array(image, dtype=np.uint8, order="C")  # pydensecrf needs a C-contiguous, writable buffer
    d.addPairwiseBilateral(sxy=crf["bi_sxy"], srgb=crf["bi_srgb"], rgbim=rgb,
                           compat=crf["bi_compat"])
    q = np.asarray(d.inference(crf["iters"])).reshape(k, h, w)
    return q.argmax(0)


def _one(name: str, image_dir: Path, probs_dir: Path, out_dir: Path, crf: dict) -> str:
    ids, probs = read_probs(probs_dir / f"{name}.npz")
    image = np.asarray(read_image(image_dir / f"{name}.jpg"))  # refine() makes the writable copy pydensecrf needs
    if image.shape[:2] != probs.shape[1:]:
        raise WsssError(f"probability file {probs_dir / name}.npz is {probs.shape[1:]} but image {name}.jpg is {image.shape[:2]}")
    save_mask(ids[refine(image, probs, crf)].astype(np.uint8), out_dir / f"{name}.png")
    return name


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    probs_dir = paths.infer / "probs"
    if not probs_dir.is_dir():
        raise WsssError(f"inference output missing: {probs_dir}; run `wsss infer` first")
    names = sorted(p.stem for p in probs_dir.glob("*.npz"))
    if not names:
        raise WsssError(f"no probability files in {probs_dir}")
    workers = cfg["crf"]["workers"] or os.cpu_count() or 1
    with atomic_path(paths.crf, directory=True) as tmp:
        (tmp / "masks").mkdir()
        job = partial(_one, image_dir=paths.data / "JPEGImages", probs_dir=probs_dir, out_dir=tmp / "masks", crf=cfg["crf"])
        bar = tqdm(total=len(names), desc="crf", unit="img", dynamic_ncols=True)
        if workers == 1:
            for name in names:
                job(name)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(job, names, chunksize=8):
                    bar.update()
        bar.close()
        write_yaml(tmp / "config.yaml", cfg)
    print(f"crf: refined {len(names)} masks into {paths.crf} with {workers} workers")
