"""MS COCO 2014 as a VOC-format root: class masks rasterised from the instance annotations.

Inputs, in order of preference (as for VOC, ``wsss.data.voc``):

- ``data.source`` naming a COCO folder: ``train2014/``, ``val2014/`` and
  ``annotations/instances_{train,val}2014.json``, read in place and never changed;
- ``data.source`` naming a folder holding the three archives ``train2014.zip``, ``val2014.zip`` and
  ``annotations_trainval2014.zip``: MD5-checked, then extracted;
- otherwise the archives are downloaded (resumable, MD5-checked: ``wsss.data.download``) into
  ``data.downloads``. ``WSSS_COCO_TRAIN_URL``, ``WSSS_COCO_VAL_URL`` and ``WSSS_COCO_ANN_URL`` name mirrors.

Classes. The 80 category ids (1..90 with gaps) map to the contiguous classes 1..80 in sorted id order, as
the WSSS codebases number COCO's classes (the WS-FCN code's class list is COCO's categories in id order
after 'background'); 0 is background. Class names are the annotation file's category names in id order,
'background' first. Both annotation files must hold the same categories.

Masks (one ``(H, W)`` uint8 palette PNG per image, the image's size, values 0..K and 255):

- a pixel covered by non-crowd instances of one class only takes that class; instances of the same class
  overlapping each other stay that class;
- a pixel covered by instances of two or more different classes is 255 (ignored): COCO's instance masks
  overlap where annotators' polygons cross, and which object is in front is not annotated, so neither
  class is a reliable label there (the alternative some converters use, "first annotation wins",
  depends on the order of the annotation file);
- every pixel of a crowd region (``iscrowd: 1``) is 255: a crowd region outlines a group of objects
  with background between them, so its pixels are neither reliably the class nor background (COCO's
  own evaluation ignores crowd regions likewise).

The public WS-FCN code reads prebuilt COCO masks (its ``coco_seg_anno`` folder) and does not state the
rule that made them; its class list ends with an 'ambiguous' entry for the ignored value.

Split lists. ``train`` (train2014) and ``val`` (val2014) list the images with at least one non-crowd
instance annotation. Images without any annotation (702 of train2014's 82,783 and 367 of val2014's
40,504, as the WS-FCN code's comments count them) are left out: this is the WS-FCN split of 82,081 /
40,137 images, whose sizes that code checks. An image whose annotations are all crowd regions would get
no class under the mask rule above (only 0 and 255), hence no image-level label, so it is left out too
(the WS-FCN code refuses a training mask without a class); when the official files' counts differ from
the WS-FCN split, prepare prints a note. ``train_aug`` repeats ``train``: ``data.train_split``
defaults to ``train_aug``, the name of VOC's training list, and COCO has no augmented set.

Resume. Extracted archive members and finished masks live in a work folder
``<data.downloads>/coco2014/`` that outlives a killed run: a member is written to ``<name>.part`` and
renamed when complete; a mask is written atomically (``wsss.utils.atomic``), so a mask file that exists
is complete. A later run converts only the masks that are missing. The masks are tied to the MD5 of the
annotation file and to the mask rule (``<work>/masks/<subset>.json``); a different annotation file
starts the conversion over. The dataset itself is assembled (hard links, else copies) from the work
folder in the prepare stage's temporary folder, which becomes ``data/coco`` only when complete.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import threading
import time
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.download import check_md5, download, md5sum, reachable
from wsss.data.palette import IGNORE, save_mask
from wsss.data.voc import Archive, link_or_copy, write_lists
from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path, write_json
from wsss.utils.cores import available_cores

NUM_CLASSES = 81
MAX_CLASSES = 255  # classes 0..254 in a uint8 mask; 255 marks ignored pixels
SUBSETS = {"train": "train2014", "val": "val2014"}  # split -> COCO image folder / annotation file suffix
WORK_DIR = "coco2014"  # under data.downloads
CONNECT_TIMEOUT = 5.0
# A polygon vertex may lie this far (px) outside [0, W] x [0, H]: COCO's vertices lie on the pixel grid
# inside the image, so a vertex further out means the annotation does not belong to that image's size.
POLYGON_SLACK = 1.0
# Stored beside the masks: a change here (or of the annotation file) makes the next run redo every mask.
MASK_RULE = "classes 1..K by sorted category id; 255 on pixels of two or more classes and on crowd regions"
# The WS-FCN split: (images in the official annotation file, images kept), checked by the public code.
WSFCN_COUNTS = {"train2014": (82783, 82081), "val2014": (40504, 40137)}

# Sizes: train2014.zip about 13.5 GB, val2014.zip about 6.6 GB, annotations_trainval2014.zip 252,872,794
# bytes. The MD5s are those stated beside these URLs in public download scripts (PaddleDetection's COCO
# script among them); the annotation archive's is also its S3 ETag.
ARCHIVES = {
    "train2014": Archive("train2014", "train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                         "0da8c0bd3d6becc4dcb32757491aca88", "WSSS_COCO_TRAIN_URL"),
    "val2014": Archive("val2014", "val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                       "a3d79f5ed8d289b7a7554ce06a5782b3", "WSSS_COCO_VAL_URL"),
    "annotations": Archive("annotations", "annotations_trainval2014.zip",
                           "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                           "0a379cfc70b0e71301e0f377548639bd", "WSSS_COCO_ANN_URL"),
}


def how_to_provide() -> str:
    arcs = ARCHIVES.values()
    return (
        "provide the data in one of these ways: "
        "(1) set the key 'data.source' (e.g. -S data.source=/path) to a COCO folder holding train2014/, val2014/ "
        "and annotations/instances_train2014.json, annotations/instances_val2014.json; "
        "(2) set 'data.source' to a folder holding the archives "
        + ", ".join(f"'{a.filename}' (MD5 {a.md5})" for a in arcs) + "; "
        "(3) put the archives into the download cache 'data.downloads'; "
        f"(4) make the network reach {', '.join(a.url for a in arcs)}, or name mirrors in the environment "
        f"variables {', '.join(a.env for a in arcs)}"
    )


def annotation_path(folder: Path, subset: str) -> Path:
    return folder / "annotations" / f"instances_{subset}.json"


def _folder_parts(folder: Path) -> list[Path]:
    return [folder / subset for subset in SUBSETS.values()] + [annotation_path(folder, s) for s in SUBSETS.values()]


def is_coco_folder(folder: Path) -> bool:
    """True if ``folder`` holds train2014/, val2014/ and both instance annotation files."""
    return all(p.exists() for p in _folder_parts(folder))


# --------------------------------------------------------------------------- archives

def _archive_sources(urls: dict | None, md5s: dict | None) -> dict[str, tuple[str, str | None]]:
    return {key: ((urls or {}).get(key) or os.environ.get(arc.env) or arc.url, (md5s or {}).get(key, arc.md5))
            for key, arc in ARCHIVES.items()}


def _locate_archives(data_cfg: dict, urls: dict | None, md5s: dict | None, progress: bool) -> dict[str, Path]:
    """The three verified archives: from data.source, the download cache, or the network."""
    wanted = _archive_sources(urls, md5s)
    source = data_cfg.get("source")
    if source:
        folder = Path(source)
        found = {}
        for key, arc in ARCHIVES.items():
            path = folder / arc.filename
            if not path.is_file():
                present = [p.name for p in _folder_parts(folder) if p.exists()]
                missing = [str(p.relative_to(folder)) for p in _folder_parts(folder) if not p.exists()]
                if present:
                    raise WsssError(f"key 'data.source': {folder} is not a complete COCO folder: "
                                    f"{', '.join(missing)} not found (and no '{arc.filename}'). {how_to_provide()}")
                raise WsssError(f"key 'data.source': {folder} holds no '{arc.filename}' (expected the archives "
                                f"{', '.join(a.filename for a in ARCHIVES.values())}, or a COCO folder). "
                                f"{how_to_provide()}")
            check_md5(path, wanted[key][1], progress)
            found[key] = path
        return found
    downloads = Path(data_cfg["downloads"])
    for key, arc in ARCHIVES.items():
        if not (downloads / arc.filename).is_file():
            reason = reachable(wanted[key][0], CONNECT_TIMEOUT)
            if reason is not None:
                raise WsssError(f"cannot download {arc.filename}: no connection ({reason}). {how_to_provide()}")
    return {key: download(wanted[key][0], downloads / arc.filename, wanted[key][1], progress=progress)
            for key, arc in ARCHIVES.items()}


def _image_member(subset: str) -> Callable[[str], str | None]:
    def keep(name: str) -> str | None:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == subset and parts[-1].lower().endswith((".jpg", ".jpeg")):
            return f"{subset}/{parts[-1]}"
        return None
    return keep


def _annotation_member(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if base in {f"instances_{subset}.json" for subset in SUBSETS.values()}:
        return f"annotations/{base}"
    return None


def extract_zip(archive: Path, into: Path, keep: Callable[[str], str | None], progress: bool) -> None:
    """Extract the members of ``archive`` that ``keep`` maps to a relative path under ``into``, resumably.

    A member is written to ``<dest>.part`` and renamed when complete; one already there with the member's
    size is kept, so a later run extracts only what a killed one left out (or what was deleted since).
    Raises a WsssError naming the archive if it cannot be read.
    """
    into.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, keep(info.filename)) for info in zf.infolist() if not info.is_dir()]
            members = [(info, rel) for info, rel in members if rel is not None]
            for info, rel in tqdm(members, desc=f"extract {archive.name}", unit=" files", disable=not progress):
                dest = into / rel
                if dest.is_file() and dest.stat().st_size == info.file_size:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with zf.open(info) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(part, dest)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WsssError(f"{archive}: cannot extract: {exc}") from None


def _from_archives(archives: dict[str, Path], work: Path, progress: bool) -> Path:
    """Extract the archives into ``work`` (resumably); return it, now a COCO folder."""
    for key, path in archives.items():
        keep = _annotation_member if key == "annotations" else _image_member(key)
        extract_zip(path, work, keep, progress)
    for part in _folder_parts(work):
        if not part.exists():
            raise WsssError(f"the COCO archives hold no {part.relative_to(work)} "
                            f"({', '.join(str(p) for p in archives.values())})")
    return work


# --------------------------------------------------------------------------- annotations

def _entry(value, key: str, kind, path: Path, where: str):
    if not isinstance(value, dict) or key not in value:
        raise WsssError(f"{path}: {where} has no '{key}'")
    item = value[key]
    if not isinstance(item, kind) or isinstance(item, bool):
        raise WsssError(f"{path}: {where}: '{key}' is {item!r}, expected {getattr(kind, '__name__', kind)}")
    return item


def _check_segmentation(segm, ann_id, image: dict, path: Path) -> object:
    """``segm`` checked against its image; polygons with under three vertices (no area) dropped."""
    height, width = image["height"], image["width"]
    where = f"annotation {ann_id} of image {image['id']} ('{image['file_name']}', {width}x{height})"
    if isinstance(segm, list):
        polygons = []
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
                raise WsssError(f"{path}: {where}: a polygon must be a flat list of x, y numbers, got {str(poly)[:80]}")
            if len(poly) < 6:
                continue  # fewer than 3 vertices cover no pixel (pycocotools would read 4 numbers as a box)
            xs, ys = poly[0::2], poly[1::2]
            x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
            if (x_lo < -POLYGON_SLACK or y_lo < -POLYGON_SLACK
                    or x_hi > width + POLYGON_SLACK or y_hi > height + POLYGON_SLACK):
                bad = next((x, y) for x, y in zip(xs, ys)
                           if not (-POLYGON_SLACK <= x <= width + POLYGON_SLACK
                                   and -POLYGON_SLACK <= y <= height + POLYGON_SLACK))
                raise WsssError(f"{path}: {where}: polygon vertex {bad} lies outside the image")
            polygons.append(poly)
        return polygons
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = segm["size"]
        if not isinstance(size, list) or size != [height, width]:
            raise WsssError(f"{path}: {where}: RLE size {list(size)} (height, width) differs from the image's "
                            f"[{height}, {width}]")
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                raise WsssError(f"{path}: {where}: uncompressed RLE counts must be non-negative integers")
            if sum(counts) != height * width:
                raise WsssError(f"{path}: {where}: uncompressed RLE counts sum to {sum(counts)}, "
                                f"expected height x width = {height * width}")
        elif not isinstance(counts, (str, bytes)):
            raise WsssError(f"{path}: {where}: RLE counts must be a list or a string")
        return segm
    raise WsssError(f"{path}: {where}: 'segmentation' is neither polygons nor RLE: {str(segm)[:80]}")


def load_annotations(path: Path) -> dict:
    """Read and check a COCO instance annotation file.

    Returns ``categories`` (sorted [(category id, name)]), ``images`` ({image id: image record}) and
    ``instances`` ({image id: [(category id, iscrowd, segmentation)]}). Raises a WsssError naming the file
    (and the entry) for a file that is not JSON, a missing field, an annotation of an unknown image or
    category, a polygon outside its image, an RLE of another size, or more than ``MAX_CLASSES`` classes.
    """
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise WsssError(f"{path}: not a JSON file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise WsssError(f"{path}: not a JSON file (not UTF-8 text: {exc})") from None
    except OSError as exc:
        raise WsssError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise WsssError(f"{path}: not a COCO annotation file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        _entry(data, key, list, path, "the file")

    categories = {}
    for index, cat in enumerate(data["categories"]):
        cat_id = _entry(cat, "id", int, path, f"category {index}")
        name = _entry(cat, "name", str, path, f"category {cat_id}")
        if cat_id in categories:
            raise WsssError(f"{path}: category id {cat_id} appears twice")
        categories[cat_id] = name
    if len(categories) + 1 > MAX_CLASSES:
        raise WsssError(f"{path}: {len(categories)} categories make {len(categories) + 1} classes with background; "
                        f"a class mask holds at most {MAX_CLASSES} (0..{MAX_CLASSES - 1}; {IGNORE} marks ignored pixels)")

    images = {}
    for index, image in enumerate(data["images"]):
        image_id = _entry(image, "id", int, path, f"image {index}")
        where = f"image {image_id}"
        record = {"id": image_id, "file_name": _entry(image, "file_name", str, path, where),
                  "width": _entry(image, "width", int, path, where), "height": _entry(image, "height", int, path, where)}
        if record["width"] < 1 or record["height"] < 1:
            raise WsssError(f"{path}: {where}: size {record['width']}x{record['height']}")
        if image_id in images:
            raise WsssError(f"{path}: image id {image_id} appears twice")
        images[image_id] = record

    instances: dict[int, list] = {}
    for index, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
        where = f"annotation {ann_id}"
        image_id = _entry(ann, "image_id", int, path, where)
        cat_id = _entry(ann, "category_id", int, path, where)
        if image_id not in images:
            raise WsssError(f"{path}: {where} refers to image {image_id}, which is not in 'images'")
        if cat_id not in categories:
            raise WsssError(f"{path}: {where} of image {image_id} has category {cat_id}, which is not in 'categories'")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise WsssError(f"{path}: {where}: iscrowd is {iscrowd!r}, expected 0 or 1")
        segm = _check_segmentation(_entry(ann, "segmentation", (list, dict), path, where), ann_id, images[image_id], path)
        instances.setdefault(image_id, []).append((cat_id, int(iscrowd), segm))
    return {"categories": sorted(categories.items()), "images": images, "instances": instances}


# --------------------------------------------------------------------------- masks

def instance_mask(segm, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of one instance's segmentation (polygons, uncompressed or compressed RLE),
    rasterised by pycocotools as ``COCO.annToMask`` does."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        if not segm:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    with warnings.catch_warnings():
        # pycocotools' decoder hands NumPy 2 an __array__ without the copy keyword (a deprecation notice only)
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def semantic_mask(height: int, width: int, instances: list, classes: dict[int, int]) -> np.ndarray:
    """The (H, W) uint8 class mask of one image from its instances [(category id, iscrowd, segmentation)].

    ``classes`` maps category ids to classes 1..K. A pixel of one class's non-crowd instances takes that
    class; a pixel of two or more classes and every crowd pixel are ``IGNORE`` (255); the rest is 0.
    """
    per_class: dict[int, np.ndarray] = {}
    crowd = np.zeros((height, width), bool)
    for cat_id, iscrowd, segm in instances:
        m = instance_mask(segm, height, width)
        if iscrowd:
            crowd |= m
        else:
            cls = classes[cat_id]
            per_class[cls] = per_class[cls] | m if cls in per_class else m
    mask = np.zeros((height, width), np.uint8)
    covering = np.zeros((height, width), np.uint8)  # classes covering each pixel (at most 254)
    for cls, m in per_class.items():
        mask[m] = cls
        covering += m
    mask[covering > 1] = IGNORE
    mask[crowd] = IGNORE
    return mask


def mask_file(masks: Path, name: str) -> Path:
    """Where a finished mask lies in the work folder: sharded by the name's last 3 characters, so that
    no folder holds more than about a thousandth of the images."""
    return masks / name[-3:] / f"{name}.png"


def _check_image_size(image_path: Path, height: int, width: int, ann_path: str) -> None:
    """The image file's stored size (its header only) must be the annotations' height and width."""
    try:
        with Image.open(image_path) as image:
            size = image.size
    except Exception as exc:  # PIL raises many types for a corrupt file
        raise WsssError(f"{image_path}: cannot read image: {exc}") from None
    if size != (width, height):
        raise WsssError(f"{image_path}: the image is {size[0]}x{size[1]}, but {ann_path} gives {width}x{height}")


def write_mask(task: tuple) -> str:
    """Convert one image: ``task`` = (name, height, width, instances, classes, destination, image file,
    annotation file); the image's size is checked against the annotations and the mask written
    atomically. Returns the name."""
    name, height, width, instances, classes, dest, image_path, ann_path = task
    _check_image_size(Path(image_path), height, width, ann_path)
    mask = semantic_mask(height, width, instances, classes)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_mask(mask, tmp)
    return name


def _run_task(task: tuple) -> str:
    return write_mask(task)


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker once the process that started it is gone (killed), instead of
    waiting forever for tasks, holding its share of the parent's memory."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def convert(tasks: list[tuple], workers: int, progress: bool, desc: str) -> None:
    """Run ``write_mask`` over ``tasks`` on ``workers`` processes (in this process for one)."""
    if not tasks:
        return
    with tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1 or len(tasks) == 1:
            for task in tasks:
                write_mask(task)
                bar.update(1)
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=_exit_with_parent,
                                   initargs=(os.getpid(),))
        try:
            chunk = max(1, min(64, len(tasks) // (8 * workers)))
            # The workers start (forked, on Linux) during map's submissions. They share this process's
            # parsed annotation files (gigabytes for train2014) page by page; frozen, those objects are
            # left alone by the workers' garbage collector, which would otherwise touch, and so copy,
            # every page.
            gc.freeze()
            try:
                done = pool.map(_run_task, tasks, chunksize=chunk)
            finally:
                gc.unfreeze()
            for _ in done:
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _masks_dir(work: Path, subset: str, ann_md5: str) -> Path:
    """The subset's folder of finished masks, emptied when it was made from another annotation file or rule."""
    masks = work / "masks" / subset
    stamp_path = work / "masks" / f"{subset}.json"
    stamp = {"annotations_md5": ann_md5, "rule": MASK_RULE}
    try:
        current = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    except (json.JSONDecodeError, OSError):
        current = None
    if current != stamp:
        if masks.exists():
            shutil.rmtree(masks)
        masks.mkdir(parents=True)
        write_json(stamp_path, stamp)
    return masks


# --------------------------------------------------------------------------- assembly

def _kept_images(ann: dict) -> list[dict]:
    """The images with at least one non-crowd instance, sorted by file name."""
    kept = [ann["images"][image_id] for image_id, inst in ann["instances"].items()
            if any(not iscrowd for _, iscrowd, _ in inst)]
    return sorted(kept, key=lambda image: image["file_name"])


def _check_images(kept: list[dict], folder: Path, ann_path: Path) -> None:
    present = {entry.name for entry in os.scandir(folder)} if folder.is_dir() else set()
    for image in kept:
        if image["file_name"] not in present:
            raise WsssError(f"{ann_path}: image {image['id']} ('{image['file_name']}') is listed in the annotations "
                            f"but missing from {folder}")


def _note_counts(subset: str, total: int, kept: int) -> None:
    expected_total, expected_kept = WSFCN_COUNTS[subset]
    if total == expected_total and kept != expected_kept:
        print(f"note: {subset}: {kept} of {total} images have a non-crowd instance; the WS-FCN split has "
              f"{expected_kept}", file=sys.stderr)


def prepare_coco(data_cfg: dict, out_dir: Path, *, urls: dict | None = None, md5s: dict | None = None,
                 progress: bool = True, workers: int | None = None) -> dict:
    """Build the COCO 2014 root in ``out_dir`` (VOC format); return its classes and split sizes.

    ``out_dir`` gets ``JPEGImages/<name>.jpg`` (links to, or copies of, the COCO files; ``name`` is the
    file name without extension, e.g. ``COCO_train2014_000000000009``), ``SegmentationClass/<name>.png``
    (palette PNG class masks, see the module docstring for the rule) and
    ``ImageSets/Segmentation/{train,val,train_aug}.txt``. ``urls`` / ``md5s`` (keys "train2014", "val2014",
    "annotations") replace the archives' URLs / MD5 sums (mirrors, tests). ``workers``: conversion
    processes (default: the cores this process may use). Returns ``num_classes`` (81 for COCO),
    ``class_names`` and ``splits`` ({split: images}), as ``prepare_voc`` does. Raises a WsssError for
    missing or bad input, naming the file and the entry.
    """
    out_dir = Path(out_dir)
    work = Path(data_cfg["downloads"]) / WORK_DIR
    source = data_cfg.get("source")
    if source and not Path(source).is_dir():
        raise WsssError(f"key 'data.source': {source} is not a folder. {how_to_provide()}")
    if source and is_coco_folder(Path(source)):
        folder = Path(source)
    else:
        folder = _from_archives(_locate_archives(data_cfg, urls, md5s, progress), work, progress)

    annotations = {}
    for split, subset in SUBSETS.items():
        path = annotation_path(folder, subset)
        annotations[split] = (path, load_annotations(path))
    (train_path, train), (val_path, val) = annotations["train"], annotations["val"]
    if train["categories"] != val["categories"]:
        raise WsssError(f"{train_path} and {val_path} hold different categories; both splits need the same classes")
    categories = train["categories"]
    classes = {cat_id: index for index, (cat_id, _) in enumerate(categories, start=1)}
    class_names = ["background"] + [name for _, name in categories]
    if len(class_names) != NUM_CLASSES:
        print(f"note: {train_path} has {len(categories)} categories ({len(class_names)} classes with background); "
              f"the coco preset's network has {NUM_CLASSES} outputs", file=sys.stderr)

    workers = available_cores() if workers is None else max(1, int(workers))
    lists: dict[str, list[str]] = {}
    for split, subset in SUBSETS.items():
        path, ann = annotations[split]
        kept = _kept_images(ann)
        _note_counts(subset, len(ann["images"]), len(kept))
        _check_images(kept, folder / subset, path)
        masks = _masks_dir(work, subset, md5sum(path, progress))
        names = [Path(image["file_name"]).stem for image in kept]
        tasks = [(name, image["height"], image["width"], ann["instances"][image["id"]], classes,
                  str(mask_file(masks, name)), str(folder / subset / image["file_name"]), str(path))
                 for name, image in zip(names, kept) if not mask_file(masks, name).is_file()]
        convert(tasks, workers, progress, f"masks {subset}")

        (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (out_dir / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        for name, image in tqdm(list(zip(names, kept)), desc=f"assemble {subset}", unit="img", disable=not progress):
            link_or_copy(folder / subset / image["file_name"], out_dir / "JPEGImages" / f"{name}.jpg")
            link_or_copy(mask_file(masks, name), out_dir / "SegmentationClass" / f"{name}.png")
        lists[split] = names
    lists["train_aug"] = list(lists["train"])
    write_lists(out_dir, lists)
    return {"num_classes": len(class_names), "class_names": class_names,
            "splits": {split: len(names) for split, names in sorted(lists.items())}}
