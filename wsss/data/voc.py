"""PASCAL VOC 2012 + the SBD augmentation, assembled into one VOC-format root.

Sources, in order of preference:
- ``data.source`` naming a VOC-format folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/):
  verified, then hard-linked (or copied) file by file; the folder itself is never changed;
- ``data.source`` naming a folder holding the two archives: MD5-checked, then extracted;
- otherwise the archives are downloaded into ``data.downloads`` (a persistent, resumable cache).
  ``WSSS_VOC_URL`` and ``WSSS_SBD_URL`` name mirrors.

The output has ``train``, ``val`` and ``trainval`` (VOC's lists) and ``train_aug``: SBD train + SBD
val + VOC train, minus VOC val (10,582 images). ``SegmentationClass/`` holds VOC's own masks where
VOC has one, and SBD's (converted from .mat to palette PNG) for the rest of train_aug: what the
``train``/``val`` splits are scored against. ``SegmentationClassAug/`` holds the training masks of
train_aug as the public SSSS / WS-FCN list ``train_augvoc.txt`` takes them: SBD's where SBD has the
image (10,252 of them), VOC's for the rest; training reads its image-level labels from there.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.download import check_md5, download, reachable
from wsss.data.palette import save_mask
from wsss.errors import WsssError

NUM_CLASSES = 21
CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
SPLITS = ("train", "val", "trainval", "train_aug")
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Archive:
    key: str
    filename: str
    url: str
    md5: str
    env: str


ARCHIVES = {
    "voc": Archive("voc", "VOCtrainval_11-May-2012.tar",
                   "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                   "6cd6e144f989b92b3379bac3b3de84fd", "WSSS_VOC_URL"),
    "sbd": Archive("sbd", "benchmark.tgz",
                   "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                   "82b4d87ceb2ed10f6038a1cba92111cb", "WSSS_SBD_URL"),
}


def how_to_provide() -> str:
    voc, sbd = ARCHIVES["voc"], ARCHIVES["sbd"]
    return (
        "provide the data in one of these ways: "
        f"(1) set the key 'data.source' (e.g. -S data.source=/path) to a folder holding the two archives "
        f"'{voc.filename}' (MD5 {voc.md5}) and '{sbd.filename}' (MD5 {sbd.md5}); "
        "(2) set 'data.source' to a VOC-format folder with JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/{train_aug,val}.txt; "
        f"(3) put the archives into the download cache 'data.downloads'; "
        f"(4) make the network reach {voc.url} and {sbd.url}, or name mirrors in the environment "
        f"variables {voc.env} and {sbd.env}"
    )


def read_list(path: Path) -> list[str]:
    """Image names from a split file: the first token of every non-blank line."""
    if not path.is_file():
        raise WsssError(f"{path}: split file not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def is_voc_root(folder: Path) -> bool:
    return all((folder / sub).is_dir() for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"))


def _find_dir(base: Path, marker: str, depth: int = 4) -> Path | None:
    """The shallowest folder under ``base`` (``base`` included) that contains ``marker``."""
    frontier = [base]
    for _ in range(depth + 1):
        for folder in frontier:
            if (folder / marker).exists():
                return folder
        frontier = [sub for folder in frontier for sub in sorted(folder.iterdir()) if sub.is_dir()]
    return None


def link_tree(source: Path, out_dir: Path, names: list[str], progress: bool, desc: str) -> None:
    """``JPEGImages/<name>.jpg`` and ``SegmentationClass/<name>.png`` of every name, from a VOC-format
    ``source`` into ``out_dir``, linked (or copied)."""
    for sub in ("JPEGImages", "SegmentationClass"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for name in tqdm(names, desc=desc, unit="img", disable=not progress):
        link_or_copy(source / "JPEGImages" / f"{name}.jpg", out_dir / "JPEGImages" / f"{name}.jpg")
        link_or_copy(source / "SegmentationClass" / f"{name}.png", out_dir / "SegmentationClass" / f"{name}.png")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------- archives

def _archive_urls(urls: dict | None, md5s: dict | None) -> dict[str, tuple[str, str]]:
    out = {}
    for key, arc in ARCHIVES.items():
        url = (urls or {}).get(key) or os.environ.get(arc.env) or arc.url
        out[key] = (url, (md5s or {}).get(key, arc.md5))
    return out


def _locate_archives(data_cfg: dict, urls: dict | None, md5s: dict | None, progress: bool) -> dict[str, Path]:
    """Paths of the two verified archives: from data.source, the download cache, or the network."""
    wanted = _archive_urls(urls, md5s)
    source = data_cfg.get("source")
    if source:
        folder = Path(source)
        found = {}
        for key, arc in ARCHIVES.items():
            path = folder / arc.filename
            if not path.is_file():
                raise WsssError(f"key 'data.source': {folder} holds no '{arc.filename}' "
                                f"(expected the archives {ARCHIVES['voc'].filename} and {ARCHIVES['sbd'].filename}, "
                                "or a VOC-format folder)")
            check_md5(path, wanted[key][1], progress)
            found[key] = path
        return found
    downloads = Path(data_cfg["downloads"])
    todo = [key for key in ARCHIVES if not (downloads / ARCHIVES[key].filename).is_file()]
    for key in todo:
        reason = reachable(wanted[key][0], CONNECT_TIMEOUT)
        if reason is not None:
            raise WsssError(f"cannot download {ARCHIVES[key].filename}: no connection ({reason}). {how_to_provide()}")
    return {key: download(wanted[key][0], downloads / ARCHIVES[key].filename, wanted[key][1], progress=progress)
            for key in ARCHIVES}


def _extract(archive: Path, into: Path, keep, progress: bool) -> None:
    """Extract the members whose name passes ``keep`` (safely: tarfile's "data" filter)."""
    try:
        with tarfile.open(archive) as tar:
            def members():
                for member in tqdm(tar, desc=f"extract {archive.name}", unit=" files", disable=not progress):
                    if keep(member.name):
                        yield member
            tar.extractall(into, members=members(), filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise WsssError(f"{archive}: cannot extract: {exc}") from None


def _voc_member(name: str) -> bool:
    return any(f"/{sub}" in f"/{name}" for sub in ("JPEGImages/", "SegmentationClass/", "ImageSets/Segmentation/"))


def _sbd_member(name: str) -> bool:
    parts = name.split("/")
    return "dataset" in parts and (
        any(p in ("img", "cls") for p in parts) or parts[-1] in ("train.txt", "val.txt"))


def sbd_mask(mat_path: Path) -> np.ndarray:
    """The class-index mask (uint8) in an SBD ``cls/*.mat`` file (struct GTcls, field Segmentation)."""
    import scipy.io

    try:
        gt = scipy.io.loadmat(mat_path, squeeze_me=False)["GTcls"]
        mask = np.asarray(gt["Segmentation"][0][0])
    except Exception as exc:
        raise WsssError(f"{mat_path}: cannot read an SBD mask (GTcls.Segmentation): {exc}") from None
    if mask.ndim != 2 or mask.size == 0:
        raise WsssError(f"{mat_path}: GTcls.Segmentation has shape {mask.shape}, expected a 2-D mask")
    bad = (mask > NUM_CLASSES - 1) & (mask != 255) | (mask < 0)
    if bad.any():
        raise WsssError(f"{mat_path}: mask value {int(mask[bad][0])} outside 0..{NUM_CLASSES - 1} and 255")
    return mask.astype(np.uint8)


AUG_MASKS = "SegmentationClassAug"  # the training masks of train_aug (SBD first), beside SegmentationClass


def training_mask_dir(cfg: dict, root: Path) -> str:
    """The folder under ``root`` whose masks give the training split's image-level labels.

    ``SegmentationClassAug`` for ``train_aug`` where prepare made it: VOC's training masks as the
    public SSSS / WS-FCN list ``train_augvoc.txt`` takes them (SBD first); else ``SegmentationClass``
    (with a note for VOC, whose labels then differ from the public code's for some images).
    """
    if cfg["data"]["train_split"] == "train_aug":
        if (root / AUG_MASKS).is_dir():
            return AUG_MASKS
        if cfg["data"]["name"] == "voc":
            print(f"note: {root / AUG_MASKS} is missing, so the image-level labels come from {root / 'SegmentationClass'} "
                  "(VOC's masks first, not the public code's SBD-first list); re-run `wsss prepare` to make it",
                  file=sys.stderr)
    return "SegmentationClass"


def _assemble(voc: Path, sbd: Path, out_dir: Path, progress: bool) -> dict[str, list[str]]:
    """Move/convert the extracted files into ``out_dir`` and write the split lists."""
    seg = voc / "ImageSets" / "Segmentation"
    lists = {split: read_list(seg / f"{split}.txt") for split in ("train", "val")}
    trainval = seg / "trainval.txt"
    lists["trainval"] = read_list(trainval) if trainval.is_file() else sorted(set(lists["train"]) | set(lists["val"]))
    sbd_names = set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt"))
    lists["train_aug"] = sorted((sbd_names | set(lists["train"])) - set(lists["val"]))

    images, masks = out_dir / "JPEGImages", out_dir / "SegmentationClass"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    needed = sorted(set(lists["trainval"]) | set(lists["train_aug"]))
    for name in tqdm(needed, desc="assemble VOC + SBD", unit="img", disable=not progress):
        for candidate in (voc / "JPEGImages" / f"{name}.jpg", sbd / "img" / f"{name}.jpg"):
            if candidate.is_file():
                os.replace(candidate, images / f"{name}.jpg")
                break
        else:
            raise WsssError(f"image '{name}.jpg' is in a split list but in neither archive's images")
        voc_mask = voc / "SegmentationClass" / f"{name}.png"
        if voc_mask.is_file():
            os.replace(voc_mask, masks / f"{name}.png")
        elif (sbd / "cls" / f"{name}.mat").is_file():
            save_mask(sbd_mask(sbd / "cls" / f"{name}.mat"), masks / f"{name}.png")
        else:
            raise WsssError(f"mask for '{name}' is in neither {voc / 'SegmentationClass'} nor {sbd / 'cls'}")
    aug = out_dir / AUG_MASKS
    aug.mkdir(parents=True, exist_ok=True)
    for name in tqdm(lists["train_aug"], desc="training masks (SBD first)", unit="img", disable=not progress):
        if (sbd / "cls" / f"{name}.mat").is_file():
            save_mask(sbd_mask(sbd / "cls" / f"{name}.mat"), aug / f"{name}.png")
        else:
            shutil.copyfile(masks / f"{name}.png", aug / f"{name}.png")
    write_lists(out_dir, lists)
    return lists


def write_lists(out_dir: Path, lists: dict[str, list[str]]) -> None:
    sets = out_dir / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


def _from_archives(archives: dict[str, Path], out_dir: Path, progress: bool) -> dict[str, list[str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=out_dir) as scratch:
        scratch = Path(scratch)
        _extract(archives["voc"], scratch / "voc", _voc_member, progress)
        _extract(archives["sbd"], scratch / "sbd", _sbd_member, progress)
        voc = _find_dir(scratch / "voc", "ImageSets/Segmentation")
        sbd = _find_dir(scratch / "sbd", "cls")
        if voc is None:
            raise WsssError(f"{archives['voc']}: no VOC2012 folder with ImageSets/Segmentation inside")
        if sbd is None or not (sbd / "train.txt").is_file():
            raise WsssError(f"{archives['sbd']}: no benchmark_RELEASE/dataset folder with cls/ and train.txt inside")
        return _assemble(voc, sbd, out_dir, progress)


def _from_voc_folder(source: Path, data_cfg: dict, out_dir: Path, progress: bool) -> dict[str, list[str]]:
    """Verify a VOC-format folder and link (or copy) its listed files into ``out_dir``; its
    ``SegmentationClassAug/`` too when it holds every train_aug mask."""
    from wsss.data.dataset import verify_root

    seg = source / "ImageSets" / "Segmentation"
    required = {data_cfg["train_split"], data_cfg["eval_split"]}
    present = sorted(p.stem for p in seg.glob("*.txt"))
    missing = sorted(required - set(present))
    if missing:
        raise WsssError(f"key 'data.source': {seg / (missing[0] + '.txt')} not found "
                        f"(data.train_split/data.eval_split need it; present: {', '.join(present) or 'none'})")
    verify_root(source, present, NUM_CLASSES, progress=progress)
    lists = {split: read_list(seg / f"{split}.txt") for split in present}
    link_tree(source, out_dir, sorted(set().union(*lists.values())), progress, "link VOC-format copy")
    aug = lists.get("train_aug", [])
    if aug and all((source / AUG_MASKS / f"{name}.png").is_file() for name in aug):
        (out_dir / AUG_MASKS).mkdir(exist_ok=True)
        for name in tqdm(aug, desc=f"link {AUG_MASKS}", unit="img", disable=not progress):
            link_or_copy(source / AUG_MASKS / f"{name}.png", out_dir / AUG_MASKS / f"{name}.png")
    write_lists(out_dir, lists)
    return lists


def prepare_voc(data_cfg: dict, out_dir: Path, *, urls: dict | None = None, md5s: dict | None = None,
                progress: bool = True) -> dict:
    """Build the VOC 2012 + SBD root in ``out_dir``; return its classes and split sizes.

    ``urls`` / ``md5s`` (keys "voc", "sbd") replace the archives' URLs / MD5 sums (mirrors, tests).
    """
    out_dir = Path(out_dir)
    source = data_cfg.get("source")
    if source:
        folder = Path(source)
        if not folder.is_dir():
            raise WsssError(f"key 'data.source': {folder} is not a folder. {how_to_provide()}")
        if is_voc_root(folder):
            lists = _from_voc_folder(folder, data_cfg, out_dir, progress)
        else:
            lists = _from_archives(_locate_archives(data_cfg, urls, md5s, progress), out_dir, progress)
    else:
        lists = _from_archives(_locate_archives(data_cfg, urls, md5s, progress), out_dir, progress)
    return {"num_classes": NUM_CLASSES, "class_names": list(CLASS_NAMES),
            "splits": {split: len(names) for split, names in sorted(lists.items())}}
