"""VOC 2012 + SBD preparation on miniature archives: train_aug rule, SBD conversion, caches, local copies."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.io

from conftest import FAKE_VOC_NAMES, MINI, MINI_TRAIN_AUG, voc_data_cfg
from wsss.data import voc
from wsss.data.dataset import VOCSegmentation, verify_root
from wsss.data.palette import load_mask
from wsss.errors import WsssError


def _lines(path):
    return path.read_text().split()


@pytest.fixture
def served_archives(http_server, mini_archives):
    http_server.files["/voc.tar"] = mini_archives["voc"].read_bytes()
    http_server.files["/sbd.tgz"] = mini_archives["sbd"].read_bytes()
    return {"voc": http_server.url("/voc.tar"), "sbd": http_server.url("/sbd.tgz")}


def test_download_and_assemble(served_archives, mini_archives, http_server, tmp_path):
    out = tmp_path / "voc"
    info = voc.prepare_voc(voc_data_cfg(tmp_path), out, urls=served_archives, md5s=mini_archives["md5s"],
                           progress=False)
    seg = out / "ImageSets" / "Segmentation"
    assert _lines(seg / "train_aug.txt") == MINI_TRAIN_AUG
    assert _lines(seg / "train.txt") == MINI["voc_train"]
    assert _lines(seg / "val.txt") == MINI["voc_val"]
    assert _lines(seg / "trainval.txt") == MINI["voc_train"] + MINI["voc_val"]
    assert info["num_classes"] == 21 and info["class_names"][0] == "background" and len(info["class_names"]) == 21
    assert info["splits"] == {"train": 3, "train_aug": 6, "trainval": 5, "val": 2}

    # VOC's own masks where VOC has one, SBD's converted ones for the rest of train_aug
    for name in MINI["voc_train"] + MINI["voc_val"]:
        assert np.array_equal(load_mask(out / "SegmentationClass" / f"{name}.png"), mini_archives["voc_masks"][name])
    for name in ("2010_000006", "2010_000007", "2011_000008"):
        assert np.array_equal(load_mask(out / "SegmentationClass" / f"{name}.png"), mini_archives["sbd_masks"][name])
    images = sorted(p.stem for p in (out / "JPEGImages").iterdir())
    assert images == sorted(set(MINI_TRAIN_AUG) | set(MINI["voc_val"]))  # unlisted images are left out
    assert sorted(p.name for p in out.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass", "SegmentationClassAug"]
    # the training masks as the public code's train_augvoc.txt takes them: SBD's first, VOC's for the rest
    aug = out / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.iterdir()) == MINI_TRAIN_AUG
    assert np.array_equal(load_mask(aug / "2007_000002.png"), mini_archives["sbd_masks"]["2007_000002"])  # in both
    assert np.array_equal(load_mask(out / "SegmentationClass" / "2007_000002.png"), mini_archives["voc_masks"]["2007_000002"])
    assert np.array_equal(load_mask(aug / "2007_000001.png"), mini_archives["voc_masks"]["2007_000001"])  # VOC only

    # the archives stay in the download cache, and a second run uses them without the network
    cache = tmp_path / "downloads"
    assert sorted(p.name for p in cache.iterdir()) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]
    requests = len(http_server.log)
    voc.prepare_voc(voc_data_cfg(tmp_path), tmp_path / "voc2", urls=served_archives, md5s=mini_archives["md5s"],
                    progress=False)
    assert len(http_server.log) == requests

    assert verify_root(out, voc.SPLITS, 21, progress=False) == info["splits"]
    item = VOCSegmentation(out, "train_aug", 21)[0]
    assert item["labels"].shape == (20,) and item["labels"].sum() >= 1


def test_prepare_stage_with_mirrors(served_archives, mini_archives, tmp_path, monkeypatch):
    from wsss.stages.prepare import prepare_dataset

    monkeypatch.setenv("WSSS_VOC_URL", served_archives["voc"])
    monkeypatch.setenv("WSSS_SBD_URL", served_archives["sbd"])
    for key, md5 in mini_archives["md5s"].items():
        monkeypatch.setitem(voc.ARCHIVES, key, dataclasses.replace(voc.ARCHIVES[key], md5=md5))
    info = prepare_dataset(voc_data_cfg(tmp_path), tmp_path / "voc", progress=False)
    assert json.loads((tmp_path / "voc" / "prepared.json").read_text()) == json.loads(json.dumps(info))
    assert info["splits"]["train_aug"] == 6
    assert not [p for p in (tmp_path / "voc").rglob(".extract-*")]


def test_sbd_mask_conversion(tmp_path):
    mask = np.zeros((7, 9), np.uint8)
    mask[2:5, 3:8] = 15
    path = tmp_path / "a.mat"
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros((1, 1))}})
    assert np.array_equal(voc.sbd_mask(path), mask)
    mask[0, 0] = 40
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask}})
    with pytest.raises(WsssError, match=r"a\.mat.*40"):
        voc.sbd_mask(path)
    scipy.io.savemat(path, {"other": mask})
    with pytest.raises(WsssError, match=r"a\.mat.*GTcls"):
        voc.sbd_mask(path)
    path.write_bytes(b"not a mat file")
    with pytest.raises(WsssError, match=r"a\.mat"):
        voc.sbd_mask(path)


def test_voc_format_source_is_linked_not_moved(fake_voc_root, tmp_path, closed_url, monkeypatch):
    monkeypatch.setenv("WSSS_VOC_URL", closed_url)
    monkeypatch.setenv("WSSS_SBD_URL", closed_url)
    before = {p: p.read_bytes() for p in fake_voc_root.rglob("*") if p.is_file()}
    out = tmp_path / "voc"
    info = voc.prepare_voc(voc_data_cfg(tmp_path, source=str(fake_voc_root)), out, progress=False)
    assert info["splits"] == {"train": 4, "train_aug": 4, "trainval": 6, "val": 2}
    assert {p: p.read_bytes() for p in fake_voc_root.rglob("*") if p.is_file()} == before
    name = FAKE_VOC_NAMES["train"][0]
    src, dst = fake_voc_root / "JPEGImages" / f"{name}.jpg", out / "JPEGImages" / f"{name}.jpg"
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_ino == os.stat(src).st_ino  # hard link on the same file system
    assert _lines(out / "ImageSets" / "Segmentation" / "val.txt") == FAKE_VOC_NAMES["val"]


def test_voc_format_source_needs_the_configured_splits(fake_voc_root, tmp_path):
    (fake_voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(WsssError, match="train_aug.txt"):
        voc.prepare_voc(voc_data_cfg(tmp_path, source=str(fake_voc_root)), tmp_path / "voc", progress=False)


def test_source_archive_with_wrong_md5_is_refused_and_kept(mini_archives, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    for key in ("voc", "sbd"):
        os.link(mini_archives[key], folder / mini_archives[key].name)
    with pytest.raises(WsssError) as err:
        voc.prepare_voc(voc_data_cfg(tmp_path, source=str(folder)), tmp_path / "voc", progress=False)
    message = str(err.value)
    assert "VOCtrainval_11-May-2012.tar" in message and voc.ARCHIVES["voc"].md5 in message
    assert mini_archives["md5s"]["voc"] in message
    assert sorted(p.name for p in folder.iterdir()) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]


def test_source_folder_missing_an_archive(mini_archives, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    os.link(mini_archives["voc"], folder / mini_archives["voc"].name)
    with pytest.raises(WsssError, match="benchmark.tgz"):
        voc.prepare_voc(voc_data_cfg(tmp_path, source=str(folder)), tmp_path / "voc",
                        md5s=mini_archives["md5s"], progress=False)


def test_source_that_does_not_exist(tmp_path):
    with pytest.raises(WsssError, match="data.source.*nowhere"):
        voc.prepare_voc(voc_data_cfg(tmp_path, source=str(tmp_path / "nowhere")), tmp_path / "voc", progress=False)

