"""The embedded synthetic dataset: layout, classes, masks, ignore band, determinism, the prepare CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import small_toy_cfg, small_toy_data_cfg
from wsss.data import toy
from wsss.data.palette import IGNORE, load_mask, voc_palette
from wsss.errors import WsssError

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_pascal_voc(toy_root):
    expected = ["ImageSets", "JPEGImages", "SegmentationClass", "prepared.json"]
    assert sorted(p.name for p in toy_root.iterdir()) == expected
    sets = toy_root / "ImageSets" / "Segmentation"
    assert sorted(p.name for p in sets.iterdir()) == ["train.txt", "train_aug.txt", "val.txt"]
    train = sets.joinpath("train.txt").read_text().split()
    val = sets.joinpath("val.txt").read_text().split()
    assert len(train) == 48 and len(val) == 24 and not set(train) & set(val)
    assert sets.joinpath("train_aug.txt").read_text() == sets.joinpath("train.txt").read_text()
    for name in train + val:
        assert (toy_root / "JPEGImages" / f"{name}.jpg").is_file()
        assert (toy_root / "SegmentationClass" / f"{name}.png").is_file()
    assert len(list((toy_root / "JPEGImages").iterdir())) == 72
    assert not list(toy_root.parent.glob(".tmp-*"))


def test_prepared_json(toy_root):
    info = json.loads((toy_root / "prepared.json").read_text())
    assert info["dataset"] == "toy"
    assert info["num_classes"] == 11
    assert info["class_names"] == toy.class_names(10)
    assert info["splits"] == {"train": 48, "train_aug": 48, "val": 24}
    assert info["data"]["toy"] == small_toy_cfg()


def test_images_and_masks(toy_root):
    names = (toy_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    seen = set()
    for name in names:
        with Image.open(toy_root / "JPEGImages" / f"{name}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            size = image.size
        with Image.open(toy_root / "SegmentationClass" / f"{name}.png") as png:
            assert png.format == "PNG" and png.mode == "P"
            assert png.getpalette()[:3 * 256] == voc_palette()
        mask = load_mask(toy_root / "SegmentationClass" / f"{name}.png")
        assert mask.shape == (size[1], size[0])
        assert 64 <= min(size) and max(size) <= 80
        values = set(np.unique(mask).tolist())
        assert values <= set(range(11)) | {IGNORE}
        assert values - {0, IGNORE}, f"{name} has no object"
        seen |= values
    assert len(seen - {0, IGNORE}) >= 8


def test_class_design():
    names = toy.class_names(10)
    assert names[0] == "background" and len(names) == 11 and len(set(names)) == 11
    classes = toy.toy_classes(10)
    for a, b in zip(classes[0::2], classes[1::2]):
        # a pair shares its body; the part and the usual background differ
        assert a.shape == b.shape and a.body == b.body
        assert a.part_light != b.part_light and a.pattern != b.pattern
        assert a.habitat != b.habitat
    assert len({c.shape for c in classes}) == 5
    assert len(toy.class_names(20)) == 21
    with pytest.raises(WsssError, match="num_classes"):
        toy.class_names(21)


@pytest.mark.parametrize("shape", sorted(toy._SHAPES))
def test_part_is_a_small_region_of_the_object(shape):
    grid = np.mgrid[0:200, 0:200].astype(np.float32)
    spec = toy.ToyClass("x", shape, (0.5, 0.5, 0.5), (1, 0, 0), (0, 0, 0), "solid", "sky")
    obj, _, _ = toy._place(spec, 0, 100.0, 100.0, 150.0, 0.25, np.random.default_rng(0), (grid[0], grid[1]))
    fraction = obj.part.sum() / obj.body.sum()
    assert 0.20 <= fraction <= 0.30
    assert abs(obj.body.sum() - obj.area) / obj.area < 0.05


def test_ignore_band_separates_regions(toy_root):
    for path in sorted((toy_root / "SegmentationClass").glob("*.png"))[:30]:
        mask = load_mask(path)
        for a, b in ((mask[:, :-1], mask[:, 1:]), (mask[:-1, :], mask[1:, :])):
            kept = (a != IGNORE) & (b != IGNORE)
            assert np.array_equal(a[kept], b[kept]), f"{path.name}: two labels touch without a 255 band"


@pytest.mark.parametrize("width", [0, 1, 3])
def test_ignore_width(width):
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 3
    out = toy._ignore_band(label, width)
    band = out == IGNORE
    assert band.sum(axis=1)[10] == 2 * width  # one row crosses the square's two vertical edges
    assert (out[~band] == label[~band]).all()


def test_render_image_is_deterministic_and_seed_dependent():
    cfg = small_toy_cfg()
    a, ma = toy.render_image(cfg, "train", 3)
    b, mb = toy.render_image(cfg, "train", 3)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = toy.render_image(small_toy_cfg(seed=1), "train", 3)
    d, _ = toy.render_image(cfg, "val", 3)
    assert not np.array_equal(a, c) if a.shape == c.shape else True
    assert not np.array_equal(a, d) if a.shape == d.shape else True


def test_generation_is_byte_identical(tmp_path):
    cfg = small_toy_cfg(n_train=12, n_val=6)
    toy.generate(cfg, tmp_path / "a", progress=False)
    toy.generate(cfg, tmp_path / "b", progress=False)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 2 * (12 + 6) + 3
    assert first == second


def test_part_contrast_zero_hides_the_part():
    plain, _ = toy.render_image(small_toy_cfg(part_contrast=0.0, clutter=0.0), "train", 5)
    marked, _ = toy.render_image(small_toy_cfg(part_contrast=1.0, clutter=0.0), "train", 5)
    assert plain.shape == marked.shape and not np.array_equal(plain, marked)


def test_bad_toy_config(tmp_path):
    with pytest.raises(WsssError, match="min_size"):
        toy.generate(small_toy_cfg(min_size=90, max_size=80), tmp_path / "x", progress=False)
    with pytest.raises(WsssError, match="num_classes"):
        toy.generate(small_toy_cfg(num_classes=25), tmp_path / "x", progress=False)


def test_render_examples(toy_root, tmp_path):
    out = toy.render_examples(toy_root, tmp_path / "grid.png", n=4)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 200


def test_prepare_cli_toy(tmp_path, capsys):
    from wsss.cli import main

    args = ["prepare", "--params", str(REPO / "params.yaml"), "-S", f"data.root={tmp_path}",
            "-S", "data.toy.n_train=10", "-S", "data.toy.n_val=5", "-S", "data.toy.min_size=64",
            "-S", "data.toy.max_size=72"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("prepared toy: 11 classes") and "val 5" in line and line.count("\n") == 0
    info = json.loads((tmp_path / "toy" / "prepared.json").read_text())
    assert info["splits"]["train_aug"] == 10
    first = _files(tmp_path / "toy")
    assert main(args) == 0  # a second run replaces the dataset with the same bytes
    assert _files(tmp_path / "toy") == first


def test_prepare_dataset_replaces_only_when_complete(tmp_path, monkeypatch):
    from wsss.stages import prepare

    target = tmp_path / "toy"
    cfg = small_toy_data_cfg(tmp_path, n_train=6, n_val=3)
    prepare.prepare_dataset(cfg, target, progress=False)
    before = _files(target)

    def broken(data_cfg, out_dir, progress):
        (out_dir / "JPEGImages").mkdir()
        (out_dir / "JPEGImages" / "half.jpg").write_bytes(b"\xff\xd8")
        raise KeyboardInterrupt

    monkeypatch.setitem(prepare.PREPARERS, "toy", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset(cfg, target, progress=False)
    assert _files(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]


def test_configured_splits_must_exist(tmp_path):
    from wsss.stages.prepare import prepare_dataset

    cfg = small_toy_data_cfg(tmp_path, n_train=4, n_val=2)
    cfg["eval_split"] = "test"
    with pytest.raises(WsssError, match="data.eval_split.*test"):
        prepare_dataset(cfg, tmp_path / "toy", progress=False)
    assert not (tmp_path / "toy").exists()
