"""A corpus of broken datasets: each is refused with an error naming the file, also through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAKE_VOC_NAMES, small_toy_data_cfg
from wsss.cli import main
from wsss.data.dataset import VOCSegmentation, verify_root
from wsss.errors import WsssError

REPO = Path(__file__).resolve().parents[1]
TRAIN = FAKE_VOC_NAMES["train"]


def _image(root: Path, k: int = 1) -> Path:
    return root / "JPEGImages" / f"{TRAIN[k]}.jpg"


def _mask(root: Path, k: int = 1) -> Path:
    return root / "SegmentationClass" / f"{TRAIN[k]}.png"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def _rewrite_mask(path: Path, edit) -> None:
    with Image.open(path) as image:
        palette = image.getpalette()
        array = np.array(image)
    out = Image.fromarray(edit(array), mode="P")
    out.putpalette(palette)
    out.save(path)


def _split(root: Path, split: str = "train_aug") -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


# name -> (break the tree, the file the error must name)
CORPUS = {
    "missing split file": (lambda r: _split(r).unlink(), lambda r: _split(r)),
    "empty split file": (lambda r: _split(r).write_text("\n  \n"), lambda r: _split(r)),
    "listed image missing": (lambda r: _image(r).unlink(), _image),
    "listed mask missing": (lambda r: _mask(r).unlink(), _mask),
    "truncated jpeg": (lambda r: _truncate(_image(r)), _image),
    "corrupt jpeg": (lambda r: _garbage(_image(r)), _image),
    "empty jpeg": (lambda r: _image(r).write_bytes(b""), _image),
    "truncated png": (lambda r: _truncate(_mask(r)), _mask),
    "corrupt png": (lambda r: _garbage(_mask(r)), _mask),
    "mask value out of range": (lambda r: _rewrite_mask(_mask(r), lambda a: np.where(a == 0, 30, a).astype(np.uint8)),
                                _mask),
    "mask size differs": (lambda r: _rewrite_mask(_mask(r), lambda a: np.ascontiguousarray(a[:-5, :])), _mask),
    "colour-coded RGB mask": (lambda r: Image.open(_mask(r)).convert("RGB").save(_mask(r)), _mask),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_verify_root_refuses(case, fake_voc_root):
    breaker, culprit = CORPUS[case]
    breaker(fake_voc_root)
    with pytest.raises(WsssError) as err:
        verify_root(fake_voc_root, ["train_aug", "val"], 21, progress=False)
    assert str(culprit(fake_voc_root)) in str(err.value)


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_reader_refuses(case, fake_voc_root):
    breaker, culprit = CORPUS[case]
    breaker(fake_voc_root)
    with pytest.raises(WsssError) as err:
        ds = VOCSegmentation(fake_voc_root, "train_aug", 21)
        for index in range(len(ds)):
            ds[index]
    assert str(culprit(fake_voc_root)) in str(err.value)


def _prepare_args(tmp_path: Path, source: Path) -> list[str]:
    return ["prepare", "--params", str(REPO / "params.yaml"), "-S", "data.name=voc", "-S", f"data.source={source}",
            "-S", f"data.root={tmp_path / 'data'}", "-S", f"data.downloads={tmp_path / 'downloads'}"]


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_prepare_cli_refuses(case, fake_voc_root, tmp_path, capsys):
    breaker, culprit = CORPUS[case]
    breaker(fake_voc_root)
    assert main(_prepare_args(tmp_path, fake_voc_root)) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsss prepare: error:") and culprit(fake_voc_root).name in err
    assert not (tmp_path / "data" / "voc").exists()
    assert not list((tmp_path / "data").glob(".tmp-*")) if (tmp_path / "data").exists() else True


def test_prepare_cli_exit_status_in_a_subprocess(fake_voc_root, tmp_path):
    _truncate(_image(fake_voc_root))
    result = subprocess.run([sys.executable, "-m", "wsss.cli", *_prepare_args(tmp_path, fake_voc_root)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert _image(fake_voc_root).name in result.stderr and "truncated" in result.stderr


def test_mask_problems_are_explained(fake_voc_root):
    _rewrite_mask(_mask(fake_voc_root), lambda a: np.where(a == 0, 30, a).astype(np.uint8))
    with pytest.raises(WsssError, match=r"mask value 30 is outside the classes 0\.\.20 and 255"):
        verify_root(fake_voc_root, ["train"], 21, progress=False)


def test_verify_root_lists_every_bad_file(fake_voc_root):
    _truncate(_image(fake_voc_root, 0))
    _mask(fake_voc_root, 2).unlink()
    with pytest.raises(WsssError, match="2 bad file") as err:
        verify_root(fake_voc_root, ["train"], 21, progress=False)
    assert _image(fake_voc_root, 0).name in str(err.value) and _mask(fake_voc_root, 2).name in str(err.value)


def test_missing_source_folder(tmp_path, capsys):
    assert main(_prepare_args(tmp_path, tmp_path / "no-such-folder")) == 2
    assert "no-such-folder" in capsys.readouterr().err


def test_existing_folder_not_made_by_prepare_is_left_alone(tmp_path, capsys):
    target = tmp_path / "toy"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    from wsss.stages.prepare import prepare_dataset

    with pytest.raises(WsssError, match="prepared.json"):
        prepare_dataset(small_toy_data_cfg(tmp_path, n_train=4, n_val=2), target, progress=False)
    assert (target / "mine.txt").read_text() == "keep me"


def test_source_inside_the_output_folder_is_refused(fake_voc_root, tmp_path):
    from wsss.stages.prepare import prepare_dataset

    cfg = small_toy_data_cfg(tmp_path)
    cfg.update(name="voc", source=str(fake_voc_root))
    with pytest.raises(WsssError, match="data.source"):
        prepare_dataset(cfg, fake_voc_root.parent, progress=False)
    assert (fake_voc_root / "JPEGImages").is_dir()
