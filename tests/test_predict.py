"""`wsss predict` on a folder of the user's images: any size and colour mode, masks and overlays,
optional probabilities, the CRF, bad images stopped at or skipped, and a stopped run continued."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_cli
from wsss import config
from wsss.data.palette import colorize, load_mask
from wsss.engine import checkpoint
from wsss.model.network import build_model
from wsss.stages.predict import overlay, segment, to_rgb

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["infer.scales=[1.0,0.5]", "crf.workers=1", "crf.iters=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A working folder with params.yaml and a `train` checkpoint of the toy network (its initial weights:
    the test is about files and shapes, not about accuracy)."""
    run = tmp_path_factory.mktemp("predict")
    (run / "params.yaml").write_text((REPO / "params.yaml").read_text())
    cfg = config.load([run / "params.yaml"], OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    path = run / "results" / "toy" / "train.pt"
    path.parent.mkdir(parents=True)
    checkpoint.save(path, {"model": model.state_dict(), "signature": checkpoint.model_signature(cfg), "stage": "train"})
    return run


def write_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of several sizes and every common colour mode; returns {stem: (W, H)} as displayed."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (33, 41), dtype=np.uint8), mode="L").save(folder / "grey.png")
    Image.fromarray(rgb[:40, :60]).convert("CMYK").save(folder / "print.jpg")
    Image.fromarray(rng.integers(0, 65535, (36, 30), dtype=np.uint16)).save(folder / "depth16.png")
    rgba = np.concatenate([rgb[:45, :45], np.full((45, 45, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(rgb[:30, :64]).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb[:20, :48]).save(folder / "rotated.jpg", exif=exif)
    (folder / "notes.txt").write_text("not an image, and not picked up")
    return {"photo": (70, 50), "grey": (41, 33), "print": (60, 40), "depth16": (30, 36), "alpha": (45, 45),
            "palette": (64, 30), "rotated": (20, 48)}


def test_every_image_gets_a_mask_and_an_overlay_of_its_size(run_dir, tmp_path):
    sizes = write_images(tmp_path / "images")
    proc = run_cli(["predict", str(tmp_path / "images"), str(tmp_path / "out"), "--probs", *sum((["-S", o] for o in OVERRIDES), [])],
                   run_dir)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(sizes)
    assert sorted(p.stem for p in (out / "overlays").glob("*.jpg")) == sorted(sizes)
    assert sorted(p.stem for p in (out / "probs").glob("*.npz")) == sorted(sizes)
    for stem, (w, h) in sizes.items():
        mask = load_mask(out / "masks" / f"{stem}.png")
        assert mask.shape == (h, w) and mask.max() < 11, stem
        with Image.open(out / "overlays" / f"{stem}.jpg") as im:
            assert im.size == (w, h) and im.mode == "RGB"
        with np.load(out / "probs" / f"{stem}.npz") as npz:
            assert npz["probs"].shape[1:] == (h, w) and npz["classes"][0] == 0 and len(npz["classes"]) == npz["probs"].shape[0]
    record = yaml.safe_load((out / "predict.yaml").read_text())
    assert record["crf"] is True and record["checkpoint"]["path"].endswith("train.pt")
    assert f"{len(sizes)} of {len(sizes)} images segmented" in proc.stdout
    # a second run has nothing left to do
    again = run_cli(["predict", str(tmp_path / "images"), str(out), "--probs", *sum((["-S", o] for o in OVERRIDES), [])], run_dir)
    assert again.returncode == 0 and "(0 now, 7 already there)" in again.stdout


def test_masks_are_the_pipelines_argmax_and_crf(run_dir, tmp_path):
    """The files hold what infer + crf compute for the same image: segment() without the CRF is the argmax
    of the combined scores, and with it pydensecrf's result on those scores as infer stores them (float16)."""
    from wsss.stages.crf import as_stored, refine
    from wsss.stages.infer import combine, load_model, predict

    cfg = config.load([run_dir / "params.yaml"], OVERRIDES)
    model, _ = load_model(cfg, torch.device("cpu"), run_dir / "results/toy/train.pt")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    masks, scores = predict(model, image, [1.0, 0.5], True, 4)
    ids, probs = combine(masks, scores > cfg["infer"]["fp_cut"], cfg["infer"])
    raw, ids2, probs2 = segment(model, image, cfg, torch.device("cpu"), use_crf=False)
    assert np.array_equal(ids, ids2) and np.allclose(probs, probs2)
    assert np.array_equal(raw, ids[probs.argmax(0)])
    crf, _, _ = segment(model, image, cfg, torch.device("cpu"), use_crf=True)
    assert np.array_equal(crf, refine(np.asarray(image), ids, as_stored(probs), cfg["crf"], 11))


def test_modes_become_rgb_and_16_bit_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep))[..., 0].tolist() == [[0, 64], [128, 255]]
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))
    assert to_rgb(cmyk).mode == "RGB" and np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]


def test_overlay_blends_foreground_only():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 0]], np.uint8)
    out = overlay(image, mask, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    expect = np.round(0.5 * 100 + 0.5 * colorize(np.array([[1]]))[0, 0].astype(float)).astype(int).tolist()
    assert out[0, 1].tolist() == expect


def test_a_bad_image_stops_naming_it_and_a_rerun_continues(run_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    sizes = write_images(images)
    (images / "mid_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    args = ["predict", str(images), str(out), "--no-crf", *sum((["-S", o] for o in OVERRIDES), [])]
    proc = run_cli(args, run_dir)
    assert proc.returncode == 2
    assert "mid_broken.jpg: cannot read image" in proc.stderr and "the 3 images before it are done" in proc.stderr
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["alpha", "depth16", "grey"]  # sorted before it
    assert not list(out.rglob(".tmp-*"))  # nothing half-written
    skip = run_cli([*args, "--on-error", "skip"], run_dir)
    assert skip.returncode == 0, skip.stderr
    assert "skipped" in skip.stderr and "mid_broken.jpg" in skip.stderr
    assert "7 of 8 images segmented (4 now, 3 already there)" in skip.stdout and "; 1 skipped, listed in" in skip.stdout
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(sizes)
    assert "mid_broken.jpg" in (out / "skipped.tsv").read_text()
    (images / "mid_broken.jpg").unlink()
    assert run_cli(args, run_dir).returncode == 0 and not (out / "skipped.tsv").exists()


def test_a_folder_made_otherwise_is_refused_and_bad_arguments_are_named(run_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images)
    base = ["predict", str(images), str(out), "--no-crf", *sum((["-S", o] for o in OVERRIDES), [])]
    assert run_cli(base, run_dir).returncode == 0
    other = run_cli([*base, "-S", "infer.fp_cut=0.3"], run_dir)
    assert other.returncode == 2 and "holds predictions made with another params" in other.stderr
    with_crf = run_cli(base[:3] + base[4:], run_dir)
    assert with_crf.returncode == 2 and "another crf" in with_crf.stderr
    (images / "photo.png").write_bytes((images / "grey.png").read_bytes())
    clash = run_cli(base, run_dir)
    assert clash.returncode == 2 and "share the name 'photo'" in clash.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in run_cli(["predict", str(empty), str(tmp_path / "o2")], run_dir).stderr
    (images / "photo.png").unlink()
    missing = run_cli(["predict", str(images), str(tmp_path / "o3"), "--checkpoint", str(tmp_path / "none.pt")], run_dir)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
