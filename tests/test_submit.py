"""`wsss submit`: the test images' masks in the archive layout of the PASCAL VOC evaluation server."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from wsss import config
from wsss.engine import checkpoint
from wsss.model.network import build_model
from wsss.stages.predict import segment
from wsss.stages.submit import MEMBER_DIR

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["data.toy.n_train=8", "data.toy.n_val=4", "data.toy.n_test=5", "data.toy.min_size=64",
             "data.toy.max_size=72", "infer.scales=[1.0,0.5]", "crf.iters=3", "crf.workers=1"]
ARGS = sum((["-S", o] for o in OVERRIDES), [])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The embedded dataset (with its 5 test images) prepared, and a `train` checkpoint of the toy network."""
    run = tmp_path_factory.mktemp("submit")
    (run / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert run_cli(["prepare", *ARGS], run).returncode == 0
    cfg = config.load([run / "params.yaml"], OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    checkpoint.save(run / "results/toy/train.pt",
                    {"model": model.state_dict(), "signature": checkpoint.model_signature(cfg), "stage": "train"})
    return run


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}


def test_the_archive_holds_every_test_mask_where_the_server_looks(run_dir):
    proc = run_cli(["submit", *ARGS], run_dir)
    assert proc.returncode == 0, proc.stderr
    archive = run_dir / "results" / "toy_test_submission.tar.gz"
    names = (run_dir / "data/toy/ImageSets/Segmentation/test.txt").read_text().split()
    assert len(names) == 5 and not any((run_dir / "data/toy/SegmentationClass" / f"{n}.png").exists() for n in names)
    files = members(archive)
    assert sorted(files) == sorted(["results", "results/VOC2012", "results/VOC2012/Segmentation", MEMBER_DIR]
                                   + [f"{MEMBER_DIR}/{n}.png" for n in names])
    assert MEMBER_DIR == "results/VOC2012/Segmentation/comp6_test_cls"
    cfg = config.load([run_dir / "params.yaml"], OVERRIDES)
    from wsss.stages.infer import load_model

    model, _ = load_model(cfg, torch.device("cpu"), run_dir / "results/toy/train.pt")
    for name in names[:2]:  # each member is the pipeline's CRF mask of its image, a palette PNG of its size
        image = Image.open(run_dir / "data/toy/JPEGImages" / f"{name}.jpg").convert("RGB")
        png = Image.open(io.BytesIO(files[f"{MEMBER_DIR}/{name}.png"]))
        assert png.mode == "P" and png.size == image.size
        expected, _, _ = segment(model, image, cfg, torch.device("cpu"), use_crf=True)
        assert np.array_equal(np.asarray(png), expected)
    first = archive.read_bytes()
    assert run_cli(["submit", *ARGS], run_dir).returncode == 0
    assert archive.read_bytes() == first  # the same masks give the same bytes (what DVC caches)
    assert not list(archive.parent.glob(".submit-masks-*")) and not list(archive.parent.glob(".tmp-*"))


def test_test_images_from_an_extracted_voc_test_archive(run_dir, tmp_path):
    devkit = tmp_path / "VOC2012test" / "VOCdevkit" / "VOC2012"
    (devkit / "ImageSets" / "Segmentation").mkdir(parents=True)
    (devkit / "JPEGImages").mkdir()
    names = ["2008_000006", "2008_000011"]
    for k, name in enumerate(names):
        shutil.copy(run_dir / f"data/toy/JPEGImages/test_0000{k}.jpg", devkit / "JPEGImages" / f"{name}.jpg")
    (devkit / "ImageSets/Segmentation/test.txt").write_text("".join(f"{n}\n" for n in names))
    out = tmp_path / "out"
    proc = run_cli(["submit", "--results", str(out), *ARGS, "-S", f"data.test_source={tmp_path / 'VOC2012test'}"], run_dir)
    # --results moves the checkpoint's place too: point it at the run's
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    proc = run_cli(["submit", "--results", str(out), "--checkpoint", str(run_dir / "results/toy/train.pt"), *ARGS,
                    "-S", f"data.test_source={tmp_path / 'VOC2012test'}"], run_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(n for n in members(out / "toy_test_submission.tar.gz") if n.endswith(".png")) == \
        [f"{MEMBER_DIR}/{n}.png" for n in names]


def test_without_test_images_the_key_is_named(run_dir, tmp_path):
    proc = run_cli(["submit", *ARGS, "-S", f"data.test_source={tmp_path}"], run_dir)
    assert proc.returncode == 2 and "key 'data.test_source': no ImageSets/Segmentation/test.txt in" in proc.stderr
    no_test = [*ARGS, "-S", "data.toy.n_test=0"]
    assert run_cli(["prepare", *no_test, "-S", f"data.root={tmp_path / 'data'}"], run_dir).returncode == 0
    proc = run_cli(["submit", *no_test, "-S", f"data.root={tmp_path / 'data'}"], run_dir)
    assert proc.returncode == 2 and "key 'data.test_source'" in proc.stderr and "VOC2012test.tar" in proc.stderr
