"""`wsss crf`: dense-CRF refinement of the inferred scores, parallel over images.

As the public WS-FCN code (``utils/dcrf.py``, ``ResultWriter._crf_with_alpha``): with
``crf.background: fg_power`` the background is replaced by (1 - max over the classes) **
``bg_power`` (5 there); with ``probs`` the inferred background is kept (the SSSS code). The scores
are not renormalised; the unary is pydensecrf's ``unary_from_softmax`` (-log of the scores clipped
at ``crf.unary_clip``); a Gaussian kernel (``gauss_sxy``, ``gauss_compat``) and a bilateral kernel
(``bi_sxy``, ``bi_srgb``, ``bi_compat``) at full resolution; ``crf.iters`` mean-field iterations.
``crf.labels: all`` runs the CRF over every class of the dataset, absent ones with score 0 (the
public code's 21 labels); ``present`` over the background and the present classes only (faster).
Writes ``results/<dataset>/<split>/crf/masks/<name>.png``.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.dataset import read_image
from wsss.data.palette import save_mask
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.stages import shards
from wsss.utils.atomic import atomic_path, write_yaml
from wsss.utils.cores import available_cores


def read_probs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (K,), scores (K,H,W) float32) from an infer ``probs/*.npz`` file."""
    try:
        with np.load(path) as f:
            ids, probs = f["classes"], f["probs"]
    except Exception as exc:
        raise WsssError(f"probability file {path} is unreadable or corrupt: {exc}") from None
    if probs.ndim != 3 or ids.ndim != 1 or len(ids) != probs.shape[0] or probs.dtype != np.float16:
        raise WsssError(f"probability file {path} is malformed: classes {ids.shape}, probs {probs.shape} {probs.dtype} "
                        "(expected float16 scores, one row per class id); re-run `wsss infer`")
    return ids, probs.astype(np.float32)


def as_stored(probs: np.ndarray) -> np.ndarray:
    """``probs`` as the crf stage reads them from infer's files: rounded to float16, the precision
    ``infer`` stores its scores in (``probs/*.npz``), then float32, as `read_probs` returns them. Any
    shape. `wsss pseudo` runs the CRF on these without the files, so its masks are the ones ``infer``
    then ``crf`` give."""
    return probs.astype(np.float16).astype(np.float32)


def refine(image: np.ndarray, ids: np.ndarray, probs: np.ndarray, crf: dict, num_classes: int) -> np.ndarray:
    """Mean-field dense CRF over ``probs`` (K, H, W) for the class ids ``ids`` (K,), background first.

    ``image``: (H, W, 3) uint8 RGB. Returns the class id of every pixel, (H, W) uint8.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    probs = probs.copy()
    if crf["background"] == "fg_power":
        fg_max = probs[1:].max(0) if probs.shape[0] > 1 else np.zeros_like(probs[0])
        probs[0] = (1.0 - fg_max) ** crf["bg_power"]
    if crf["labels"] == "all":
        full = np.zeros((num_classes, *probs.shape[1:]), dtype=np.float32)
        full[ids.astype(np.int64)] = probs
        probs, ids = full, np.arange(num_classes, dtype=np.uint8)
    k, h, w = probs.shape
    if k == 1:
        return np.full((h, w), ids[0], dtype=np.uint8)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=crf["unary_clip"])))
    d.addPairwiseGaussian(sxy=crf["gauss_sxy"], compat=crf["gauss_compat"])
    rgb = np.array(image, dtype=np.uint8, order="C")  # pydensecrf needs a C-contiguous, writable buffer
    d.addPairwiseBilateral(sxy=crf["bi_sxy"], srgb=crf["bi_srgb"], rgbim=rgb, compat=crf["bi_compat"])
    q = np.asarray(d.inference(crf["iters"])).reshape(k, h, w)
    return ids[q.argmax(0)].astype(np.uint8)


def _one(name: str, image_dir: Path, probs_dir: Path, out_dir: Path, crf: dict, num_classes: int) -> str:
    ids, probs = read_probs(probs_dir / f"{name}.npz")
    image = np.asarray(read_image(image_dir / f"{name}.jpg"))  # refine() makes the writable copy pydensecrf needs
    if image.shape[:2] != probs.shape[1:]:
        raise WsssError(f"probability file {probs_dir / name}.npz is {probs.shape[1:]} but image {name}.jpg is {image.shape[:2]}")
    save_mask(refine(image, ids, probs, crf, num_classes), out_dir / f"{name}.png")
    return name


def run(cfg: dict, args) -> None:
    """The `crf` CLI: every probability file, one shard of them (``--shard I/N``), or the shards
    gathered (``--gather N``; `wsss.stages.shards`)."""
    paths = for_config(cfg, args.results, stage2=args.stage2)
    probs_dir = paths.infer / "probs"
    if not probs_dir.is_dir():
        raise WsssError(f"inference output missing: {probs_dir}; run `wsss infer{' --stage2' if args.stage2 else ''}` first")
    provenance.check_dataset(paths.data, cfg)
    provenance.check_stage_dir(paths.infer, cfg, "infer_stage2" if args.stage2 else "infer")
    # crf.background is the weak network's background rule; the second stage's softmax has a background of its own
    crf_cfg = {**cfg["crf"], "background": "probs"} if args.stage2 else cfg["crf"]
    names = sorted(p.stem for p in probs_dir.glob("*.npz"))
    if not names:
        raise WsssError(f"no probability files in {probs_dir}")
    sharded = args.gather is not None or args.shard is not None
    infer_record = params.load_mapping(paths.infer / "checkpoint.yaml", "inference record") if sharded else None
    if args.gather is not None:
        stage = "crf_stage2" if args.stage2 else "crf"

        def check(folder: Path) -> None:
            provenance.check_stage_dir(folder, cfg, stage)
            if params.load_mapping(folder / "infer.yaml", "shard record") != infer_record:
                raise WsssError(f"{folder}: refined another inference output than {paths.infer} (its checkpoint.yaml "
                                "differs); re-run the shards")

        shards.gather(paths.crf, args.gather, names, ["masks"], "crf" + (" --stage2" if args.stage2 else ""), check,
                      lambda tmp, dirs: write_yaml(tmp / "config.yaml", cfg))
        print(f"crf: gathered {args.gather} shards ({len(names)} masks) into {paths.crf}")
        return
    shard = shards.Shard.parse(args.shard, len(names)) if args.shard else None
    target = shards.shard_dir(paths.crf, shard) if shard else paths.crf
    names = shard.take(names) if shard else names
    workers = cfg["crf"]["workers"] or available_cores()
    with atomic_path(target, directory=True) as tmp:
        (tmp / "masks").mkdir()
        job = partial(_one, image_dir=paths.data / "JPEGImages", probs_dir=probs_dir, out_dir=tmp / "masks", crf=crf_cfg,
                      num_classes=params.num_classes(cfg))
        bar = tqdm(total=len(names), desc="crf" + (f" {shard.name}" if shard else ""), unit="img", dynamic_ncols=True)
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
        if shard:  # which inference it refined, for the gather to check
            write_yaml(tmp / "infer.yaml", infer_record)
    print(f"crf: refined {len(names)} masks into {target} with {workers} workers")
