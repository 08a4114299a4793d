"""Training stages on a small generated dataset: resume after kill -9, checkpoint checks, curves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from wsss import config
from wsss.utils.cores import available_cores

REPO = Path(__file__).resolve().parents[1]
SMALL = ["presets.toy.train.batch_size=8", "presets.toy.train.crop_size=48", "train.workers=0", "train.log_every=2",
         "data.toy.n_train=48", "data.toy.n_val=24", "data.toy.n_test=0", "data.toy.min_size=64", "data.toy.max_size=80", "data.toy.clutter=0.5"]


def wsss(stage: str, cwd: Path, data_root: Path, *overrides: str, wait: bool = True, extra: tuple[str, ...] = ()):
    """`wsss <stage>` on the small dataset, in this process (``wait=False``: a subprocess, returned running);
    ``overrides`` become ``-S`` options, ``extra`` goes as written."""
    argv = [stage, "--params", str(REPO / "params.yaml"),
            "-S", f"data.root={data_root}", *[a for o in SMALL + list(overrides) for a in ("-S", o)], *extra]
    if not wait:  # a real process, to be killed
        return subprocess.Popen([sys.executable, "-m", "wsss.cli", *argv], cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return run_cli(argv, cwd)


SCHEDULE = ["presets.toy.train.cls_epochs=2", "presets.toy.train.epochs=3"]


@pytest.fixture(scope="module")
def pretrained(toy_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    proc = wsss("pretrain", cwd, toy_root.parent, *SCHEDULE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "pretrain: wrote results/toy/pretrain.pt (epochs 0-2)"
    return cwd, toy_root.parent


def trained(pretrained) -> tuple[Path, Path]:
    """The module's run directory and data root, `wsss train` run once there after the shared pretrain."""
    cwd, root = pretrained
    if not (cwd / "results/toy/train.pt").exists():
        assert wsss("train", cwd, root, *SCHEDULE).returncode == 0
    return cwd, root


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

    cwd, root = trained(pretrained)
    schedule = SCHEDULE
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


def test_the_crf_stage_refines_every_probability_file_whatever_the_workers(pretrained):
    """`wsss crf` writes, for every image, refine() of its probability file and its image, the same with
    one worker (in this process) and with two (a process pool); then evaluate scores those masks."""
    import numpy as np
    import yaml
    from PIL import Image

    from wsss.metrics import confusion, scores
    from wsss.stages.crf import read_probs, refine

    cwd, root = trained(pretrained)
    schedule = SCHEDULE
    assert wsss("infer", cwd, root, *schedule, "infer.scales=[1.0]").returncode == 0
    crf_cfg = yaml.safe_load((REPO / "params.yaml").read_text())["crf"]
    written = {}
    for workers in (1, 2):
        proc = wsss("crf", cwd, root, *schedule, "infer.scales=[1.0]", f"crf.workers={workers}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.endswith(f"crf: refined 24 masks into results/toy/val/crf with {workers} workers\n")
        written[workers] = {p.stem: np.asarray(Image.open(p)) for p in sorted((cwd / "results/toy/val/crf/masks").glob("*.png"))}
    assert len(written[1]) == 24 and written[1].keys() == written[2].keys()
    num_classes = int(yaml.safe_load((cwd / "results/toy/val/crf/config.yaml").read_text())["data"]["toy"]["num_classes"]) + 1
    conf = np.zeros((num_classes, num_classes), np.int64)
    for name, mask in written[1].items():
        ids, probs = read_probs(cwd / "results/toy/val/infer/probs" / f"{name}.npz")
        image = np.asarray(Image.open(root / "toy" / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        assert np.array_equal(mask, refine(image, ids, probs, crf_cfg, num_classes)), name
        assert np.array_equal(written[2][name], mask), name
        conf += confusion(np.asarray(Image.open(root / "toy" / "SegmentationClass" / f"{name}.png")), mask, num_classes)
    assert wsss("evaluate", cwd, root, *schedule, "infer.scales=[1.0]").returncode == 0
    metrics = json.loads((cwd / "results/metrics/toy_val.json").read_text())
    assert metrics["miou_crf"] == round(scores(conf, "zero")["miou"], 6)
    proc = wsss("crf", cwd, root, *schedule, "infer.scales=[1.0]", "crf.workers=0")  # 0: every core
    assert proc.stdout.endswith(f"with {available_cores()} workers\n")


def test_the_infer_stage_writes_what_predict_and_combine_give(pretrained):
    """For every image: the probabilities, the mask and the class scores `wsss infer` wrote equal
    predict() with the params' scales, flip, chunk and canvas, then combine() with its fp_cut."""
    import numpy as np
    import torch
    from PIL import Image

    from wsss.stages.infer import combine, load_model, predict

    cwd, root = trained(pretrained)
    schedule = SCHEDULE
    knobs = ["infer.scales=[1.0, 0.5]", "infer.flip=true", "infer.pad_size=[160, 160]"]
    cfg = config.load([REPO / "params.yaml"], [*SMALL, *schedule, *knobs, f"data.root={root}"])
    model, _ = load_model(cfg, torch.device("cpu"), cwd / "results/toy/train.pt")
    icfg = cfg["infer"]

    def view(name: str):
        image = Image.open(root / "toy" / "JPEGImages" / f"{name}.jpg").convert("RGB")
        with torch.no_grad():
            return predict(model, image, [1.0, 0.5], True, icfg["chunk"], [160, 160], "cpu")

    # fp_cut exactly at the first image's top class score: a tie is not presence (> as in the public code)
    first = (root / "toy/ImageSets/Segmentation/val.txt").read_text().split()[0]
    fp_cut = float(view(first)[1].max())
    knobs.append(f"infer.fp_cut={fp_cut!r}")
    proc = wsss("infer", cwd, root, *schedule, *knobs)
    assert proc.returncode == 0
    out = cwd / "results/toy/val/infer"
    header, *rows = (out / "scores.tsv").read_text().splitlines()
    assert header == "\t".join(["name", *(f"c{c}" for c in range(1, config.num_classes(cfg)))])
    assert proc.stdout.endswith(f"infer: wrote {len(rows)} masks to results/toy/val/infer\n")
    record = yaml.safe_load((out / "checkpoint.yaml").read_text())
    assert (record["path"], record["made_by"]) == ("results/toy/train.pt", "wsss train")
    assert rows[0].split("\t")[0] == first
    for row in rows[:3]:
        name = row.split("\t")[0]
        masks, scores = view(name)
        ids, probs = combine(masks, scores > fp_cut, icfg)
        assert name != first or ids.tolist() == [0]
        with np.load(out / "probs" / f"{name}.npz") as f:
            assert f["classes"].tolist() == ids.tolist()
            np.testing.assert_allclose(f["probs"].astype(np.float32), probs, atol=1e-3)
        assert np.array_equal(np.asarray(Image.open(out / "masks" / f"{name}.png")), ids[probs.argmax(0)])
        np.testing.assert_allclose([float(v) for v in row.split("\t")[1:]], scores.numpy(), atol=6e-5)
    proc = wsss("infer", cwd, root, *schedule, "infer.pad_size=[40, 40]")
    assert proc.returncode == 2 and "larger than key 'infer.pad_size' [40, 40]" in proc.stderr


def test_sharded_infer_and_crf_equal_the_unsharded_run_byte_for_byte(pretrained, tmp_path):
    """Three infer shards and two CRF shards, gathered, against the unsharded runs: the same mask bytes,
    class scores and probabilities; a gather over a missing shard names it and writes nothing."""
    import shutil

    import numpy as np

    cwd, root = trained(pretrained)
    opts = (*SCHEDULE, "infer.scales=[1.0, 0.5]", "crf.workers=1")
    run = cwd / "results/toy/val"

    def files(folder: Path) -> dict:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.suffix in (".png", ".tsv")}

    for stage in ("infer", "crf"):
        assert wsss(stage, cwd, root, *opts).returncode == 0
    for stage in ("infer", "crf"):
        shutil.move(run / stage, tmp_path / stage)
    for i in (3, 1):
        proc = wsss("infer", cwd, root, *opts, extra=("--shard", f"{i}/3"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.endswith(f"infer: wrote 8 masks to results/toy/val/infer.shards/{i}-of-3\n")
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "3"))
    assert proc.returncode == 2 and "infer.shards: shard 2-of-3 missing; run `wsss infer --shard I/3`" in proc.stderr
    assert not (run / "infer").exists()
    assert wsss("infer", cwd, root, *opts, extra=("--shard", "2-of-3")).returncode == 0  # Snakemake's spelling
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "3"))
    assert proc.returncode == 0 and proc.stdout.endswith("infer: gathered 3 shards (24 masks) into results/toy/val/infer\n")
    assert files(run / "infer") == files(tmp_path / "infer") and len(files(run / "infer")) == 25
    for npz in sorted((tmp_path / "infer" / "probs").glob("*.npz")):
        with np.load(npz) as a, np.load(run / "infer" / "probs" / npz.name) as b:
            assert np.array_equal(a["probs"], b["probs"]) and np.array_equal(a["classes"], b["classes"])
    assert not (run / "infer.shards").exists()
    for i in (1, 2):
        assert wsss("crf", cwd, root, *opts, extra=("--shard", f"{i}/2")).returncode == 0
    proc = wsss("crf", cwd, root, *opts, extra=("--gather", "2"))
    assert proc.returncode == 0 and proc.stdout.endswith("crf: gathered 2 shards (24 masks) into results/toy/val/crf\n")
    assert files(run / "crf") == files(tmp_path / "crf") and len(files(run / "crf")) == 24
    assert yaml.safe_load((run / "crf" / "config.yaml").read_text()) == yaml.safe_load(
        (tmp_path / "crf" / "config.yaml").read_text())


def test_a_gather_refuses_a_shard_of_other_params_or_of_another_block(pretrained):
    import shutil

    cwd, root = trained(pretrained)
    opts = (*SCHEDULE, "infer.scales=[1.0]")
    shards = cwd / "results/toy/val/infer.shards"
    assert wsss("infer", cwd, root, *opts, extra=("--shard", "1/2")).returncode == 0
    assert wsss("infer", cwd, root, *opts, "infer.fp_cut=0.3", extra=("--shard", "2/2")).returncode == 0
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "2"))
    assert proc.returncode == 2 and "infer.shards/2-of-2" in proc.stderr and "infer.fp_cut" in proc.stderr
    assert wsss("infer", cwd, root, *opts, extra=("--shard", "1/3")).returncode == 0
    (shards / "2-of-2").rename(shards / "old")
    (shards / "1-of-3").rename(shards / "2-of-2")  # the first third where the second half belongs
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "2"))
    assert proc.returncode == 2 and "2-of-2: holds 8 images, its block has 12; missing" in proc.stderr
    for bad, message in (("0/3", "the shard index must be 1..3"), ("4/3", "the shard index must be 1..3"),
                         ("2", "expected I/N"), ("1/25", "25 shards for 24 images")):
        proc = wsss("infer", cwd, root, *opts, extra=("--shard", bad))
        assert proc.returncode == 2 and message in proc.stderr, (bad, proc.stderr[-500:])
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "0"))
    assert proc.returncode == 2 and "--gather 0: the number of shards must be at least 1" in proc.stderr
    shutil.rmtree(shards)

    # shards of a checkpoint that has changed since: refused
    model = cwd / "model-copy.pt"
    shutil.copy(cwd / "results/toy/train.pt", model)
    for i in (1, 2):
        assert wsss("infer", cwd, root, *opts, extra=("--shard", f"{i}/2", "--checkpoint", str(model))).returncode == 0
    state = torch.load(model, weights_only=False)
    state["step"] += 1
    torch.save(state, model)
    proc = wsss("infer", cwd, root, *opts, extra=("--gather", "2", "--checkpoint", str(model)))
    assert proc.returncode == 2 and "1-of-2: made from" in proc.stderr and "re-run the shards" in proc.stderr
    assert "gathered" not in proc.stdout
    shutil.rmtree(shards)

    # CRF shards of an inference output that has been replaced since: refused
    assert wsss("infer", cwd, root, *opts).returncode == 0
    for i in (1, 2):
        assert wsss("crf", cwd, root, *opts, "crf.workers=1", extra=("--shard", f"{i}/2")).returncode == 0
    record = cwd / "results/toy/val/infer/checkpoint.yaml"
    record.write_text(record.read_text().replace("sha256: ", "sha256: 0"))
    proc = wsss("crf", cwd, root, *opts, "crf.workers=1", extra=("--gather", "2"))
    assert proc.returncode == 2 and "crf.shards/1-of-2: refined another inference output" in proc.stderr
    shutil.rmtree(cwd / "results/toy/val/crf.shards")
    shutil.rmtree(cwd / "results/toy/val/infer")


def test_the_crf_stage_names_what_is_wrong_with_its_input(pretrained, tmp_path):
    import shutil

    import numpy as np

    cwd, root = trained(pretrained)
    schedule = [*SCHEDULE, "infer.scales=[1.0]", "crf.workers=1"]
    assert wsss("infer", cwd, root, *schedule).returncode == 0  # under these params, whatever ran before
    elsewhere = tmp_path / "results"
    probs_dir = elsewhere / "toy/val/infer/probs"
    shutil.copytree(cwd / "results/toy/val/infer", elsewhere / "toy/val/infer")
    first = sorted(probs_dir.glob("*.npz"))[0]
    with np.load(first) as f:
        ids, probs = f["classes"], f["probs"]
    np.savez(first, classes=ids, probs=probs[:, :-1])
    proc = wsss("crf", cwd, root, *schedule, extra=("--results", str(elsewhere)))
    assert proc.returncode == 2
    assert (f"wsss crf: error: probability file {probs_dir / first.stem}.npz is {probs[:, :-1].shape[1:]} but "
            f"image {first.stem}.jpg is {probs.shape[1:]}\n") in proc.stderr
    assert not (elsewhere / "toy/val/crf").exists()
    for path in probs_dir.glob("*.npz"):
        path.unlink()
    proc = wsss("crf", cwd, root, *schedule, extra=("--results", str(elsewhere)))
    assert proc.returncode == 2 and f"wsss crf: error: no probability files in {probs_dir}\n" in proc.stderr
    shutil.rmtree(elsewhere / "toy/val/infer")
    proc = wsss("crf", cwd, root, *schedule, extra=("--results", str(elsewhere)))
    assert proc.returncode == 2
    assert f"wsss crf: error: inference output missing: {probs_dir}; run `wsss infer` first\n" in proc.stderr


def test_clean_protocol_takes_the_classes_from_the_ground_truth(pretrained):
    import numpy as np
    from PIL import Image

    from wsss.data.palette import load_mask

    cwd, root = trained(pretrained)
    schedule = SCHEDULE
    proc = wsss("infer", cwd, root, *schedule, "infer.presence=gt", "infer.scales=[1.0]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in sorted((cwd / "results/toy/val/infer/probs").glob("*.npz")):
        truth = load_mask(root / "toy" / "SegmentationClass" / f"{path.stem}.png")
        assert set(np.load(path)["classes"].tolist()) == {0} | (set(np.unique(truth).tolist()) - {255})
        predicted = set(np.unique(np.asarray(Image.open(cwd / "results/toy/val/infer/masks" / f"{path.stem}.png"))).tolist())
        assert predicted <= set(np.unique(truth).tolist())


def test_train_refuses_a_checkpoint_another_stage_wrote(pretrained, tmp_path):
    cwd, root = trained(pretrained)
    schedule = SCHEDULE
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
    assert "resuming pretrain from" in again.stdout and f"at epoch {saved}" in again.stdout
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
