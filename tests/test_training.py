"""Training stages on a small generated dataset: resume after kill -9, checkpoint checks, curves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = ["presets.toy.train.batch_size=8", "presets.toy.train.crop_size=48", "train.workers=0", "train.log_every=2",
         "data.toy.n_train=48", "data.toy.n_val=24", "data.toy.min_size=64", "data.toy.max_size=80", "data.toy.clutter=0.5"]


def wsss(stage: str, cwd: Path, data_root: Path, *overrides: str, wait: bool = True, extra: tuple[str, ...] = ()):
    """`wsss <stage>` on the small dataset: ``overrides`` become ``-S`` options, ``extra`` goes as written."""
    args = [sys.executable, "-m", "wsss.cli", stage, "--params", str(REPO / "params.yaml"),
            "-S", f"data.root={data_root}", *[a for o in SMALL + list(overrides) for a in ("-S", o)], *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pretrained(toy_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    proc = wsss("pretrain", cwd, toy_root.parent, "presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, toy_root.parent


def test_pretrain_writes_checkpoint_curve_and_config(pretrained):
    cwd, _ = pretrained
    state = torch.load(cwd / "results/toy/pretrain.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["config"]["train"]["cls_epochs"] == 2
    header, *rows = (cwd / "results/toy/pretrain_log.tsv").read_text().splitlines()
    assert header.split("\t")[:4] == ["stage", "epoch", "step", "loss"] and len(rows) >= 2
    assert "cls_epochs: 2" in (cwd / "results/toy/pretrain.yaml").read_text()
    assert not list((cwd / "results/toy/state").glob("*.pt")), "the resumable state is removed once done"


def test_train_continues_from_pretrain_with_segmentation_on(pretrained):
    cwd, root = pretrained
    proc = wsss("train", cwd, root, "presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(cwd / "results/toy/train.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 3
    rows = [r.split("\t") for r in (cwd / "results/toy/train_log.tsv").read_text().splitlines()[1:]]
    assert rows and all(r[0] == "train" and int(r[1]) == 2 for r in rows)
    header = (cwd / "results/toy/train_log.tsv").read_text().splitlines()[0].split("\t")
    seg, valid = [float(r[header.index("seg")]) for r in rows], [float(r[header.index("pseudo_valid")]) for r in rows]
    assert all(0 <= v <= 1 for v in valid), "pseudo-labels are made in every logged step"
    assert any(s > 0 for s in seg), "the segmentation term is on after cls_epochs"
    pretrain_steps = [int(r.split("\t")[2]) for r in (cwd / "results/toy/pretrain_log.tsv").read_text().splitlines()[1:]]
    assert int(rows[0][2]) > max(pretrain_steps), "steps count on across the two stages"


def test_infer_on_the_trained_model_depends_on_neither_chunk_nor_scale_order(pretrained, tmp_path):
    import numpy as np
    from PIL import Image

    cwd, root = pretrained
    schedule = ["presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3"]
    if not (cwd / "results/toy/train.pt").exists():
        assert wsss("train", cwd, root, *schedule).returncode == 0
    outputs = {}
    for chunk, scales in ((1, "[1.0, 0.5, 1.5, 2.0]"), (4, "[1.0, 0.5, 1.5, 2.0]"), (8, "[2.0, 1.5, 0.5, 1.0]")):
        proc = wsss("infer", cwd, root, *schedule, f"infer.chunk={chunk}", f"infer.scales={scales}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        infer = cwd / "results/toy/val/infer"
        masks = {p.name: np.asarray(Image.open(p)) for p in sorted((infer / "masks").glob("*.png"))}
        probs = {p.name: np.load(p)["probs"].astype(np.float32) for p in sorted((infer / "probs").glob("*.npz"))}
        outputs[chunk] = (masks, probs, (infer / "scores.tsv").read_text().splitlines())
    ref_masks, ref_probs, ref_scores = outputs[1]
    assert len(ref_masks) == 24
    for chunk in (4, 8):
        masks, probs, scores = outputs[chunk]
        assert masks.keys() == ref_masks.keys()
        differing = sum(int((masks[k] != ref_masks[k]).sum()) for k in masks)
        assert differing <= 2, f"chunk {chunk}: {differing} mask pixels differ"  # float ties at most
        for k in probs:
            np.testing.assert_allclose(probs[k], ref_probs[k], atol=2e-3)  # float16 storage
        for ours, ref in zip(scores[1:], ref_scores[1:]):
            np.testing.assert_allclose([float(v) for v in ours.split("\t")[1:]], [float(v) for v in ref.split("\t")[1:]],
                                       atol=2e-4)  # printed to 4 decimals


def test_clean_protocol_takes_the_classes_from_the_ground_truth(pretrained):
    import numpy as np
    from PIL import Image

    from wsss.data.palette import load_mask

    cwd, root = pretrained
    schedule = ["presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3"]
    if not (cwd / "results/toy/train.pt").exists():
        assert wsss("train", cwd, root, *schedule).returncode == 0
    proc = wsss("infer", cwd, root, *schedule, "infer.presence=gt", "infer.scales=[1.0]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in sorted((cwd / "results/toy/val/infer/probs").glob("*.npz")):
        truth = load_mask(root / "toy" / "SegmentationClass" / f"{path.stem}.png")
        assert set(np.load(path)["classes"].tolist()) == {0} | (set(np.unique(truth).tolist()) - {255})
        predicted = set(np.unique(np.asarray(Image.open(cwd / "results/toy/val/infer/masks" / f"{path.stem}.png"))).tolist())
        assert predicted <= set(np.unique(truth).tolist())


def test_train_refuses_a_checkpoint_another_stage_wrote(pretrained, tmp_path):
    cwd, root = pretrained
    schedule = ["presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3"]
    if not (cwd / "results/toy/train.pt").exists():
        assert wsss("train", cwd, root, *schedule).returncode == 0
    (tmp_path / "results/toy").mkdir(parents=True)
    (tmp_path / "results/toy/pretrain.pt").write_bytes((cwd / "results/toy/train.pt").read_bytes())
    proc = wsss("train", tmp_path, root, *schedule)
    assert proc.returncode == 2 and "was written by `wsss train`, not by `wsss pretrain`" in proc.stderr


def test_a_checkpoint_of_another_model_configuration_is_refused(pretrained):
    cwd, root = pretrained
    proc = wsss("train", cwd, root, "presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3", "model.fca=false")
    assert proc.returncode == 2
    assert "other parameters" in proc.stderr and "model.fca: input made with True, params give False" in proc.stderr
    assert "pretrain.pt" in proc.stderr


def test_a_corrupt_checkpoint_is_named(pretrained, tmp_path):
    _, root = pretrained
    (tmp_path / "results/toy").mkdir(parents=True)
    (tmp_path / "results/toy/pretrain.pt").write_bytes(b"not a checkpoint")
    proc = wsss("train", tmp_path, root, "presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3")
    assert proc.returncode == 2 and "pretrain.pt" in proc.stderr and "corrupt" in proc.stderr
    assert not (tmp_path / "results/toy/train.pt").exists()


def test_killed_pretrain_resumes_from_the_last_epoch(toy_root, tmp_path):
    schedule = ["presets.toy.train.cls_epochs=8", "presets.toy.train.epochs=8"]
    proc = wsss("pretrain", tmp_path, toy_root.parent, *schedule, wait=False)
    state_dir = tmp_path / "results/toy/state"
    deadline = time.time() + 300
    while time.time() < deadline and not list(state_dir.glob("pretrain-*.pt")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    time.sleep(0.3)  # now inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results/toy/pretrain.pt").exists(), "a killed run must not leave a final checkpoint"
    saved = torch.load(next(state_dir.glob("pretrain-*.pt")), map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= saved < 8
    again = wsss("pretrain", tmp_path, toy_root.parent, *schedule)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming pretrain from" in again.stdout and f"at epoch {saved}" in again.stdout
    assert torch.load(tmp_path / "results/toy/pretrain.pt", map_location="cpu", weights_only=False)["epoch"] == 8
    epochs = [int(r.split("\t")[1]) for r in (tmp_path / "results/toy/pretrain_log.tsv").read_text().splitlines()[1:]]
    assert epochs == sorted(epochs) and set(epochs) == set(range(8)), "each epoch logged once, in order"
    steps = [int(r.split("\t")[2]) for r in (tmp_path / "results/toy/pretrain_log.tsv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)), "steps go on from where the killed run stopped"
    whole = tmp_path / "uninterrupted"
    whole.mkdir()
    assert wsss("pretrain", whole, toy_root.parent, *schedule).returncode == 0
    resumed = torch.load(tmp_path / "results/toy/pretrain.pt", map_location="cpu", weights_only=False)
    straight = torch.load(whole / "results/toy/pretrain.pt", map_location="cpu", weights_only=False)
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), f"{key}: a resumed run must end where an uninterrupted one does"
