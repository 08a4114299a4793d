"""The ablation benchmark: its design file, the supervised upper bound, the report's checks, and a
reduced end-to-end run of the Snakemake target (every variant, two seeds, on a tiny dataset)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_engines import BIN, REPO, make_copy, sh
from test_training import wsss
from wsss.benchmark import design as bench_design
from wsss.benchmark import probes, report
from wsss.benchmark.report import checks, summarise
from wsss.errors import WsssError

PARAMS = [str(REPO / "params.yaml")]

# The committed design, shrunk to seconds per job: same variants, inference modes and code paths.
TINY = {
    "data.root": "data/benchmark", "data.toy.n_train": 32, "data.toy.n_val": 6, "data.toy.min_size": 64,
    "data.toy.max_size": 72, "train.batch_size": 8, "train.crop_size": 64, "train.epochs": 2, "train.cls_epochs": 1,
}


def write_design(path: Path, **changes) -> Path:
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    if "variants" in changes and "probes" not in changes:
        del raw["probes"]  # they name the committed variants
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_committed_design_resolves_for_every_run():
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml", PARAMS)
    assert len(design.seeds) >= 3
    assert {"cam", "ssss", "fca_nosrm", "fca", "sf2", "wsfcn", "supervised"} <= set(design.variants)
    cfg = design.config(PARAMS, "ssss", "ss", 2)
    assert (cfg["model"]["fca"], cfg["model"]["sf2"], cfg["train"]["seed"]) == (False, False, 2)
    assert cfg["infer"]["scales"] == [1.0] and cfg["infer"]["flip"] is False
    assert design.config(PARAMS, "fca_nosrm")["model"]["fca_srm"] is False
    assert design.config(PARAMS, "cam")["model"]["method"] == "cam"
    assert design.variants["supervised"].trainer == "supervise"
    weights = design.config(PARAMS, "wsfcn", "ms", 1)["model"]
    assert weights["pretrained"] is True and weights["weights"] == design.backbone_checkpoint(1), \
        "every run starts from its seed's shared backbone"
    backbone = design.backbone_config(PARAMS, 1)
    assert backbone["model"]["method"] == "cam" and backbone["train"]["seed"] == 1
    assert backbone["model"]["pretrained"] is False, "the shared backbone itself starts from scratch"
    assert {"cam", "ssss", "wsfcn", "supervised"} <= set(design.probe_variants)
    single = design.config(PARAMS, "wsfcn", "x2", 0)["infer"]
    assert single["scales"] == [2.0] and single["flip"] is False, "a probe's params apply like a mode's"
    own = design.config(PARAMS, "ssss", "ss_ownbg", 0)["infer"]
    assert (own["background"], own["bg_power"], own["scales"]) == ("power", 1.0, [1.0])


@pytest.mark.parametrize("change, message", [
    ({"seeds": [0, 0]}, "seeds"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"upper_bound": "wsfcn"}, "train: supervise"),
    ({"reference": "nope"}, "'reference'"),
    ({"variants": {"x": {"params": {"model.fcaa": False}}}, "reference": "x", "upper_bound": "x"}, "train: supervise"),
    ({"variants": {"bad name": {}}}, "folder name"),
    ({"backbone": {"param": {"train.epochs": 1}}}, "key 'backbone'"),
    ({"backbone": {"params": {"train.epochz": 1}}}, "backbone"),
    ({"variants": {"backbone": {}, "supervised": {"train": "supervise"}}, "reference": "backbone"}, "taken by the shared backbone"),
    ({"probes": {"variants": ["wsfcn"]}}, "key 'probes'"),
    ({"probes": {"variants": ["nope"], "inference": {"p": {}}}}, r"'probes.variants': 'nope' is not a variant"),
    ({"probes": {"variants": ["wsfcn"], "inference": {"ss": {}}}}, "probe 'ss' is already an inference mode"),
    ({"probes": {"variants": ["wsfcn"], "inference": {"p": {"params": {"infer.scalez": [1.0]}}}}}, r"probe 'p'.*infer\.scalez"),
])
def test_a_bad_design_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(WsssError, match=message):
        bench_design.load(write_design(tmp_path / "design.yaml", **change), PARAMS)


def test_an_unknown_parameter_in_a_variant_names_the_variant_and_key(tmp_path):
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    raw["variants"]["fca"]["params"]["model.fca_srn"] = False
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(WsssError, match=r"variant 'fca'.*model\.fca_srn"):
        bench_design.load(tmp_path / "d.yaml", PARAMS)


def test_the_report_job_time_leaves_out_the_probes(tmp_path):
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml")
    folder = tmp_path / "wsfcn" / "s0" / "benchmarks"
    folder.mkdir(parents=True)
    for name, seconds in (("train", 30.0), ("ss_infer", 10.0), ("x2_infer", 100.0), ("ss_ownbg_crf", 50.0)):
        (folder / f"{name}.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")
    assert report.job_time(design, tmp_path) == (pytest.approx(40.0), 2)


def test_probes_without_a_probes_entry_name_the_design(tmp_path):
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    del raw["probes"]
    design = tmp_path / "design.yaml"
    design.write_text(yaml.safe_dump(raw))
    args = argparse.Namespace(params=PARAMS, design=str(design), runs=str(tmp_path / "runs"), out=str(tmp_path / "out"))
    with pytest.raises(WsssError, match=f"{design}: no 'probes' entry"):
        probes.run({}, args)
    assert not (tmp_path / "out").exists()


def _summary(values: dict[tuple[str, str, bool], float]) -> pd.DataFrame:
    rows = [{"variant": v, "seed": s, "mode": m, "crf": c, "miou": x + 0.01 * s, "pixel_acc": 0.5}
            for (v, m, c), x in values.items() for s in (0, 1)]
    return summarise(pd.DataFrame(rows))


def test_the_report_checks_find_a_broken_ordering():
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml")
    good = {(v, m, c): base + (0.05 if m == "ms" else 0) + (0.1 if c else 0)
            for v, base in {"cam": 0.3, "ssss": 0.4, "fca_nosrm": 0.4, "fca": 0.42, "sf2": 0.42, "wsfcn": 0.45,
                            "supervised": 0.6}.items() for m in ("ss", "ms") for c in (False, True)}
    found = checks(design, _summary(good))
    assert all(ok for _, ok, _ in found), found
    assert "0.605 / 0.755" in found[-1][2]  # WS-FCN ms + CRF over the upper bound's (means of 2 seeds)
    bad = dict(good)
    bad[("cam", "ss", False)] = 0.5  # CAM above SSSS in one setting
    bad[("wsfcn", "ms", True)] = 0.5  # 0.505 / 0.755 < 75 %
    flags = {claim: ok for claim, ok, _ in checks(design, _summary(bad))}
    assert [ok for claim, ok in flags.items() if claim.endswith("(single scale)")] == [False]
    assert not list(flags.values())[-1]


# ---------------------------------------------------------------- the upper bound's own training mode

def test_supervise_continues_from_pretrain_on_masks_and_infer_runs_it(toy_root, tmp_path):
    runs = tmp_path / "out"
    schedule = ["presets.toy.train.cls_epochs=1", "presets.toy.train.epochs=2"]
    proc = wsss("supervise", tmp_path, toy_root.parent, *schedule, extra=("--results", str(runs)))
    assert proc.returncode == 2 and "pretrain.pt" in proc.stderr, "supervise starts from the pretrain checkpoint"
    for stage in ("pretrain", "supervise"):
        proc = wsss(stage, tmp_path, toy_root.parent, *schedule, extra=("--results", str(runs)))
        assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(runs / "toy" / "supervise.pt", map_location="cpu", weights_only=False)
    assert state["supervised"] and state["epoch"] == 2
    rows = pd.read_csv(runs / "toy" / "supervise_log.tsv", sep="\t")
    assert (rows["stage"] == "supervise").all() and (rows["epoch"] == 1).all()
    assert (rows["seg"] > 0).all() and rows["pseudo_valid"].isna().all(), "cross-entropy on masks, no pseudo-labels"
    assert not (tmp_path / "results").exists(), "--results moves every output"
    proc = wsss("infer", tmp_path, toy_root.parent, *schedule, "infer.scales=[1.0]",
                extra=("--results", str(runs / "ms"), "--checkpoint", str(runs / "toy" / "supervise.pt")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((runs / "ms" / "toy" / "val" / "infer" / "masks").glob("*.png"))) == 24


def test_infer_names_a_missing_checkpoint(toy_root, tmp_path):
    proc = wsss("infer", tmp_path, toy_root.parent, extra=("--checkpoint", str(tmp_path / "none.pt")))
    assert proc.returncode == 2 and "none.pt" in proc.stderr


# ---------------------------------------------------------------- reduced end-to-end run
# The committed design with two seeds, four of its variants and a tiny dataset and schedule.

@pytest.mark.slow
def test_reduced_benchmark_runs_end_to_end(tmp_path):
    repo = make_copy(tmp_path / "repo", reduced=False)
    raw = yaml.safe_load((repo / "workflow" / "benchmark.yaml").read_text())
    raw["seeds"], raw["qualitative"] = [0, 1], 2
    raw["variants"] = {k: v for k, v in raw["variants"].items() if k in ("cam", "ssss", "wsfcn", "supervised")}
    raw["params"] = dict(TINY)
    raw["inference"]["ms"]["params"] = {"infer.scales": [1.0, 0.5]}
    raw["probes"] = {"variants": ["wsfcn"], "inference": {k: raw["probes"]["inference"][k] for k in ("x2", "ss_ownbg")}}
    (repo / "workflow" / "benchmark.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh([str(BIN / "snakemake"), "--cores", "2", "results/benchmark/report.md"], repo, timeout=1500)

    out = repo / "results" / "benchmark"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 * 2 * 2 * 2  # variants x seeds x modes x (raw, CRF)
    assert runs["miou"].between(0, 1).all() and (runs["images"] == 6).all()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 * 2 * 2 and (summary["seeds"] == 2).all()
    ws = runs[(runs["variant"] == "wsfcn") & (runs["mode"] == "ms") & runs["crf"]]
    metrics = json.loads((out / "runs" / "wsfcn" / "s1" / "ms" / "metrics" / "toy_val.json").read_text())
    assert ws[ws["seed"] == 1]["miou"].iloc[0] == pytest.approx(metrics["miou_crf"], abs=1e-6)
    weights = [torch.load(out / "runs" / "wsfcn" / f"s{seed}" / "toy" / "train.pt", map_location="cpu",
                          weights_only=False)["model"] for seed in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "seeds give different runs"
    for seed in (0, 1):
        backbone = out / "runs" / "backbone" / f"s{seed}" / "toy" / "pretrain.pt"
        pre = torch.load(out / "runs" / "ssss" / f"s{seed}" / "toy" / "pretrain.pt", map_location="cpu", weights_only=False)
        assert backbone.is_file() and pre["signature"]["model"]["weights"] == str(backbone.relative_to(repo))
    report = (out / "report.md").read_text()
    for label in ("CAM", "SSSS (ASPP + GCI)", "WS-FCN", "fully supervised", "data.toy.part_contrast"):
        assert label in report
    claims = report.split("| claim | holds | numbers |")[1].split("## Figures")[0]
    assert claims.count("| yes |") + claims.count("| **no** |") == 4 + 2 + 2 + 1
    assert "| 147.34 |" in report, "WS-FCN's VOC-size parameter count (Table I)"
    for name in ("miou.png", "per_class.png", "examples.png"):
        assert (out / name).stat().st_size > 5000
    # the main DAG's outputs are untouched, and a second call has nothing to do
    assert not (repo / "results" / "toy").exists()
    dry = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/benchmark/report.md"], repo).stdout
    assert "Nothing to be done" in dry

    # the probes: more inference modes on the trained models, no training, the main report left as it is
    trained = (out / "runs" / "wsfcn" / "s0" / "toy" / "train.pt").stat().st_mtime_ns
    sh([str(BIN / "snakemake"), "--cores", "2", "results/benchmark/probes.md"], repo, timeout=600)
    assert (out / "runs" / "wsfcn" / "s0" / "toy" / "train.pt").stat().st_mtime_ns == trained
    probes = pd.read_csv(out / "probes.csv")
    assert len(probes) == 1 * 2 * 4 * 2  # probe variants x seeds x (main modes + probes) x (raw, CRF)
    assert set(probes["mode"]) == {"ss", "ms", "x2", "ss_ownbg"} and probes["background_iou"].between(0, 1).all()
    own = json.loads((out / "runs" / "wsfcn" / "s0" / "ss_ownbg" / "metrics" / "toy_val.json").read_text())
    row = probes[(probes["mode"] == "ss_ownbg") & (probes["seed"] == 0) & ~probes["crf"]]
    assert row["miou"].iloc[0] == pytest.approx(own["miou"], abs=1e-6)
    main = probes[(probes["mode"] == "ms") & probes["crf"] & (probes["seed"] == 1)]["miou"].iloc[0]
    assert main == pytest.approx(ws[ws["seed"] == 1]["miou"].iloc[0], abs=1e-6), "main modes are read, not re-run"
    text = (out / "probes.md").read_text()
    assert "scale 2.0" in text and "single scale, own background" in text and "infer.bg_power=1.0" in text
    assert (out / "probes.png").stat().st_size > 5000
    assert not (out / "runs" / "ssss" / "s0" / "x2").exists(), "probes run on probes.variants only"
    dry = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/benchmark/report.md"], repo).stdout
    assert "Nothing to be done" in dry
