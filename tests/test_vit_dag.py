"""The ViT single-stage network and ACR through the whole DAG on the (reduced) embedded dataset, with
Snakemake (the committed overlays) and with `dvc exp run -S`."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from test_engines import BIN, make_copy, sh

pytestmark = pytest.mark.slow
SINGLE = "results/toy_val_miou.csv"


def check_run(run, acr: bool) -> None:
    log = pd.read_csv(run / "results/toy/train_log.tsv", sep="\t")
    assert ("acr.cls_attention" in log.columns) == acr
    if acr:
        assert (log["acr.affinity"] > 0).all() and (log["acr.cls_flip"] > 0).all()
    trained = yaml.safe_load((run / "results/toy/train.yaml").read_text())
    assert trained["model"]["backbone"] == "vit_toy"
    infer = yaml.safe_load((run / "results/toy/val/infer/config.yaml").read_text())
    assert infer["infer"]["localisation"] == ("acr" if acr else "head")
    metrics = json.loads((run / "results/metrics/toy_val.json").read_text())
    assert metrics["images"] == 12 and 0.0 <= metrics["miou_crf"] <= 1.0


def test_snakemake_runs_the_vit_and_acr_re_runs_what_it_changes(tmp_path):
    run = make_copy(tmp_path / "snake")
    base = [str(BIN / "snakemake"), "--cores", "2", SINGLE, "--configfile", "workflow/overlays/vit_toy.yaml"]
    sh(base, run)
    check_run(run, acr=False)
    planned = sh([*base, "workflow/overlays/acr.yaml", "-n"], run)  # ACR's own run is the DVC test's
    ran = set(re.findall(r"^(?:local)?rule (\w+):", planned.stdout, flags=re.M))
    assert ran == {"pretrain", "train", "infer", "crf", "evaluate"}  # the same data: prepare stays


def test_dvc_exp_run_trains_acr_on_the_vit(tmp_path):
    run = make_copy(tmp_path / "dvc")
    sh([str(BIN / "dvc"), "exp", "run", "evaluate", "-n", "vit-acr", "-S", "presets.toy.model.backbone=vit_toy",
        "-S", "plugins.acr.enabled=true", "-S", "infer.localisation=acr"], run, timeout=1800)
    check_run(run, acr=True)
    shown = json.loads(sh([str(BIN / "dvc"), "exp", "show", "--json"], run).stdout)
    text = json.dumps(shown)
    assert "vit-acr" in text and "miou_crf" in text
