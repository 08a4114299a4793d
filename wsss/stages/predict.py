"""`wsss predict`: segment a folder of your own images with a trained checkpoint.

    wsss predict IMAGES OUT [--checkpoint PATH] [--probs] [--no-crf] [--on-error stop|skip]

Every image file directly in ``IMAGES`` (JPEG, PNG, BMP, TIFF, WebP; any size; RGB, greyscale,
palette, CMYK, 16-bit or with alpha; EXIF orientation applied) goes through what the pipeline does
to a validation image: multi-scale + flip inference (``infer.*``: scales, flip, canvas, background
rule), class presence from the classifier (``infer.fp_cut``: there are no labels), then the dense
CRF (``crf.*``) unless ``--no-crf``. Into ``OUT``:

- ``masks/<stem>.png``: the class of every pixel, VOC palette (values index ``data``'s classes);
- ``overlays/<stem>.jpg``: the image with the mask's colours blended in (half and half, background left as it is);
- ``probs/<stem>.npz`` with ``--probs``: ``classes`` (ids, background first) and ``probs``
  (``(K, H, W)`` float16, the scores the CRF starts from, as infer's probability files);
- ``predict.yaml``: the checkpoint (path, SHA-256) and the keys the outputs depend on;
- ``skipped.tsv``: the images skipped with ``--on-error skip`` and why.

Each file is written atomically and an image whose outputs are all there is not redone, so a run
that stopped (a bad image with ``--on-error stop``, a kill) continues where it was when run again.
A folder made with another checkpoint or other keys is refused rather than mixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.download import sha256sum
from wsss.data.imagefile import decode
from wsss.data.palette import colorize, save_mask
from wsss.engine import device as devices
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.stages.crf import as_stored, refine
from wsss.stages.infer import combine, infer_views, inference_network, view_size
from wsss.utils.atomic import atomic_path, write_yaml

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.5  # share of the mask colour in an overlay pixel of a foreground class


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB image from any PIL mode, upright by its EXIF orientation.

    16-bit and float greyscale (``I;16``, ``I``, ``F``) are scaled by their own maximum to 0..255
    (PIL's ``convert`` would clip them); alpha is dropped; CMYK and palette images convert as PIL does.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max()
        scaled = np.zeros_like(values) if top <= 0 else np.clip(values, 0, None) / top * 255.0
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image.convert("RGB")


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; two files of one stem are refused
    (their outputs would share a name)."""
    if not folder.is_dir():
        raise WsssError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise WsssError(f"{folder}: no image files ({', '.join(SUFFIXES)})")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise WsssError(f"{seen[path.stem]} and {path} share the name '{path.stem}': their masks would overwrite "
                            "each other; rename one")
        seen[path.stem] = path
    return files


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the palette colour of ``mask`` (H, W) blended in at ``alpha``
    where the class is not background (0); returns (H, W, 3) uint8."""
    colours = colorize(mask).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((mask > 0)[..., None], blend, image.astype(np.float32))
    return np.round(out).astype(np.uint8)


def segment(model: torch.nn.Module, image: Image.Image, cfg: dict, dev: torch.device, use_crf: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB image through infer (and the CRF): ``(mask (H, W) uint8, class ids (K,) uint8, scores
    (K, H, W) float32)``. ``infer.pad_size`` applies where the largest view fits it; a larger image's
    views run at their own size (infer refuses such an image; here any size is welcome)."""
    icfg = cfg["infer"]
    pad = icfg["pad_size"]
    if pad is not None:
        h, w = view_size((image.height, image.width), max(icfg["scales"]))
        if h > pad[0] or w > pad[1]:
            pad = None
    masks, scores = infer_views(model, image, {**icfg, "pad_size": pad}, dev)
    ids, probs = combine(masks, scores > icfg["fp_cut"], icfg)
    if use_crf:
        mask = refine(np.asarray(image), ids, as_stored(probs), cfg["crf"], params.num_classes(cfg))
    else:
        mask = ids[probs.argmax(0)]
    return mask.astype(np.uint8), ids, probs


def outputs(out: Path, stem: str, probs: bool) -> list[Path]:
    files = [out / "masks" / f"{stem}.png", out / "overlays" / f"{stem}.jpg"]
    return files + [out / "probs" / f"{stem}.npz"] if probs else files


def record(cfg: dict, model_path: Path, use_crf: bool) -> dict:
    keys = provenance.param_slice(cfg, "infer")
    if use_crf:
        keys.update(provenance.param_slice(cfg, "crf"))
    keys.pop("data.eval_split", None)
    return {"checkpoint": {"path": str(model_path), "sha256": sha256sum(model_path)}, "crf": use_crf,
            "params": keys}


def check_record(out: Path, wanted: dict) -> None:
    """Refuse ``out`` when it holds outputs made with another checkpoint or other keys."""
    path = out / "predict.yaml"
    if not path.is_file():
        if any((out / sub).is_dir() and any((out / sub).iterdir()) for sub in ("masks", "overlays", "probs")):
            raise WsssError(f"{out} holds masks but no predict.yaml: not made by `wsss predict`; choose another folder")
        return
    held = params.load_mapping(path, "predict record")
    if held != wanted:
        differ = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
        raise WsssError(f"{out} holds predictions made with another {' and '.join(differ)} ({path}); "
                        "choose another folder or delete it")


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    folder, out = Path(args.images), Path(args.out)
    files = list_images(folder)
    model_path = Path(args.checkpoint) if args.checkpoint else paths.checkpoint("train")
    if not model_path.is_file():
        raise WsssError(f"checkpoint not found: {model_path} (train one with `wsss train`, or give --checkpoint)")
    use_crf = not args.no_crf
    wanted = record(cfg, model_path, use_crf)
    check_record(out, wanted)
    todo = [p for p in files if not all(f.is_file() for f in outputs(out, p.stem, args.probs))]
    dev = devices.resolve(cfg["infer"]["device"])
    model, _ = inference_network(cfg, dev, model_path)
    for sub in ("masks", "overlays") + (("probs",) if args.probs else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_yaml(out / "predict.yaml", wanted)
    skipped: list[tuple[Path, str]] = []
    for path in tqdm(todo, desc="predict", unit="img", dynamic_ncols=True):
        try:
            image = decode(path, "image", to_rgb)
        except WsssError as exc:
            if args.on_error == "stop":
                raise WsssError(f"{exc}; the {len(files) - len(todo) + todo.index(path)} images before it are done "
                                f"in {out} (re-run to continue; --on-error skip passes bad images)") from None
            print(f"predict: skipped {exc}", file=sys.stderr)
            skipped.append((path, str(exc)))
            continue
        mask, ids, probs = segment(model, image, cfg, dev, use_crf)
        mask_file, overlay_file, *probs_file = outputs(out, path.stem, args.probs)
        if probs_file:
            with atomic_path(probs_file[0]) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, classes=ids, probs=probs.astype(np.float16))
        with atomic_path(overlay_file) as tmp:
            Image.fromarray(overlay(np.asarray(image), mask)).save(tmp, format="JPEG", quality=90)
        with atomic_path(mask_file) as tmp:
            save_mask(mask, tmp)
    if skipped:
        with atomic_path(out / "skipped.tsv") as tmp:
            tmp.write_text("image\treason\n" + "".join(f"{p}\t{why}\n" for p, why in skipped))
    elif (out / "skipped.tsv").exists():
        (out / "skipped.tsv").unlink()
    done = len(files) - len(skipped)
    print(f"predict: {done} of {len(files)} images segmented ({len(todo) - len(skipped)} now, "
          f"{len(files) - len(todo)} already there) -> {out}"
          + (f"; {len(skipped)} skipped, listed in {out / 'skipped.tsv'}" if skipped else ""))
