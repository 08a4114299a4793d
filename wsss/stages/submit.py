"""`wsss submit`: the PASCAL VOC evaluation server's archive of the test images' masks.

The test images (``data.test_source``, or the prepared dataset's own ``test`` list where it has one:
the embedded dataset) go through the pipeline's inference and CRF as `wsss predict` runs them
(``infer.*`` scales, flip, canvas and background rule, class presence from the classifier since
test images have no labels, then ``crf.*``). Their masks, palette PNGs of class indices named after
the images, are packed as the server expects them::

    results/VOC2012/Segmentation/comp6_test_cls/<name>.png

(comp6: trained with data beyond VOC's own, here SBD's masks and ImageNet weights) into
``results/<dataset>_test_submission.tar.gz``, written atomically and byte for byte the same for the
same masks (sorted members, zero times and owners). The file is uploaded by hand at
host.robots.ox.ac.uk (an account is needed).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from pathlib import Path

from tqdm import tqdm

from wsss import provenance
from wsss.data.dataset import read_image, read_split, split_path
from wsss.data.palette import save_mask
from wsss.engine import device as devices
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.stages.infer import inference_network
from wsss.stages.predict import segment
from wsss.utils.atomic import atomic_path

MEMBER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"
TEST_SPLIT = "test"


def test_root(cfg: dict, data_dir: Path) -> Path:
    """The folder holding ``ImageSets/Segmentation/test.txt`` and ``JPEGImages/``: ``data.test_source``
    (or its ``VOC2012`` / ``VOCdevkit/VOC2012`` inside), else the prepared dataset."""
    source = cfg["data"]["test_source"]
    if source is None:
        if not split_path(data_dir, TEST_SPLIT).is_file():
            raise WsssError(f"key 'data.test_source': {data_dir} has no test list ({split_path(data_dir, TEST_SPLIT)}); "
                            "the VOC test images come from the evaluation server (VOC2012test.tar, after registering): "
                            "extract it and set data.test_source to the folder")
        return data_dir
    base = Path(source)
    for folder in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
        if split_path(folder, TEST_SPLIT).is_file():
            return folder
    raise WsssError(f"key 'data.test_source': no ImageSets/Segmentation/{TEST_SPLIT}.txt in {base} "
                    "(nor in VOC2012/ or VOCdevkit/VOC2012/ inside it)")


def pack(masks: Path, names: list[str], archive: Path) -> None:
    """``masks/<name>.png`` for every name into the gzipped tar ``archive`` under ``MEMBER_DIR``,
    atomically and reproducibly (sorted members, mtime 0, root owner, gzip header without a time)."""
    with atomic_path(archive) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for folder in ("results", "results/VOC2012", "results/VOC2012/Segmentation", MEMBER_DIR):
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                for name in sorted(names):
                    data = (masks / f"{name}.png").read_bytes()
                    info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}.png")
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    provenance.check_dataset(paths.data, cfg)
    root = test_root(cfg, paths.data)
    names = read_split(root, TEST_SPLIT)
    missing = [n for n in names if not (root / "JPEGImages" / f"{n}.jpg").is_file()]
    if missing:
        raise WsssError(f"{root / 'JPEGImages' / (missing[0] + '.jpg')}: listed in {split_path(root, TEST_SPLIT)} but "
                        f"not found ({len(missing)} missing)")
    model_path = Path(args.checkpoint) if args.checkpoint else paths.checkpoint("train")
    dev = devices.resolve(cfg["infer"]["device"])
    model, _ = inference_network(cfg, dev, model_path)
    archive = paths.submission
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".submit-masks-", dir=archive.parent) as scratch:
        masks = Path(scratch)
        for name in tqdm(names, desc="submit test", unit="img", dynamic_ncols=True):
            mask, _, _ = segment(model, read_image(root / "JPEGImages" / f"{name}.jpg"), cfg, dev, use_crf=True)
            save_mask(mask, masks / f"{name}.png")
        pack(masks, names, archive)
    print(f"submit: {len(names)} test masks ({MEMBER_DIR}/) -> {archive}")
