"""A stage refuses an input made under other values of the keys its producer depends on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from wsss import config, provenance
from wsss.errors import WsssError

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.toy.min_size=48", "data.toy.max_size=56", "data.toy.n_val=8", "presets.toy.train.batch_size=8",
        "presets.toy.train.crop_size=32"]


def wsss(stage: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`wsss <stage>` in ``cwd`` (its params.yaml) on the tiny dataset, in this process."""
    return run_cli([stage, *[a for o in TINY + list(overrides) for a in ("-S", o)]], cwd)


def test_differences_name_every_leaf_key():
    cfg = config.load([REPO / "params.yaml"])
    other = config.load([REPO / "params.yaml"], ["data.toy.n_train=64", "data.toy.seed=7", "data.root=elsewhere"])
    diffs = provenance.differences(other, cfg, "prepare")
    assert diffs == ["data.toy.n_train: input made with 64, params give 2000", "data.toy.seed: input made with 7, params give 0"]
    assert provenance.differences(cfg, cfg, "train") == []
    with pytest.raises(WsssError, match=r"x\.pt was made by `wsss pretrain` under other parameters \(model\.psi"):
        provenance.check_input(config.load([REPO / "params.yaml"], ["model.psi=0.5"]), cfg, "pretrain", "x.pt")


def test_param_slice_is_what_the_engines_compare():
    cfg = config.load([REPO / "params.yaml"])
    expected = {f"crf.{k}": v for k, v in cfg["crf"].items() if k != "workers"}  # how many processes: no result
    assert provenance.param_slice(cfg, "crf") == {"data.name": "toy", "data.eval_split": "val", **expected}
    with pytest.raises(KeyError, match="not a stage"):
        provenance.stage_keys("deploy")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("provenance")
    (cwd / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = wsss("prepare", cwd, "data.toy.n_train=32")
    assert proc.returncode == 0, proc.stderr
    return cwd


def test_pretrain_refuses_a_dataset_prepared_under_other_keys(prepared):
    proc = wsss("pretrain", prepared, "data.toy.n_train=64", "data.toy.seed=7")
    assert proc.returncode == 2
    assert "data.toy.n_train: input made with 32, params give 64" in proc.stderr
    assert "data.toy.seed: input made with 0, params give 7" in proc.stderr
    assert "`wsss prepare`" in proc.stderr
    assert not (prepared / "results" / "toy" / "pretrain.yaml").exists(), "nothing is written under the wrong record"


def test_infer_refuses_a_split_prepared_with_another_size(prepared):
    proc = wsss("infer", prepared, "data.toy.n_train=32", "data.toy.n_val=3")
    assert proc.returncode == 2
    assert "data.toy.n_val: input made with 8, params give 3" in proc.stderr
    assert not (prepared / "results" / "toy" / "val" / "infer").exists()


def test_crf_and_evaluate_refuse_inference_made_under_other_infer_keys(prepared):
    # the module's other tests share `prepared` and expect no inference there: it is removed after
    infer_dir = prepared / "results" / "toy" / "val" / "infer"
    try:
        (infer_dir / "probs").mkdir(parents=True)
        (infer_dir / "masks").mkdir()
        made = config.load([prepared / "params.yaml"], TINY + ["data.toy.n_train=32", "infer.fp_cut=0.3"])
        (infer_dir / "config.yaml").write_text(__import__("yaml").safe_dump(made))
        proc = wsss("crf", prepared, "data.toy.n_train=32")
        assert proc.returncode == 2 and "infer.fp_cut: input made with 0.3, params give 0.1" in proc.stderr
        proc = wsss("evaluate", prepared, "data.toy.n_train=32")
        assert proc.returncode == 2 and "infer.fp_cut" in proc.stderr
    finally:
        shutil.rmtree(infer_dir, ignore_errors=True)


def test_keys_that_only_schedule_work_are_not_compared():
    cfg = config.load([REPO / "params.yaml"])
    other = config.load([REPO / "params.yaml"], ["crf.workers=1", "infer.chunk=8", "infer.device=cpu"])
    keys = set(provenance.keys_through("crf"))
    assert "infer" in keys and "crf.iters" in keys  # infer's whole section, the scheduling keys included
    assert "crf.workers" not in keys  # not declared: the engines do not re-run the stage for it either
    assert provenance.differences(other, cfg, "crf") == []
    assert provenance.differences(config.load([REPO / "params.yaml"], ["crf.iters=3"]), cfg, "crf") != []


def test_a_record_is_compared_on_every_key_that_went_into_it():
    cfg = config.load([REPO / "params.yaml"])
    retrained = config.load([REPO / "params.yaml"], ["train.seed=1"])
    assert provenance.differences(retrained, cfg, "infer") == ["train.seed: input made with 1, params give 0"]
    assert provenance.differences(retrained, cfg, "prepare") == []
    other_data = config.load([REPO / "params.yaml"], ["data.toy.n_val=9"])
    assert provenance.differences(other_data, cfg, "crf") == ["data.toy.n_val: input made with 9, params give 500"]


def test_the_toy_knobs_do_not_make_another_dataset():
    voc = config.load([REPO / "params.yaml"], ["data.name=voc"])
    knobs = config.load([REPO / "params.yaml"], ["data.name=voc", "data.toy.n_train=5"])
    assert provenance.differences(knobs, voc, "prepare") == []


def test_prepared_json_floats_are_read_as_written(tmp_path):
    cfg = config.load([REPO / "params.yaml"], ["data.toy.occlusion=1e-5"])
    (tmp_path / "prepared.json").write_text(__import__("json").dumps({"data": cfg["data"]}))
    provenance.check_dataset(tmp_path, cfg)  # 1e-05 stays a float
