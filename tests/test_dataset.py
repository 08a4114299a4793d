"""The VOC-format reader and the training transform, on toy data and on a hand-made VOC tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAKE_VOC_NAMES
from wsss.data.dataset import IMAGENET_MEAN, IMAGENET_STD, VOCSegmentation, labels_from_mask, verify_root
from wsss.data.palette import IGNORE, load_mask, save_mask
from wsss.data.transforms import TrainTransform


def _check_item(item: dict, num_classes: int) -> None:
    assert set(item) == {"image", "raw", "mask", "labels", "name"}
    image, raw, mask, labels = item["image"], item["raw"], item["mask"], item["labels"]
    assert image.dtype == torch.float32 and raw.dtype == torch.float32 and image.shape == raw.shape
    assert image.shape[0] == 3 and mask.shape == image.shape[1:]
    assert mask.dtype == torch.int64 and labels.dtype == torch.float32 and labels.shape == (num_classes - 1,)
    assert 0 <= raw.min() and raw.max() <= 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)
    values = set(mask.unique().tolist())
    assert values <= set(range(num_classes)) | {IGNORE}


def test_reader_on_toy_data(toy_root):
    ds = VOCSegmentation(toy_root, "val", 11)
    assert len(ds) == 24
    for index in range(len(ds)):
        item = ds[index]
        _check_item(item, 11)
        assert item["name"] == ds.names[index]
        mask = load_mask(toy_root / "SegmentationClass" / f"{item['name']}.png")
        assert torch.equal(item["mask"], torch.from_numpy(mask.astype(np.int64)))
        expected = np.zeros(10, np.float32)
        for value in np.unique(mask):
            if value not in (0, IGNORE):
                expected[value - 1] = 1
        assert np.array_equal(item["labels"].numpy(), expected) and expected.sum() >= 1


def test_reader_on_a_voc_tree_we_did_not_generate(fake_voc_root):
    assert verify_root(fake_voc_root, ["train", "val", "trainval"], 21, progress=False) == {
        "train": 4, "val": 2, "trainval": 6}
    for split, names in FAKE_VOC_NAMES.items():
        ds = VOCSegmentation(fake_voc_root, split, 21)
        assert ds.names == names  # blank lines, trailing spaces and CRLF line ends are tolerated
        sizes = set()
        for item in ds:
            _check_item(item, 21)
            sizes.add(tuple(item["mask"].shape))
            assert (item["mask"] == IGNORE).any()  # the hand-drawn 255 outlines survive
        assert len(sizes) == len(names)


def test_labels_come_from_the_whole_mask_not_the_crop(tmp_path):
    root = tmp_path / "one"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    mask = np.zeros((100, 100), np.uint8)
    mask[:3, :3] = 7  # a corner that a 0.9-1.0 crop may well cut away
    mask[40:60, 40:60] = 2
    mask[10, 10:20] = IGNORE
    Image.new("RGB", (100, 100), (90, 90, 90)).save(root / "JPEGImages" / "x.jpg")
    save_mask(mask, root / "SegmentationClass" / "x.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    expected = labels_from_mask(mask, 21)
    assert np.flatnonzero(expected).tolist() == [1, 6]
    ds = VOCSegmentation(root, "train", 21, TrainTransform(32, (0.1, 0.2), (0.75, 1.33), 0.5, (0.3, 0.3, 0.3, 0.1)))
    torch.manual_seed(0)
    for _ in range(5):
        item = ds[0]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
        assert np.array_equal(item["labels"].numpy(), expected)


def _colour_coded_root(tmp_path):
    """Images whose colour encodes the mask (four flat quadrants), so alignment can be checked."""
    root = tmp_path / "coded"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    colours = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}
    mask = np.zeros((90, 120), np.uint8)
    mask[:45, :70], mask[:45, 70:], mask[45:, :70], mask[45:, 70:] = 1, 2, 3, 4
    rgb = np.zeros((90, 120, 3), np.uint8)
    for cls, colour in colours.items():
        rgb[mask == cls] = colour
    Image.fromarray(rgb).save(root / "JPEGImages" / "q.jpg", quality=100, subsampling=0)
    save_mask(mask, root / "SegmentationClass" / "q.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("q\n")
    return root, colours


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_transform_keeps_image_and_mask_aligned(tmp_path, hflip):
    root, colours = _colour_coded_root(tmp_path)
    transform = TrainTransform(48, (0.3, 1.0), (0.75, 1.3333), hflip, (0.0, 0.0, 0.0, 0.0))
    ds = VOCSegmentation(root, "train", 21, transform)
    palette = torch.tensor([colours[c] for c in sorted(colours)], dtype=torch.float32) / 255
    torch.manual_seed(1)
    for _ in range(10):
        item = ds[0]
        raw, mask = item["raw"], item["mask"]
        assert raw.shape == (3, 48, 48)
        nearest = ((raw.permute(1, 2, 0)[..., None, :] - palette) ** 2).sum(-1).argmin(-1) + 1
        agreement = (nearest == mask).float().mean().item()
        assert agreement > 0.95, agreement
    # with the same random draws, hflip=1 gives the mirror image of hflip=0
    other = VOCSegmentation(root, "train", 21, TrainTransform(48, (0.3, 1.0), (0.75, 1.3333), 1.0 - hflip,
                                                              (0.0, 0.0, 0.0, 0.0)))
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    b = other[0]
    assert torch.equal(a["mask"], b["mask"].flip(-1))


def test_colour_jitter_touches_the_image_only(fake_voc_root):
    plain = VOCSegmentation(fake_voc_root, "train", 21, TrainTransform(40, (0.9, 1.0), (0.75, 1.33), 0.5, (0, 0, 0, 0)))
    jittered = VOCSegmentation(fake_voc_root, "train", 21,
                               TrainTransform(40, (0.9, 1.0), (0.75, 1.33), 0.5, (0.3, 0.3, 0.3, 0.1)))
    torch.manual_seed(3)
    a = plain[1]
    torch.manual_seed(3)
    b = jittered[1]
    assert torch.equal(a["mask"], b["mask"]) and not torch.equal(a["raw"], b["raw"])


def test_transform_from_config():
    cfg = {"train": {"crop_size": 112, "crop_scale": [0.9, 1.0], "crop_ratio": [0.75, 1.3333333], "hflip": 0.5,
                     "color_jitter": [0.3, 0.3, 0.3, 0.1]}}
    transform = TrainTransform.from_config(cfg)
    assert transform.crop_size == 112 and transform.scale == (0.9, 1.0) and transform.hflip == 0.5


def test_data_loader_batches(toy_root):
    transform = TrainTransform(56, (0.9, 1.0), (0.75, 1.3333), 0.5, (0.3, 0.3, 0.3, 0.1))
    loader = torch.utils.data.DataLoader(VOCSegmentation(toy_root, "train_aug", 11, transform), batch_size=8,
                                         shuffle=True, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 56, 56) and batch["raw"].shape == (8, 3, 56, 56)
    assert batch["mask"].shape == (8, 56, 56) and batch["labels"].shape == (8, 10) and len(batch["name"]) == 8
