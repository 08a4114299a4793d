"""Shared fixtures: a small generated toy dataset and a hand-made VOC-format tree."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import socket
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(autouse=True)
def seeded_rngs(request):
    """Every test starts Python's, NumPy's legacy and torch's global generators from a seed of its own
    (a CRC of the test's id), so an unseeded draw in a test or a model's initialisation is the same in
    every run and in any test order or selection."""
    import random
    import zlib

    import torch

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread avoids spin-waiting on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``wsss <argv>`` in this process, as the console script runs it: working directory ``cwd``,
    stdout and stderr captured, the exit status of ``wsss.cli.main`` (2 on a WsssError) as ``returncode``.

    In-process so that the stage code runs under the test's own interpreter (what coverage and
    mutation testing see) without re-importing torch per call; the CPU thread count a stage sets is
    restored afterwards. Tests of a real process (exit codes, kills) use ``subprocess`` instead.
    """
    import contextlib
    import io
    import os

    import torch

    from wsss import cli

    out, err = io.StringIO(), io.StringIO()
    threads, here = torch.get_num_threads(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["wsss", *argv], code, out.getvalue(), err.getvalue())


def small_toy_cfg(**changes) -> dict:
    """A ``data.toy`` section small enough for tests (48 train / 24 val images of 64-80 px)."""
    cfg = {
        "seed": 0, "num_classes": 10, "n_train": 48, "n_val": 24, "n_test": 0, "min_size": 64, "max_size": 80,
        "max_objects": 4, "part_contrast": 1.0, "part_fraction": 0.25, "context_prob": 0.8, "occlusion": 0.5, "clutter": 0.5,
        "ignore_width": 1,
    }
    cfg.update(changes)
    return cfg


def small_toy_data_cfg(root: Path, **changes) -> dict:
    """A whole ``data`` section for the small toy set, preparing into ``root``."""
    return {
        "name": "toy", "root": str(root), "downloads": str(Path(root) / "downloads"), "source": None, "classes": None,
        "train_split": "train_aug", "eval_split": "val", "test_source": None, "toy": small_toy_cfg(**changes),
    }


TINY_TRAINING = ["presets.toy.train.batch_size=8", "presets.toy.train.crop_size=32", "train.workers=0",
                 "train.log_every=1", "presets.toy.train.cls_epochs=1", "presets.toy.train.epochs=2"]


@pytest.fixture
def tiny_training_cfg(toy_root) -> dict:
    """params.yaml resolved for the smallest training on the small toy set: batch 8 of 32 px crops,
    a curve row per step, one classification epoch then one with the segmentation term."""
    from wsss import config

    cfg = config.load([Path(__file__).resolve().parents[1] / "params.yaml"], TINY_TRAINING)
    cfg["data"] = small_toy_data_cfg(toy_root.parent)
    return cfg


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A small toy dataset prepared by the prepare stage (with prepared.json); 10 + 1 classes."""
    from wsss.stages.prepare import prepare_dataset

    data_root = tmp_path_factory.mktemp("toy-data")
    target = data_root / "toy"
    prepare_dataset(small_toy_data_cfg(data_root), target, progress=False)
    return target


FAKE_VOC_NAMES = {
    "train": ["2007_000032", "2007_000039", "2008_000123", "2009_001234"],
    "val": ["2010_000001", "2011_000002"],
}


def write_fake_voc(root: Path, num_classes: int = 21) -> Path:
    """A VOC-format tree drawn by hand with PIL: noisy images with rectangles and ellipses, palette
    masks with a 3-pixel 255 outline, varied image sizes, and split files with stray whitespace."""
    rng = np.random.default_rng(1234)
    palette = [0, 0, 0] + [int(v) for v in rng.integers(0, 256, 3 * 254)] + [224, 224, 192]
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for names in FAKE_VOC_NAMES.values():
        for k, name in enumerate(names):
            w, h = 90 + 13 * k, 70 + 7 * k
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            mask = Image.new("P", (w, h), 0)
            mask.putpalette(palette)
            draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
            for j in range(1 + k % 3):
                cls = int(rng.integers(1, num_classes))
                x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                box = [x0, y0, x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))]
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                shape = draw_img.ellipse if j % 2 else draw_img.rectangle
                shape(box, fill=colour)
                (draw_mask.ellipse if j % 2 else draw_mask.rectangle)(box, fill=cls, outline=255, width=3)
            image.save(root / "JPEGImages" / f"{name}.jpg", quality=85)
            mask.save(root / "SegmentationClass" / f"{name}.png")
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("".join(f"{n}\n" for n in FAKE_VOC_NAMES["train"]) + "\n")
    (seg / "val.txt").write_text("".join(f"{n}  \r\n" for n in FAKE_VOC_NAMES["val"]))
    (seg / "trainval.txt").write_text("".join(f"{n}\n" for names in FAKE_VOC_NAMES.values() for n in names))
    (seg / "train_aug.txt").write_text("".join(f"{n}\n" for n in FAKE_VOC_NAMES["train"]))
    return root


@pytest.fixture
def fake_voc_root(tmp_path) -> Path:
    """A fresh hand-drawn VOC-format tree (21 classes) the project's generator did not make."""
    return write_fake_voc(tmp_path / "fakevoc")


# --------------------------------------------------------------------------- a local HTTP server

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with single open-ended Range support."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        with self.server.idle:
            self.server.busy += 1
        try:
            self._serve()
        finally:
            with self.server.idle:
                self.server.busy -= 1
                self.server.idle.notify_all()

    def _serve(self):
        srv = self.server
        body = srv.files.get(self.path)
        record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
        srv.log.append(record)
        if body is None:
            self.send_error(404, "not found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", record["range"] or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.cut_after is not None:
            payload = payload[:srv.cut_after]
            srv.cut_after = None
        self.wfile.write(payload)
        record["sent"] = len(payload)

    def log_message(self, *args):
        pass


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 with a request log; ``cut_after`` truncates one response."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.log = {}, []
        self.httpd.ignore_range, self.httpd.cut_after = False, None
        self.httpd.busy, self.httpd.idle = 0, threading.Condition()
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def files(self) -> dict:
        return self.httpd.files

    @property
    def log(self) -> list:
        """The request log once every request in flight has been answered: a client can have read a
        whole response before the handler thread records what it sent."""
        with self.httpd.idle:
            if not self.httpd.idle.wait_for(lambda: self.httpd.busy == 0, timeout=10):
                raise TimeoutError("a request to the local test server is still being answered after 10 s")
        return self.httpd.log

    def set(self, **options) -> None:
        for key, value in options.items():
            setattr(self.httpd, key, value)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture
def closed_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-here"


# --------------------------------------------------------------------------- miniature VOC + SBD archives

MINI = {
    "voc_train": ["2007_000001", "2007_000002", "2008_000003"],
    "voc_val": ["2008_000004", "2009_000005"],
    "sbd_train": ["2007_000002", "2010_000006", "2010_000007", "2008_000004"],
    "sbd_val": ["2011_000008", "2009_000005"],
    "voc_only_images": ["2011_000099"],          # in JPEGImages, in no list
    "sbd_only_images": ["2011_000008"],          # only in SBD's img/
}
MINI_TRAIN_AUG = sorted({"2007_000001", "2007_000002", "2008_000003", "2010_000006", "2010_000007", "2011_000008"})


def _rect_mask(h: int, w: int, cls: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y0:y0 + h // 3, x0:x0 + w // 3] = cls
    return mask


def _save_jpeg(path: Path, h: int, w: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=80)


def build_mini_archives(folder: Path) -> dict:
    """Build a miniature ``VOCtrainval_11-May-2012.tar`` and ``benchmark.tgz`` in ``folder``.

    Returns their paths, MD5 sums and the masks written (VOC's own and SBD's).
    """
    import scipy.io

    stage = folder / "stage"
    voc = stage / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations",
                "ImageSets/Segmentation", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    voc_names = MINI["voc_train"] + MINI["voc_val"]
    jpeg_names = voc_names + ["2010_000006", "2010_000007"] + MINI["voc_only_images"]
    sizes = {}
    for k, name in enumerate(sorted(set(jpeg_names) | set(MINI["sbd_only_images"]))):
        sizes[name] = (40 + 3 * k, 50 + 5 * k)
    for k, name in enumerate(jpeg_names):
        _save_jpeg(voc / "JPEGImages" / f"{name}.jpg", *sizes[name], seed=k)
    voc_masks = {}
    for k, name in enumerate(voc_names):
        mask = _rect_mask(*sizes[name], cls=1 + k, seed=k)
        mask[0, :] = 255
        voc_masks[name] = mask
        img = Image.fromarray(mask, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0] * 128)
        img.save(voc / "SegmentationClass" / f"{name}.png")
        (voc / "Annotations" / f"{name}.xml").write_text("<annotation/>")
        Image.fromarray(mask, mode="L").save(voc / "SegmentationObject" / f"{name}.png")
    seg = voc / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("\n".join(MINI["voc_train"]) + "\n")
    (seg / "val.txt").write_text("\n".join(MINI["voc_val"]) + "\n")
    (seg / "trainval.txt").write_text("\n".join(voc_names) + "\n")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("unrelated\n")

    sbd = stage / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls", "inst"):
        (sbd / sub).mkdir(parents=True)
    sbd_masks = {}
    for k, name in enumerate(MINI["sbd_train"] + MINI["sbd_val"]):
        _save_jpeg(sbd / "img" / f"{name}.jpg", *sizes[name], seed=100 + k)
        mask = _rect_mask(*sizes[name], cls=9 + k, seed=100 + k)
        sbd_masks[name] = mask
        scipy.io.savemat(sbd / "cls" / f"{name}.mat",
                         {"GTcls": {"Segmentation": mask, "CategoriesPresent": np.array([[9 + k]], np.uint8)}})
        scipy.io.savemat(sbd / "inst" / f"{name}.mat", {"GTinst": {"Segmentation": mask}})
    (sbd / "train.txt").write_text("\n".join(MINI["sbd_train"]) + "\n")
    (sbd / "val.txt").write_text("\n".join(MINI["sbd_val"]) + "\n")

    voc_tar, sbd_tgz = folder / "VOCtrainval_11-May-2012.tar", folder / "benchmark.tgz"
    with tarfile.open(voc_tar, "w") as tar:
        tar.add(stage / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(sbd_tgz, "w:gz") as tar:
        tar.add(stage / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    shutil.rmtree(stage)
    md5 = {key: hashlib.md5(path.read_bytes()).hexdigest() for key, path in (("voc", voc_tar), ("sbd", sbd_tgz))}
    return {"voc": voc_tar, "sbd": sbd_tgz, "md5s": md5, "voc_masks": voc_masks, "sbd_masks": sbd_masks}


@pytest.fixture(scope="session")
def mini_archives(tmp_path_factory) -> dict:
    """The miniature VOC + SBD archives (built once; treat the files as read-only)."""
    return build_mini_archives(tmp_path_factory.mktemp("mini-archives"))


def voc_data_cfg(root: Path, source: str | None = None) -> dict:
    """A ``data`` section for voc, preparing under ``root`` with its download cache there."""
    return {"name": "voc", "root": str(root), "downloads": str(Path(root) / "downloads"), "source": source,
            "classes": None, "train_split": "train_aug", "eval_split": "val", "test_source": None, "toy": small_toy_cfg()}


def run_killed_after_first_epoch(monkeypatch, cfg: dict, phase, paths) -> None:
    """Run ``phase`` into ``paths`` and stop it (KeyboardInterrupt) right after its first epoch's
    resumable state reached the disk, as a kill would; the final checkpoint is then not written."""
    from wsss.engine import checkpoint, trainer

    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if Path(path).parent == paths.state and "epoch" in state:  # the state, not the best weights beside it
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(cfg, phase, paths)
    monkeypatch.setattr(trainer.checkpoint, "save", real_save)
    assert not paths.checkpoint(phase.name).exists()
