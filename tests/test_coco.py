"""COCO 2014 preparation on a miniature COCO built here: download, mask rule, split rule, resume, bad input."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import small_toy_cfg
from wsss.data import coco
from wsss.data.dataset import VOCSegmentation, verify_root
from wsss.data.palette import load_mask
from wsss.errors import WsssError

# category ids with gaps, listed out of order: classes follow the sorted ids (1 -> 1, 3 -> 2, 18 -> 3, 90 -> 4)
CATEGORIES = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
              {"id": 1, "name": "person", "supercategory": "person"},
              {"id": 18, "name": "dog", "supercategory": "animal"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]
CLASS_NAMES = ["background", "person", "car", "dog", "toothbrush"]
PERSON, CAR, DOG, TOOTHBRUSH = 1, 2, 3, 4
SIZES = {  # image id -> (subset, height, width)
    9: ("train2014", 30, 40), 25: ("train2014", 24, 32), 30: ("train2014", 20, 26),
    34: ("train2014", 18, 22), 36: ("train2014", 22, 20),
    42: ("val2014", 28, 36), 73: ("val2014", 16, 18), 74: ("val2014", 16, 16),
}
TRAIN = ["COCO_train2014_000000000009", "COCO_train2014_000000000025", "COCO_train2014_000000000030"]
VAL = ["COCO_val2014_000000000042", "COCO_val2014_000000000074"]
# 34 and 73 have no annotation, 36 only a crowd region: none of them is listed


def file_name(image_id: int) -> str:
    return f"COCO_{SIZES[image_id][0]}_{image_id:012d}.jpg"


def box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The pixels of the rectangle with corners (x0, y0), (x1, y1) on the pixel grid."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rect(x0, y0, x1, y1) -> list:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_counts(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = m.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string: each count less the one two before it (from the fourth on), in
    5-bit groups with a continuation bit, offset by 48."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def build_mini_coco(folder: Path) -> dict:
    """A COCO folder (``coco/``) and its three archives (``zips/``) with hand-drawn expected masks."""
    anns = []

    def add(ann_id, image_id, cat_id, segmentation, iscrowd=0):
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id, "segmentation": segmentation,
                     "iscrowd": iscrowd, "area": 1.0, "bbox": [0, 0, 1, 1]})

    expected = {}
    # 9: polygons; two cars overlapping (stays car) and a dog over both cars (255 where they meet)
    h, w = SIZES[9][1:]
    add(101, 9, 3, [rect(2, 3, 20, 15)])
    add(102, 9, 3, [rect(10, 8, 25, 20)])
    add(103, 9, 18, [rect(18, 12, 35, 28)])
    cars, dog = box(h, w, 2, 3, 20, 15) | box(h, w, 10, 8, 25, 20), box(h, w, 18, 12, 35, 28)
    m = np.zeros((h, w), np.uint8)
    m[cars], m[dog], m[cars & dog] = CAR, DOG, 255
    expected["COCO_train2014_000000000009"] = m
    # 25: uncompressed RLE: an L-shaped person, and a crowd of people over part of it (all 255)
    h, w = SIZES[25][1:]
    person = box(h, w, 3, 2, 12, 10) | box(h, w, 3, 10, 6, 20)
    crowd = box(h, w, 10, 8, 30, 22)
    add(201, 25, 1, {"size": [h, w], "counts": rle_counts(person)})
    add(202, 25, 1, {"size": [h, w], "counts": rle_counts(crowd)}, iscrowd=1)
    m = np.zeros((h, w), np.uint8)
    m[person], m[crowd] = PERSON, 255
    expected["COCO_train2014_000000000025"] = m
    # 30: compressed RLE (a staircase) and a dog in two parts (plus a 2-vertex polygon covering nothing)
    h, w = SIZES[30][1:]
    stairs = np.tri(h, w, k=-6, dtype=bool) & ~np.tri(h, w, k=-14, dtype=bool)
    add(301, 30, 90, {"size": [h, w], "counts": rle_string(rle_counts(stairs))})
    add(302, 30, 18, [rect(14, 1, 24, 6), rect(18, 12, 25, 19), [1, 1, 2, 2]])
    dog = box(h, w, 14, 1, 24, 6) | box(h, w, 18, 12, 25, 19)
    m = np.zeros((h, w), np.uint8)
    m[stairs], m[dog] = TOOTHBRUSH, DOG
    m[stairs & dog] = 255
    expected["COCO_train2014_000000000030"] = m
    # 36: a crowd region only
    add(361, 36, 1, [rect(2, 2, 10, 10)], iscrowd=1)
    # 42: a non-convex polygon and a car band along the top edge (vertices on the image border)
    h, w = SIZES[42][1:]
    add(421, 42, 1, [[4, 4, 20, 4, 20, 10, 10, 10, 10, 24, 4, 24]])
    add(422, 42, 3, [[0.0, 0.0, 36.0, 0.0, 36.0, 3.0, 0.0, 3.0]])
    person, car = box(h, w, 4, 4, 20, 10) | box(h, w, 4, 10, 10, 24), box(h, w, 0, 0, 36, 3)
    m = np.zeros((h, w), np.uint8)
    m[person], m[car] = PERSON, CAR
    expected["COCO_val2014_000000000042"] = m
    # 74: a vertex half a pixel beyond the right border (within the slack)
    h, w = SIZES[74][1:]
    add(741, 74, 90, [[8, 8, 16.5, 8, 16.5, 16, 8, 16]])
    m = np.zeros((h, w), np.uint8)
    m[box(h, w, 8, 8, 16, 16)] = TOOTHBRUSH
    expected["COCO_val2014_000000000074"] = m

    root = folder / "coco"
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(2014)
    for image_id, (subset, h, w) in SIZES.items():
        (root / subset).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / subset / file_name(image_id),
                                                                              quality=90)
    for subset in ("train2014", "val2014"):
        ids = [i for i, (s, _, _) in SIZES.items() if s == subset]
        data = {"info": {"year": 2014}, "licenses": [],
                "images": [{"id": i, "file_name": file_name(i), "height": SIZES[i][1], "width": SIZES[i][2],
                            "license": 1} for i in ids],
                "annotations": [a for a in anns if a["image_id"] in ids], "categories": CATEGORIES}
        (root / "annotations" / f"instances_{subset}.json").write_text(json.dumps(data))
    (root / "annotations" / "captions_train2014.json").write_text("{}")

    zips = folder / "zips"
    zips.mkdir()
    for subset in ("train2014", "val2014"):
        with zipfile.ZipFile(zips / f"{subset}.zip", "w") as zf:
            for path in sorted((root / subset).iterdir()):
                zf.write(path, f"{subset}/{path.name}")
    with zipfile.ZipFile(zips / "annotations_trainval2014.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((root / "annotations").iterdir()):
            zf.write(path, f"annotations/{path.name}")
    archives = {"train2014": zips / "train2014.zip", "val2014": zips / "val2014.zip",
                "annotations": zips / "annotations_trainval2014.zip"}
    md5s = {key: hashlib.md5(path.read_bytes()).hexdigest() for key, path in archives.items()}
    return {"folder": root, "zips": zips, "archives": archives, "md5s": md5s, "expected": expected}


@pytest.fixture(scope="session")
def mini_coco(tmp_path_factory) -> dict:
    """The miniature COCO (built once; treat its files as read-only)."""
    return build_mini_coco(tmp_path_factory.mktemp("mini-coco"))


@pytest.fixture
def coco_copy(mini_coco, tmp_path) -> Path:
    """A private copy of the miniature COCO folder, to spoil."""
    return Path(shutil.copytree(mini_coco["folder"], tmp_path / "coco-copy"))


@pytest.fixture
def served(http_server, mini_coco) -> dict:
    for key, path in mini_coco["archives"].items():
        http_server.files[f"/{path.name}"] = path.read_bytes()
    return {key: http_server.url(f"/{path.name}") for key, path in mini_coco["archives"].items()}


@pytest.fixture
def offline(monkeypatch, closed_url):
    for arc in coco.ARCHIVES.values():
        monkeypatch.setenv(arc.env, closed_url)


def coco_data_cfg(root: Path, source: str | Path | None = None) -> dict:
    return {"name": "coco", "root": str(root), "downloads": str(Path(root) / "downloads"),
            "source": None if source is None else str(source), "classes": None, "train_split": "train_aug",
            "eval_split": "val", "test_source": None, "toy": small_toy_cfg()}


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


def assert_dataset(out: Path, mini_coco: dict) -> None:
    seg = out / "ImageSets" / "Segmentation"
    assert _lines(seg / "train.txt") == TRAIN
    assert _lines(seg / "train_aug.txt") == TRAIN
    assert _lines(seg / "val.txt") == VAL
    assert sorted(p.stem for p in (out / "JPEGImages").iterdir()) == sorted(TRAIN + VAL)
    assert sorted(p.stem for p in (out / "SegmentationClass").iterdir()) == sorted(TRAIN + VAL)
    for name, mask in mini_coco["expected"].items():
        got = load_mask(out / "SegmentationClass" / f"{name}.png")
        assert got.shape == mask.shape and np.array_equal(got, mask), name
        subset = name.split("_")[1]
        assert (out / "JPEGImages" / f"{name}.jpg").read_bytes() == \
            (mini_coco["folder"] / subset / f"{name}.jpg").read_bytes()


def test_download_convert_and_assemble(served, mini_coco, http_server, tmp_path, monkeypatch):
    out = tmp_path / "coco"
    info = coco.prepare_coco(coco_data_cfg(tmp_path), out, urls=served, md5s=mini_coco["md5s"], progress=False,
                             workers=2)
    assert info == {"num_classes": 5, "class_names": CLASS_NAMES, "splits": {"train": 3, "train_aug": 3, "val": 2}}
    assert_dataset(out, mini_coco)
    assert sorted(p.name for p in out.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass"]
    assert verify_root(out, ["train", "val", "train_aug"], 5, progress=False) == info["splits"]
    item = VOCSegmentation(out, "train_aug", 5)[0]  # COCO_train2014_000000000009: car and dog
    assert item["labels"].tolist() == [0, 1, 1, 0]

    # the archives stay in the download cache; a second run neither downloads nor converts again
    cache = tmp_path / "downloads"
    assert sorted(p.name for p in cache.iterdir()) == ["annotations_trainval2014.zip", "coco2014", "train2014.zip",
                                                       "val2014.zip"]
    assert not (cache / "coco2014" / "annotations" / "captions_train2014.json").exists()
    requests = len(http_server.log)
    # extraction resumes: a member missing or cut short (as a kill leaves it) is extracted again
    work = cache / "coco2014"
    (work / "train2014" / f"{TRAIN[1]}.jpg").unlink()
    cut = work / "val2014" / f"{VAL[0]}.jpg"
    head = cut.read_bytes()[:100]
    cut.unlink()  # a new file: the old one is hard-linked into the first dataset
    cut.write_bytes(head)
    (work / "val2014" / f"{VAL[1]}.jpg.part").write_bytes(head)

    def no_conversion(task):
        raise AssertionError(f"{task[0]} converted again")

    monkeypatch.setattr(coco, "write_mask", no_conversion)
    coco.prepare_coco(coco_data_cfg(tmp_path), tmp_path / "coco2", urls=served, md5s=mini_coco["md5s"],
                      progress=False, workers=1)
    assert len(http_server.log) == requests
    assert_dataset(tmp_path / "coco2", mini_coco)
    assert_dataset(out, mini_coco)  # the first dataset's linked files are untouched


def test_prepare_stage_with_mirrors(served, mini_coco, tmp_path, monkeypatch):
    from wsss.stages.prepare import PREPARERS, prepare_dataset

    assert set(PREPARERS) == {"toy", "voc", "coco", "custom"}
    for key, arc in coco.ARCHIVES.items():
        monkeypatch.setenv(arc.env, served[key])
        monkeypatch.setitem(coco.ARCHIVES, key, dataclasses.replace(arc, md5=mini_coco["md5s"][key]))
    info = prepare_dataset(coco_data_cfg(tmp_path), tmp_path / "coco", progress=False)
    assert json.loads((tmp_path / "coco" / "prepared.json").read_text()) == json.loads(json.dumps(info))
    assert info["dataset"] == "coco" and info["class_names"] == CLASS_NAMES
    assert info["splits"] == {"train": 3, "train_aug": 3, "val": 2}
    assert_dataset(tmp_path / "coco", mini_coco)


def _finished_masks(work: Path) -> dict[str, os.stat_result]:
    return {p.stem: p.stat() for p in (work / "masks").rglob("*.png")}


def test_resume_after_a_kill_converts_only_the_rest(mini_coco, tmp_path, monkeypatch, offline):
    from wsss.stages.prepare import prepare_dataset

    monkeypatch.setattr(coco, "available_cores", lambda: 1)
    real = coco.write_mask
    calls = []

    def killed_after_two(task):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it, between two images
        calls.append(task[0])
        return real(task)

    monkeypatch.setattr(coco, "write_mask", killed_after_two)
    cfg, target = coco_data_cfg(tmp_path, mini_coco["folder"]), tmp_path / "data" / "coco"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(cfg, target, progress=False)
    assert not target.exists()  # a partial conversion is never a dataset
    work = tmp_path / "downloads" / "coco2014"
    done = _finished_masks(work)
    assert sorted(done) == sorted(calls) and len(done) == 2

    calls.clear()
    monkeypatch.setattr(coco, "write_mask", lambda task: calls.append(task[0]) or real(task))
    info = prepare_dataset(cfg, target, progress=False)
    assert sorted(calls) == sorted(set(TRAIN + VAL) - set(done))  # the first two were not redone
    after = _finished_masks(work)
    for name, stat in done.items():
        assert (after[name].st_ino, after[name].st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert_dataset(target, mini_coco)

    # the same files as an uninterrupted run
    fresh = coco_data_cfg(tmp_path / "fresh", mini_coco["folder"])
    assert prepare_dataset(fresh, tmp_path / "fresh" / "coco", progress=False) == {**info, "data": fresh}
    for path in sorted(target.rglob("*")):
        if path.is_file() and path.name != "prepared.json":
            assert path.read_bytes() == (tmp_path / "fresh" / "coco" / path.relative_to(target)).read_bytes(), path


def test_other_annotations_redo_the_masks(coco_copy, tmp_path, offline):
    cfg = coco_data_cfg(tmp_path, coco_copy)
    coco.prepare_coco(cfg, tmp_path / "a", progress=False, workers=1)
    work = tmp_path / "downloads" / "coco2014"
    before = _finished_masks(work)
    path = coco_copy / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    next(a for a in data["annotations"] if a["id"] == 741)["category_id"] = 18  # toothbrush -> dog
    path.write_text(json.dumps(data))
    coco.prepare_coco(cfg, tmp_path / "b", progress=False, workers=1)
    after = _finished_masks(work)
    assert all(after[n].st_ino == before[n].st_ino for n in TRAIN)  # train's annotation file is unchanged
    assert all(after[n].st_ino != before[n].st_ino for n in VAL)
    mask = load_mask(tmp_path / "b" / "SegmentationClass" / "COCO_val2014_000000000074.png")
    assert set(np.unique(mask)) == {0, DOG}


def test_local_coco_folder_is_read_in_place(mini_coco, tmp_path, offline):
    source = mini_coco["folder"]
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    out = tmp_path / "coco"
    info = coco.prepare_coco(coco_data_cfg(tmp_path, source), out, progress=False, workers=1)
    assert info["splits"] == {"train": 3, "train_aug": 3, "val": 2}
    assert_dataset(out, mini_coco)
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before
    name = TRAIN[0]
    assert os.stat(out / "JPEGImages" / f"{name}.jpg").st_ino == os.stat(source / "train2014" / f"{name}.jpg").st_ino
    assert sorted(p.name for p in (tmp_path / "downloads" / "coco2014").iterdir()) == ["masks"]  # nothing extracted


def test_local_archives_are_checked(mini_coco, tmp_path, offline):
    folder = tmp_path / "copies"
    folder.mkdir()
    for path in mini_coco["archives"].values():
        os.link(path, folder / path.name)
    out = tmp_path / "coco"
    coco.prepare_coco(coco_data_cfg(tmp_path, folder), out, md5s=mini_coco["md5s"], progress=False, workers=1)
    assert_dataset(out, mini_coco)
    with pytest.raises(WsssError) as err:  # the official sums do not match the miniature archives
        coco.prepare_coco(coco_data_cfg(tmp_path, folder), tmp_path / "coco2", progress=False, workers=1)
    message = str(err.value)
    assert "train2014.zip" in message and coco.ARCHIVES["train2014"].md5 in message
    assert mini_coco["md5s"]["train2014"] in message
    assert sorted(p.name for p in folder.iterdir()) == ["annotations_trainval2014.zip", "train2014.zip", "val2014.zip"]


def test_incomplete_source_and_no_network(coco_copy, tmp_path, offline):
    shutil.rmtree(coco_copy / "val2014")
    with pytest.raises(WsssError, match=r"not a complete COCO folder: val2014 not found"):
        coco.prepare_coco(coco_data_cfg(tmp_path, coco_copy), tmp_path / "coco", progress=False)
    with pytest.raises(WsssError, match=r"cannot download train2014\.zip: no connection.*data\.source"):
        coco.prepare_coco(coco_data_cfg(tmp_path), tmp_path / "coco", progress=False)


def _edit(folder: Path, subset: str, change) -> Path:
    path = folder / "annotations" / f"instances_{subset}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _ann(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _many_categories(data):
    data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, 256)]


BAD_INPUTS = {
    "not json": (lambda folder: (folder / "annotations" / "instances_val2014.json").write_text('{"images": [1, 2'),
                 r"instances_val2014\.json: not a JSON file: Expecting"),
    "polygon outside": (lambda folder: _edit(folder, "train2014", lambda d: _ann(d, 103).update(
        segmentation=[rect(18, 12, 45, 28)])),
        r"instances_train2014\.json: annotation 103 of image 9 \('COCO_train2014_000000000009\.jpg', 40x30\): "
        r"polygon vertex \(45, 12\) lies outside the image"),
    "rle of another size": (lambda folder: _edit(folder, "train2014", lambda d: _ann(d, 201)["segmentation"].update(
        size=[32, 24])), r"annotation 201 of image 25 .*RLE size \[32, 24\].*\[24, 32\]"),
    "missing image": (lambda folder: (folder / "val2014" / "COCO_val2014_000000000074.jpg").unlink(),
                      r"instances_val2014\.json: image 74 \('COCO_val2014_000000000074\.jpg'\) is listed in the "
                      r"annotations but missing from .*val2014"),
    "image of another size": (lambda folder: Image.new("RGB", (20, 16)).save(
        folder / "val2014" / "COCO_val2014_000000000042.jpg"),
        r"COCO_val2014_000000000042\.jpg: the image is 20x16, but .*instances_val2014\.json gives 36x28"),
    "unknown image": (lambda folder: _edit(folder, "val2014", lambda d: _ann(d, 741).update(image_id=999)),
                      r"annotation 741 refers to image 999, which is not in 'images'"),
    "too many classes": (lambda folder: _edit(folder, "train2014", _many_categories),
                         r"instances_train2014\.json: 255 categories make 256 classes with background; a class mask "
                         r"holds at most 255"),
    "other categories": (lambda folder: _edit(folder, "val2014", lambda d: d.update(
        categories=[c for c in d["categories"] if c["name"] != "dog"])),
                         r"instances_train2014\.json and .*instances_val2014\.json hold different categories"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_file_and_entry(case, coco_copy, tmp_path, offline):
    spoil, message = BAD_INPUTS[case]
    spoil(coco_copy)
    with pytest.raises(WsssError, match=message):
        coco.prepare_coco(coco_data_cfg(tmp_path, coco_copy), tmp_path / "coco", progress=False, workers=1)


def test_degenerate_and_crowd_only_instances():
    """A 2-vertex polygon covers nothing (not a box, as pycocotools would read 4 numbers); crowd wins."""
    image = {"id": 1, "file_name": "x.jpg", "height": 6, "width": 8}
    assert coco._check_segmentation([[1, 1, 5, 5]], 7, image, Path("a.json")) == []
    classes = {5: 1, 6: 2}
    instances = [(5, 0, [rect(0, 0, 4, 4)]), (6, 1, [rect(2, 2, 8, 6)]), (5, 0, [])]
    expected = np.zeros((6, 8), np.uint8)
    expected[box(6, 8, 0, 0, 4, 4)] = 1
    expected[box(6, 8, 2, 2, 8, 6)] = 255
    assert np.array_equal(coco.semantic_mask(6, 8, copy.deepcopy(instances), classes), expected)
