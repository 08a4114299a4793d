"""A user's own VOC-format dataset with its own class names (``data.name: custom``).

The user's folder is built here: the embedded generator's images and masks with 5 foreground
classes, written as a plain VOC-format tree (no train_aug list, no prepared.json) and given names of
the user's choosing. It runs through prepare in-process, and through the whole single-stage DAG with
Snakemake (the committed CPU overlay) and with DVC (the same values in params.yaml).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import small_toy_cfg
from wsss import config
from wsss.data.palette import load_mask, save_mask
from wsss.errors import WsssError
from wsss.stages.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
NAMES = ["background", "heron", "kayak", "lantern", "teapot", "violin"]


def user_folder(dest: Path, n_train: int = 32, n_val: int = 8) -> Path:
    """A VOC-format tree of 5 foreground classes as a user would hand it over: train.txt and val.txt only."""
    from wsss.data.toy import generate

    generate(small_toy_cfg(num_classes=5, n_train=n_train, n_val=n_val, min_size=64, max_size=72), dest, progress=False)
    (dest / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    return dest


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return user_folder(tmp_path_factory.mktemp("user") / "mydata")


def data_cfg(source: Path, root: Path, classes=NAMES) -> dict:
    cfg = config.load([REPO / "params.yaml"], ["data.name=custom", f"data.classes=[{','.join(NAMES)}]",
                                               f"data.source={source}", f"data.root={root}"])["data"]
    cfg["classes"] = list(classes) if classes is not None else None
    return cfg


def test_prepare_takes_the_names_and_the_splits(folder, tmp_path):
    info = prepare_dataset(data_cfg(folder, tmp_path), tmp_path / "custom", progress=False)
    assert info["num_classes"] == 6 and info["class_names"] == NAMES
    assert info["splits"] == {"train": 32, "train_aug": 32, "val": 8}
    out = tmp_path / "custom"
    assert (out / "ImageSets/Segmentation/train_aug.txt").read_text() == (folder / "ImageSets/Segmentation/train.txt").read_text()
    name = (folder / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    assert np.array_equal(load_mask(out / "SegmentationClass" / f"{name}.png"), load_mask(folder / "SegmentationClass" / f"{name}.png"))
    assert json.loads((out / "prepared.json").read_text())["class_names"] == NAMES


def test_a_mask_value_without_a_name_is_an_error_naming_the_file(folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    name = (src / "ImageSets/Segmentation/val.txt").read_text().split()[1]
    mask = load_mask(src / "SegmentationClass" / f"{name}.png").copy()
    mask[:4, :4] = 6  # one class more than the six names
    save_mask(mask, src / "SegmentationClass" / f"{name}.png")
    with pytest.raises(WsssError) as err:
        prepare_dataset(data_cfg(src, tmp_path), tmp_path / "custom", progress=False)
    message = str(err.value)
    assert f"SegmentationClass/{name}.png" in message and "mask value 6" in message and "data.classes" in message
    assert "5 violin" in message
    assert not (tmp_path / "custom").exists()  # nothing half-made where the next stage would read it
    # four names for masks holding five foreground classes: every mask with value 5 is named
    with pytest.raises(WsssError, match=r"mask value 5 .*key 'data.classes' names 5 classes"):
        prepare_dataset(data_cfg(folder, tmp_path, NAMES[:5]), tmp_path / "custom", progress=False)


@pytest.mark.parametrize("change,match", [
    ({"classes": None}, r"key 'data.classes': data.name 'custom' needs the class names"),
    ({"classes": [f"c{k}" for k in range(256)]}, r"key 'data.classes': 256 names.*at most 255.*'c255'"),
    ({"classes": ["background", "cat", "cat"]}, r"data.classes"),
    ({"classes": ["background"]}, r"data.classes"),
])
def test_bad_class_lists_are_refused_naming_the_key(change, match):
    raw = config.load_raw([REPO / "params.yaml"])
    raw["data"].update({"name": "custom", **change})
    with pytest.raises(config.ParamsError, match=match):
        config.resolve(raw)


def test_a_folder_that_is_not_voc_format_or_lacks_a_split_is_refused(folder, tmp_path):
    with pytest.raises(WsssError, match=r"key 'data.source': data.name 'custom' reads your VOC-format folder"):
        prepare_dataset({**data_cfg(folder, tmp_path), "source": None}, tmp_path / "custom", progress=False)
    (tmp_path / "flat").mkdir()
    with pytest.raises(WsssError, match=r"is not a VOC-format folder"):
        prepare_dataset(data_cfg(tmp_path / "flat", tmp_path), tmp_path / "custom", progress=False)
    with pytest.raises(WsssError, match=r"key 'data.eval_split': .*test.txt not found \(splits there: train, train_aug, val\)"):
        prepare_dataset({**data_cfg(folder, tmp_path), "eval_split": "test"}, tmp_path / "custom", progress=False)


# ------------------------------------------------------------------ the whole DAG, both engines

def figure_texts(run: Path) -> list[str]:
    """The texts drawn in the evaluate stage's figure, re-made in this process from the run's outputs."""
    import matplotlib.figure
    import matplotlib.text

    from conftest import run_cli

    seen: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return save(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        proc = run_cli(["evaluate", "--params", "params.yaml", "--params", "workflow/overlays/custom_cpu.yaml"], run)
    finally:
        matplotlib.figure.Figure.savefig = save
    assert proc.returncode == 0, proc.stderr
    return seen


def check_run(run: Path) -> None:
    table = pd.read_csv(run / "results" / "custom_val_miou.csv")
    assert list(table["class"]) == [*NAMES, "mean"]
    metrics = json.loads((run / "results" / "metrics" / "custom_val.json").read_text())
    assert metrics["images"] == 8 and 0.0 <= metrics["miou_crf"] <= 1.0
    mask = np.asarray(Image.open(next((run / "results/custom/val/crf/masks").glob("*.png"))))
    assert mask.max() < len(NAMES)
    prepared = json.loads((run / "data" / "custom" / "prepared.json").read_text())
    assert prepared["class_names"] == NAMES and prepared["num_classes"] == 6


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory, folder):
    from test_engines import make_copy, set_param

    repo = make_copy(tmp_path_factory.mktemp("custom-repo"), reduced=False)
    params = repo / "params.yaml"
    set_param(params, "data.name", "custom")
    set_param(params, "data.source", str(folder))
    set_param(params, "data.classes", NAMES)
    set_param(params, "infer.scales", [1.0, 0.5])
    set_param(params, "crf.workers", 2)
    subprocess.run(["git", "commit", "-qam", "my dataset"], cwd=repo, check=True)
    return repo


@pytest.mark.slow
def test_the_whole_dag_with_snakemake_uses_the_names(user_repo, tmp_path):
    from test_engines import BIN, sh

    run = tmp_path / "snake"
    shutil.copytree(user_repo, run)
    sh([str(BIN / "snakemake"), "--cores", "2", "results/custom_val_miou.csv",
        "--configfile", "workflow/overlays/custom_cpu.yaml"], run)
    check_run(run)
    texts = figure_texts(run)
    for name in NAMES:
        assert texts.count(name) >= 1, (name, texts)


@pytest.mark.slow
def test_the_whole_dag_with_dvc_uses_the_names(user_repo, tmp_path):
    import yaml

    from test_engines import BIN, set_param, sh

    run = tmp_path / "dvc"
    shutil.copytree(user_repo, run)
    overlay = yaml.safe_load((run / "workflow/overlays/custom_cpu.yaml").read_text())["presets"]["custom"]
    for section, keys in overlay.items():
        for key, value in keys.items():
            set_param(run / "params.yaml", f"presets.custom.{section}.{key}", value)
    out = sh([str(BIN / "dvc"), "repro", "evaluate"], run).stdout
    assert "Running stage 'evaluate'" in out
    check_run(run)
