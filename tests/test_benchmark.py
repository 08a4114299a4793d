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
from wsss.benchmark import paired, probes, report
from wsss.benchmark.report import checks, summarise
from wsss.errors import WsssError
from wsss.paths import for_config

PARAMS = [str(REPO / "params.yaml")]

# The committed design, shrunk to seconds per job: same variants, inference modes and code paths.
TINY = {
    "data.root": "data/benchmark", "data.toy.n_train": 32, "data.toy.n_val": 6, "data.toy.min_size": 64,
    "data.toy.max_size": 72, "train.batch_size": 8, "train.crop_size": 64, "train.epochs": 2, "train.cls_epochs": 1,
}


def write_design(path: Path, **changes) -> Path:
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    if "variants" in changes:  # the probes and the paired variants name the committed variants
        for key in ("probes", "paired", "two_stage", "plugins"):
            if key not in changes:
                del raw[key]
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
    ({"variants": {"backbone": {}, "supervised": {"train": "supervise"}}, "reference": "backbone"}, "taken by the benchmark's own runs"),
    ({"probes": {"variants": ["wsfcn"]}}, "key 'probes'"),
    ({"probes": {"variants": ["nope"], "inference": {"p": {}}}}, r"'probes.variants': 'nope' is not a variant"),
    ({"probes": {"variants": ["wsfcn"], "inference": {"ss": {}}}}, "probe 'ss' is already an inference mode"),
    ({"probes": {"variants": ["wsfcn"], "inference": {"p": {"params": {"infer.scalez": [1.0]}}}}}, r"probe 'p'.*infer\.scalez"),
    ({"seeds": [0, True]}, "key 'seeds'"),
    ({"paired": ["nope"]}, r"key 'paired': 'nope' is not a variant"),
    ({"paired": "rtc"}, r"key 'paired': expected a list"),
    ({"paired": ["wsfcn"]}, r"key 'paired': 'wsfcn' is the reference"),
    ({"two_stage": {"mode": "ms"}}, r"key 'two_stage': expected a mapping with 'variants'"),
    ({"two_stage": {"variants": ["supervised"]}}, r"'two_stage.variants': 'supervised' is not a weakly supervised"),
    ({"two_stage": {"variants": ["wsfcn"], "mode": "x"}}, r"'two_stage.mode': 'x' is not an inference mode"),
    ({"two_stage": {"variants": ["wsfcn"], "plateau": [400, 200]}}, r"'two_stage.plateau': expected increasing"),
    ({"two_stage": {"variants": ["wsfcn"], "params": {"train.lr": 0.1}}}, r"'two_stage.params.train.lr': only retrain"),
    ({"two_stage": {"variants": ["wsfcn"], "params": {"retrain.network": "unet"}}}, r"two_stage run 'wsfcn/s0/two_stage'.*retrain.network"),
    ({"variants": {"ceiling": {}, "supervised": {"train": "supervise"}}, "reference": "ceiling"}, "taken by the benchmark's own runs"),
    ({"inference": {"two_stage": {}}}, "inference mode name 'two_stage' is taken"),
    ({"two_stage": {"variants": ["wsfcn"], "plateau": [200, 1500]}}, r"'two_stage.plateau': 1500 is the ceiling's own budget"),
    ({"plugins": {"x": {"baseline": "nope"}}}, r"key 'plugins.x.baseline': 'nope' is not another variant"),
    ({"plugins": {"x": {"baseline": "x"}}}, r"key 'plugins.x.baseline': 'x' is not another variant"),
    ({"plugins": {"wsfcn": {"baseline": "cam"}}}, r"key 'plugins.wsfcn': 'wsfcn' is already a variant"),
    ({"plugins": {"x": {"backbone": "vitt", "baseline": "wsfcn"}}}, r"key 'plugins.x.backbone': 'vitt' is not in 'backbones' \(vit\)"),
    ({"plugins": {"x": {"seeds": [0], "baseline": "wsfcn"}}}, r"'plugins.x.baseline': 'x' shares 1 seed\(s\) with 'wsfcn'"),
    ({"plugins": {"x": {"params": {"plugins.acr.enabled": 1}, "baseline": "wsfcn"}}}, r"variant 'x'.*plugins.acr.enabled"),
    ({"plugins": {"backbone_vit": {"baseline": "wsfcn"}}}, "taken by the benchmark's own runs"),
    ({"backbones": {"vit": {"params": {"model.backbone": "vit_huge"}}}}, r"backbones.vit: .*model.backbone"),
    ({"backbones": {"v t": {}}}, r"key 'backbones.v t': a name must be"),
    ({"backbones": ["vit"]}, r"key 'backbones': expected a mapping"),
    ({"paired": ["supportnet"]}, r"key 'paired': 'supportnet' is not a variant"),
])
def test_a_bad_design_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(WsssError, match=message):
        bench_design.load(write_design(tmp_path / "design.yaml", **change), PARAMS)


def test_a_variant_runs_with_its_own_seeds_and_pairs_on_the_shared_ones(tmp_path):
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    raw["variants"]["rtc"]["seeds"] = [1, 3, 4]
    raw["variants"]["wsfcn"]["seeds"] = [0, 1, 3]
    design = bench_design.load(write_design(tmp_path / "d.yaml", **raw), PARAMS)
    assert design.paired_seeds("rtc") == [1, 3]
    assert [s for v, s in design.runs() if v == "rtc"] == [1, 3, 4]
    assert design.runs(["wsfcn", "cam"]) == [("wsfcn", 0), ("wsfcn", 1), ("wsfcn", 3), ("cam", 0), ("cam", 1), ("cam", 2)]
    raw["variants"]["rtc"]["seeds"] = [0, 7]
    with pytest.raises(WsssError, match=r"variants\.rtc\.seeds.*\[7\] not among"):
        bench_design.load(write_design(tmp_path / "d.yaml", **raw), PARAMS)
    raw["variants"]["rtc"]["seeds"] = [0, 2]
    with pytest.raises(WsssError, match=r"'rtc' shares 1 seed\(s\) with the reference 'wsfcn'"):
        bench_design.load(write_design(tmp_path / "d.yaml", **raw), PARAMS)


def test_the_committed_design_pairs_each_plugin_with_ws_fcn_over_five_seeds():
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml", PARAMS)
    assert design.reference == "wsfcn" and design.paired == ["rtc", "fbr"]
    for name in design.paired:
        assert len(design.paired_seeds(name)) >= 5
    rtc, fbr = design.config(PARAMS, "rtc", "ms", 3), design.config(PARAMS, "fbr", "ms", 3)
    assert rtc["plugins"]["rtc"]["enabled"] and not rtc["plugins"]["fbr"]["enabled"]
    assert fbr["plugins"]["fbr"]["enabled"] and not fbr["plugins"]["rtc"]["enabled"]
    assert rtc["model"]["weights"] == fbr["model"]["weights"] == design.backbone_checkpoint(3), "same shared backbone"
    ref = design.config(PARAMS, "wsfcn", "ms", 3)
    for section in ("model", "train", "infer", "crf", "data"):
        assert ref[section] == fbr[section], f"FBR differs from WS-FCN in {section}"


def test_the_teacher_and_transformer_plugins_run_on_request_each_from_its_own_backbone():
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml", PARAMS)
    assert design.plugin_pairs == [("supportnet", "wsfcn"), ("vit", "wsfcn"), ("acr", "vit")]
    assert design.plugin_report_variants == ["wsfcn", "supportnet", "vit", "acr"]
    assert not {"supportnet", "vit", "acr"} & set(design.ladder), "the main table does not wait for them"
    assert not {v for v, _ in design.runs()} & {"supportnet", "vit", "acr"}
    assert design.backbone_folders == ["backbone", "backbone_vit"]
    vit_backbone = design.backbone_config(PARAMS, 2, "backbone_vit")
    assert (vit_backbone["model"]["backbone"], vit_backbone["model"]["method"]) == ("vit_toy", "cam")
    assert vit_backbone["train"] == design.backbone_config(PARAMS, 2)["train"], "trained as the CNN's backbone is"
    support, vit, acr = (design.config(PARAMS, v, "ms", 2) for v in ("supportnet", "vit", "acr"))
    assert support["plugins"]["supportnet"]["enabled"] and support["model"]["weights"] == design.backbone_checkpoint(2)
    assert vit["model"]["weights"] == acr["model"]["weights"] == design.backbone_checkpoint(2, folder="backbone_vit")
    assert (acr["plugins"]["acr"]["enabled"], acr["infer"]["localisation"]) == (True, "head"), "scored as its baseline"
    assert (vit["plugins"]["acr"]["enabled"], vit["infer"]["localisation"]) == (False, "head")
    ref = design.config(PARAMS, "wsfcn", "ms", 2)
    for section in ("train", "crf", "data"):
        assert ref[section] == support[section] == vit[section] == acr[section], section
    with pytest.raises(WsssError, match="'backbone_cnn' is not a shared backbone of the design"):
        design.backbone_params("backbone_cnn")


def test_paired_differences_pair_runs_by_seed_with_a_t_interval():
    mean, low, high = paired.interval([0.02, 0.03, 0.04])
    half = 4.302653 * 0.01 / 3 ** 0.5  # t(0.975, 2) x sample std / sqrt(n) = 0.0248
    assert (mean, low, high) == pytest.approx((0.03, 0.03 - half, 0.03 + half), abs=1e-6)
    assert paired.verdict(low, high) == "better" and paired.verdict(-0.01, 0.02) == "no detectable difference"
    assert paired.verdict(-0.03, -0.01) == "worse" and paired.verdict(*paired.interval([0.5])[1:]) == "one seed"
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml")
    # the reference's seeds 0-4 rise with the seed; RTC is 0.1 above it on every seed but seed 2 (0.1 below):
    # a seed-by-seed pairing sees that, a comparison of the means over different seed orders would not
    ref = {s: 0.3 + 0.05 * s for s in range(5)}
    rows = [{"variant": "wsfcn", "seed": s, "mode": "ms", "crf": True, "miou": x} for s, x in ref.items()]
    rows += [{"variant": "rtc", "seed": s, "mode": "ms", "crf": True, "miou": x + (-0.1 if s == 2 else 0.1)}
             for s, x in ref.items()]
    rows += [{"variant": "fbr", "seed": s, "mode": "ms", "crf": True, "miou": ref[s]} for s in (4, 3, 2, 1, 0)]
    out = paired.differences(design, pd.DataFrame(rows), "miou", ["mode", "crf"]).set_index("variant")
    assert out.loc["rtc", "per_seed"] == "+0.100 +0.100 -0.100 +0.100 +0.100"
    assert out.loc["rtc", "mean"] == pytest.approx(0.06) and out.loc["rtc", "seeds"] == 5
    assert out.loc["rtc", "low"] < 0 < out.loc["rtc", "high"]
    assert out.loc["fbr", "mean"] == pytest.approx(0.0, abs=1e-12) and out.loc["fbr", "verdict"] == "no detectable difference"


def test_paired_costs_come_from_the_train_curve_and_the_snakemake_benchmark_file(tmp_path):
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml")
    cfg = bench_design.params.load(PARAMS, ["train.batch_size=16"])
    for variant, seed in design.runs(["wsfcn", "rtc", "fbr"]):
        run = tmp_path / variant / f"s{seed}"
        (run / "toy").mkdir(parents=True)
        (run / "benchmarks").mkdir()
        speed = {"wsfcn": 32.0, "rtc": 16.0, "fbr": 20.0}[variant]  # images per second
        rss = {"wsfcn": 1000.0, "rtc": 1500.0, "fbr": 1100.0 + seed}[variant]
        (run / "toy" / "train_log.tsv").write_text(
            "stage\tepoch\tstep\timg_per_s\npretrain\t1\t10\t1.0\n"  # the pretrain rows are not the step time
            + "".join(f"train\t2\t{10 * i}\t{speed if i != 3 else 1.0}\n" for i in range(1, 6)))  # one slow row
        (run / "benchmarks" / "train.tsv").write_text(f"s\th:m:s\tmax_rss\n100.0\t0:01:40\t{rss}\n")
    cost = paired.costs(design, cfg, tmp_path)
    assert len(cost) == 15
    ratios = paired.cost_ratios(design, cost).set_index("variant")
    assert ratios.loc["rtc", "step_s_ratio"] == pytest.approx(2.0) and ratios.loc["fbr", "step_s_ratio"] == pytest.approx(1.6)
    assert ratios.loc["rtc", "step_s_ref"] == pytest.approx(0.5), "median: the one slow row does not count"
    assert ratios.loc["rtc", "max_rss_mb_ratio"] == pytest.approx(1.5)
    assert (ratios.loc["fbr", "max_rss_mb_ratio_min"], ratios.loc["fbr", "max_rss_mb_ratio_max"]) == pytest.approx((1.1, 1.104))
    (tmp_path / "fbr" / "s3" / "benchmarks" / "train.tsv").unlink()
    with pytest.raises(WsssError, match=r"fbr/s3/benchmarks/train\.tsv"):
        paired.costs(design, cfg, tmp_path)


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
                            "rtc": 0.46, "fbr": 0.44, "supervised": 0.6}.items() for m in ("ss", "ms") for c in (False, True)}
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
# The committed design with two seeds, four of its variants (CAM and the upper bound on one) and a tiny dataset
# and schedule.

@pytest.mark.slow
def test_reduced_benchmark_runs_end_to_end(tmp_path):
    repo = make_copy(tmp_path / "repo", reduced=False)
    raw = yaml.safe_load((repo / "workflow" / "benchmark.yaml").read_text())
    raw["seeds"], raw["qualitative"] = [0, 1], 2
    del raw["plugins"], raw["backbones"]  # on request only (results/benchmark/plugins.md): not part of report.md
    raw["variants"] = {k: v for k, v in raw["variants"].items() if k in ("cam", "wsfcn", "rtc", "supervised")}
    raw["paired"] = ["rtc"]
    for spec in raw["variants"].values():
        spec.pop("seeds", None)
    raw["variants"]["cam"]["seeds"] = raw["variants"]["supervised"]["seeds"] = [0]
    raw["params"] = {**TINY, "train.log_every": 1}  # 4 steps an epoch: a curve row for each
    raw["inference"]["ms"]["params"] = {"infer.scales": [1.0, 0.5]}
    raw["probes"] = {"variants": ["wsfcn"], "inference": {k: raw["probes"]["inference"][k] for k in ("x2", "ss_ownbg")}}
    raw["two_stage"] = {"variants": ["wsfcn"], "mode": "ms", "ceiling_seeds": [0], "plateau": [3],
                        "params": {"retrain.iterations": 6, "retrain.batch_size": 8, "retrain.crop_size": 48}}
    (repo / "workflow" / "benchmark.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh([str(BIN / "snakemake"), "--cores", "2", "results/benchmark/report.md"], repo, timeout=1500)

    out = repo / "results" / "benchmark"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == (2 * 1 + 2 * 2) * 2 * 2  # (CAM and the upper bound, 1 seed; 2 variants, 2 seeds) x modes x (raw, CRF)
    assert runs["miou"].between(0, 1).all() and (runs["images"] == 6).all()
    summary = pd.read_csv(out / "summary.csv")
    one = summary["variant"].isin(["cam", "supervised"])
    assert len(summary) == 4 * 2 * 2 and (summary[~one]["seeds"] == 2).all() and (summary[one]["seeds"] == 1).all()
    assert not (out / "runs" / "cam" / "s1").exists() and not (out / "runs" / "supervised" / "s1").exists()
    ws = runs[(runs["variant"] == "wsfcn") & (runs["mode"] == "ms") & runs["crf"]]
    metrics = json.loads((out / "runs" / "wsfcn" / "s1" / "ms" / "metrics" / "toy_val.json").read_text())
    assert ws[ws["seed"] == 1]["miou"].iloc[0] == pytest.approx(metrics["miou_crf"], abs=1e-6)
    weights = [torch.load(out / "runs" / "wsfcn" / f"s{seed}" / "toy" / "train.pt", map_location="cpu",
                          weights_only=False)["model"] for seed in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "seeds give different runs"
    for seed in (0, 1):
        backbone = out / "runs" / "backbone" / f"s{seed}" / "toy" / "pretrain.pt"
        pre = torch.load(out / "runs" / "rtc" / f"s{seed}" / "toy" / "pretrain.pt", map_location="cpu", weights_only=False)
        assert backbone.is_file() and pre["signature"]["model"]["weights"] == str(backbone.relative_to(repo))
    report = (out / "report.md").read_text()
    for label in ("CAM", "WS-FCN", "fully supervised", "data.toy.part_contrast",
                  "## Plug-ins against WS-FCN, paired by seed", "| WS-FCN + RTC | 2 |"):
        assert label in report, label
    # the paired rows: per-seed differences of the runs' own scores, and the cost from the train jobs' records
    pairs = pd.read_csv(out / "paired.csv")
    row = pairs[(pairs["measure"] == "miou") & (pairs["variant"] == "rtc") & (pairs["mode"] == "ss") & ~pairs["crf"]].iloc[0]
    mine = runs[(runs["variant"] == "rtc") & (runs["mode"] == "ss") & ~runs["crf"]].set_index("seed")["miou"]
    ref = runs[(runs["variant"] == "wsfcn") & (runs["mode"] == "ss") & ~runs["crf"]].set_index("seed")["miou"]
    assert row["mean"] == pytest.approx(float((mine - ref).mean()), abs=1e-5) and row["low"] <= row["mean"] <= row["high"]
    assert set(pairs["measure"]) == {"miou", "background_iou", "fg_precision", "fg_recall"}
    cost = pd.read_csv(out / "costs.csv")
    assert len(cost) == 2 * 2 and (cost["step_s"] > 0).all() and (cost["max_rss_mb"] > 100).all()
    curve = pd.read_csv(out / "runs" / "rtc" / "s0" / "toy" / "train_log.tsv", sep="\t")
    assert "rtc.contrast" in curve.columns and (curve["rtc.contrast"] > 0).all(), "the RTC run trained with RTC"
    claims = report.split("| claim | holds | numbers |")[1].split("## Figures")[0]
    assert claims.count("| yes |") + claims.count("| **no** |") == 4 + 2 + 2 + 1
    assert "| 147.34 |" in report, "WS-FCN's VOC-size parameter count (Table I)"
    for name in ("miou.png", "per_class.png", "examples.png", "paired.png"):
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
    assert not (out / "runs" / "fbr" / "s0" / "x2").exists(), "probes run on probes.variants only"
    dry = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/benchmark/report.md"], repo).stdout
    assert "Nothing to be done" in dry

    # the second stage: pseudo-masks of the trained WS-FCN runs, retrained on, scored; the ground-truth ceiling
    made = (out / "report.md").stat().st_mtime_ns
    sh([str(BIN / "snakemake"), "--cores", "2", "results/benchmark/two_stage.md"], repo, timeout=900)
    assert (out / "runs" / "wsfcn" / "s0" / "toy" / "train.pt").stat().st_mtime_ns == trained
    assert (out / "report.md").stat().st_mtime_ns == made
    chain = out / "runs" / "wsfcn" / "s1" / "two_stage"
    assert len(list((chain / "toy" / "train_aug" / "pseudo" / "masks").glob("*.png"))) == 32
    frame = pd.read_csv(out / "two_stage.csv")
    assert frame["kind"].value_counts().to_dict() == {"single_stage": 2, "pseudo": 2, "stage2": 2, "ceiling": 1, "plateau": 1}
    stage2 = json.loads((chain / "metrics" / "toy_val_stage2.json").read_text())
    assert frame[(frame["kind"] == "stage2") & (frame["seed"] == 1)]["miou_crf"].iloc[0] == pytest.approx(stage2["miou_crf"], abs=1e-6)
    single = frame[(frame["kind"] == "single_stage") & (frame["seed"] == 1)]["miou_crf"].iloc[0]
    assert single == pytest.approx(ws[ws["seed"] == 1]["miou"].iloc[0], abs=1e-6), "the single stage is read, not re-run"
    trained_on = {c: torch.load(out / "runs" / c / "toy" / name, map_location="cpu", weights_only=False)
                  for c, name in (("ceiling/s0", "retrain_gt.pt"), ("plateau/i3", "retrain_gt.pt"),
                                  ("wsfcn/s0/two_stage", "retrain.pt"))}
    assert not (out / "runs" / "ceiling" / "s0" / "toy" / "retrain.pt").exists()
    assert trained_on["ceiling/s0"]["masks"].endswith("data/benchmark/toy/SegmentationClass")
    assert trained_on["wsfcn/s0/two_stage"]["masks"].endswith("runs/wsfcn/s0/two_stage/toy/train_aug/pseudo/masks")
    assert (trained_on["ceiling/s0"]["step"], trained_on["plateau/i3"]["step"]) == (6, 3)
    text = (out / "two_stage.md").read_text()
    assert "## The second stage against the single stage, paired by seed" in text and "| WS-FCN | 2 |" in text
    assert "Plateau: " in text and "(One ceiling seed: no spread over seeds to compare with.)" in text
    assert "| WS-FCN | pseudo-masks (train, 32 images) | 2 |" in text
    assert (out / "two_stage.png").stat().st_size > 5000
    dry = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/benchmark/two_stage.md"], repo).stdout
    assert "Nothing to be done" in dry


# ---------------------------------------------------------------- the second stage (two_stage.md)

def test_the_second_stage_runs_continue_the_weak_runs_and_the_ceiling_has_no_variant():
    design = bench_design.load(REPO / "workflow" / "benchmark.yaml", PARAMS)
    t = design.two_stage
    assert t.variants == ["wsfcn"] and t.mode == "ms" and t.ceiling_seeds == [0, 1, 2]
    assert design.chains() == [f"wsfcn/s{s}/two_stage" for s in range(5)] + [
        "ceiling/s0", "ceiling/s1", "ceiling/s2", "plateau/i200", "plateau/i400", "plateau/i1600", "plateau/i3200"]
    chain, weak = design.chain_config(PARAMS, "wsfcn/s3/two_stage"), design.config(PARAMS, "wsfcn", "ms", 3)
    for section in ("model", "train", "infer", "crf", "data"):  # the pseudo-masks: the weak run as trained and scored
        assert chain[section] == weak[section], section
    assert (chain["retrain"]["seed"], chain["retrain"]["network"]) == (3, "lraspp_mobilenet_v3_large")
    ceiling = design.chain_config(PARAMS, "ceiling/s1")
    assert ceiling["retrain"] == {**chain["retrain"], "seed": 1}
    assert all(ceiling[k] == weak[k] for k in ("data", "infer", "crf")) and ceiling["model"]["weights"] is None
    assert design.chain_config(PARAMS, "plateau/i1600")["retrain"] == {**ceiling["retrain"], "seed": 0, "iterations": 1600}
    with pytest.raises(WsssError, match="'wsfcn/s0' is not a second-stage run"):
        design.chain_overrides("wsfcn/s0")
    with pytest.raises(WsssError, match="'rtc' is not in two_stage.variants"):
        design.chain_overrides("rtc/s0/two_stage")


def _metrics(path: Path, miou: float, images: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": miou - 0.1, "miou_crf": miou, "pixel_acc": 0.8, "pixel_acc_crf": 0.9,
                                "images": images}))


def _seconds(folder: Path, stem: str, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:00\t100\n")


def test_the_two_stage_report_pairs_the_second_stage_with_the_single_stage_by_seed(tmp_path, monkeypatch):
    from wsss.benchmark import two_stage

    monkeypatch.chdir(tmp_path)  # data.root is relative: the training split's size comes from its list
    split = tmp_path / "data/benchmark/toy/ImageSets/Segmentation/train_aug.txt"
    split.parent.mkdir(parents=True)
    split.write_text("".join(f"{i:04d}\n" for i in range(640)))

    design_path = write_design(tmp_path / "d.yaml", two_stage={
        "variants": ["wsfcn"], "mode": "ms", "params": {"retrain.iterations": 10}, "ceiling_seeds": [0, 1],
        "plateau": [5, 20]})
    design = bench_design.load(design_path, PARAMS)
    runs = tmp_path / "runs"
    single = {s: 0.30 + 0.01 * s for s in range(5)}
    gain = {0: 0.05, 1: 0.05, 2: 0.02, 3: 0.06, 4: 0.02}  # the second stage above the single stage, seed by seed
    for seed in range(5):
        _metrics(runs / f"wsfcn/s{seed}/ms/metrics/toy_val.json", single[seed], 100)
        _metrics(runs / f"wsfcn/s{seed}/two_stage/metrics/toy_train_aug_pseudo.json", 0.5, 600)
        _metrics(runs / f"wsfcn/s{seed}/two_stage/metrics/toy_val_stage2.json", single[seed] + gain[seed], 100)
        _seconds(runs / f"backbone/s{seed}/benchmarks", "pretrain", 100.0)
        for stem in ("pretrain", "train", "ms_infer", "ms_crf"):
            _seconds(runs / f"wsfcn/s{seed}/benchmarks", stem, 10.0 + seed)
        for stem in ("pseudo", "retrain", "infer_stage2", "crf_stage2"):
            _seconds(runs / f"wsfcn/s{seed}/two_stage/benchmarks", stem, 50.0)
    _metrics(runs / "ceiling/s0/metrics/toy_val_stage2.json", 0.60, 100)
    _metrics(runs / "ceiling/s1/metrics/toy_val_stage2.json", 0.64, 100)
    _metrics(runs / "plateau/i5/metrics/toy_val_stage2.json", 0.40, 100)
    _metrics(runs / "plateau/i20/metrics/toy_val_stage2.json", 0.65, 100)
    out = tmp_path / "out"
    args = argparse.Namespace(params=PARAMS, design=str(design_path), runs=str(runs), out=str(out))
    two_stage.run({}, args)

    frame = pd.read_csv(out / "two_stage.csv")
    assert frame["kind"].value_counts().to_dict() == {"single_stage": 5, "pseudo": 5, "stage2": 5, "ceiling": 2, "plateau": 2}
    pair = two_stage.paired_rows(frame, "wsfcn")[1]
    assert pair["per_seed"] == "+0.050 +0.050 +0.020 +0.060 +0.020" and pair["mean"] == pytest.approx(0.04)
    assert 0 < pair["low"] < 0.04 < pair["high"] and pair["verdict"] == "better"
    assert two_stage.sweep(frame, design)["iterations"].tolist() == [5, 10, 20], "the first ceiling seed is the budget's point"
    text = (out / "two_stage.md").read_text()
    assert "| WS-FCN | 5 | +0.040 [" in text and "(better)" in text
    assert "| WS-FCN | second stage | 10 iterations | 0.260 / 0.520 = 50.0% | 0.360 / 0.620 = 58.1% |" in text
    assert "| WS-FCN | single stage | 20 iterations, seed 0 | 0.220 / 0.550 = 40.0% | 0.320 / 0.650 = 49.2% |" in text
    assert "Plateau: **no**: 20 iterations give +0.050 mIoU (with CRF) over 10 (a plateau is a rise below +0.010" in text
    assert "sample std over its 2 seeds at 10 iterations is 0.028 (with CRF)" in text
    assert "| WS-FCN | pseudo-masks (train, 600 images) | 5 | 0.400 ± 0.000 | 0.500 ± 0.000 |" in text
    assert "| 20 | 0.5 | 0.550 | 0.650 | +0.050 |" in text, "epochs of the 640-image training split at batch 16"
    assert "| WS-FCN | train | 12 | 10–14 |" in text and "| WS-FCN | retrain | 50 | 50–50 |" in text
    assert (out / "two_stage.png").stat().st_size > 5000
    (runs / "ceiling/s1/metrics/toy_val_stage2.json").unlink()
    with pytest.raises(WsssError, match=r"benchmark run missing: .*ceiling/s1/metrics/toy_val_stage2\.json"):
        two_stage.run({}, args)


def test_a_second_stage_variant_scored_unlike_the_ceiling_is_refused_naming_the_key(tmp_path):
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    raw["variants"]["wsfcn"]["params"] = {"infer.flip": False}
    with pytest.raises(WsssError, match=r"two_stage run 'wsfcn/s0/two_stage': key 'infer.flip' is False, the ceiling's True"):
        bench_design.load(write_design(tmp_path / "d.yaml", **raw), PARAMS)


def test_parameter_counts_at_voc_size_hold_under_a_schedule_that_validates_nothing(tmp_path):
    """The report counts each variant at VOC size (WR38) under the design's own short schedule: a VOC
    preset that keeps the best validated weights must not refuse it (nothing is trained here)."""
    raw = yaml.safe_load((REPO / "workflow" / "benchmark.yaml").read_text())
    raw["params"].update({"train.epochs": 2, "train.cls_epochs": 1})
    design = bench_design.load(write_design(tmp_path / "d.yaml", params=raw["params"]), PARAMS)
    counts = report.param_counts(design, PARAMS)
    assert counts["wsfcn"][1] == pytest.approx(147.343, abs=5e-4)  # Table I: 147.34 M
    assert counts["cam"][1] < counts["wsfcn"][1] and counts["wsfcn"][0] > 0


def _plugin_run(runs: Path, cfg: dict, variant: str, seed: int, miou: float, img_per_s: float, rss: float) -> None:
    """One fabricated benchmark run: both modes' metrics and per-class table, the train curve, the train job's record."""
    for mode in ("ss", "ms"):
        paths = report.run_paths(cfg, runs, variant, seed, mode)
        _metrics(paths.metrics_json, miou + (0.02 if mode == "ms" else 0.0), 100)
        pd.DataFrame({"class": ["background", "a", "mean"], "iou": [0.7, 0.2, 0.45], "iou_crf": [0.8, miou, 0.5],
                      "precision": [0.9, 0.5, 0.7], "precision_crf": [0.9, 0.5, 0.7], "recall": [0.8, 0.4, 0.6],
                      "recall_crf": [0.8, 0.4, 0.6]}).to_csv(paths.miou_csv, index=False)
    curve = bench_design.params.load(PARAMS, ["train.batch_size=16"])
    log = for_config(curve, runs / variant / f"s{seed}").train_log("train")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("stage\tepoch\tstep\timg_per_s\n" + "".join(f"train\t2\t{i}\t{img_per_s}\n" for i in range(3)))
    (runs / variant / f"s{seed}" / "benchmarks").mkdir(parents=True, exist_ok=True)
    (runs / variant / f"s{seed}" / "benchmarks" / "train.tsv").write_text(f"s\th:m:s\tmax_rss\n9.0\t0:00:09\t{rss}\n")


def test_the_plugin_report_pairs_each_variant_with_its_own_baseline(tmp_path):
    from wsss.benchmark import plugins

    design = bench_design.load(REPO / "workflow" / "benchmark.yaml", PARAMS)
    cfg = design.config(PARAMS, design.reference)
    runs = tmp_path / "runs"
    base = {s: 0.20 + 0.02 * s for s in range(5)}
    offsets = {"wsfcn": {s: 0.0 for s in range(5)}, "supportnet": {0: 0.03, 1: 0.01, 2: 0.02, 3: 0.04, 4: 0.0},
               "vit": {s: -0.1 for s in range(5)}, "acr": {0: -0.05, 1: -0.1, 2: -0.05, 3: -0.1, 4: -0.05}}
    speed = {"wsfcn": 32.0, "supportnet": 16.0, "vit": 64.0, "acr": 16.0}
    for variant, offset in offsets.items():
        for seed in design.variants[variant].seeds:  # ViT 0, 1, 3, 4; ACR 0, 3, 4
            _plugin_run(runs, cfg, variant, seed, base[seed] + offset[seed], speed[variant], 1000.0 + 100 * seed)
    args = argparse.Namespace(params=PARAMS, design=str(REPO / "workflow" / "benchmark.yaml"), runs=str(runs),
                              out=str(tmp_path / "out"))
    plugins.run({}, args)

    out = tmp_path / "out"
    pairs = pd.read_csv(out / "plugins_paired.csv")
    miou = pairs[(pairs["measure"] == "miou") & (pairs["mode"] == "ms") & pairs["crf"]].set_index("variant")
    assert miou["baseline"].to_dict() == {"supportnet": "wsfcn", "vit": "wsfcn", "acr": "vit"}
    assert miou.loc["supportnet", "per_seed"] == "+0.030 +0.010 +0.020 +0.040 +0.000"
    assert miou.loc["acr", "per_seed"] == "+0.050 +0.000 +0.050", "ACR against the ViT on their shared seeds"
    assert miou.loc["vit", "per_seed"] == "-0.100 -0.100 -0.100 -0.100"
    assert miou.loc["vit", "mean"] == pytest.approx(-0.1) and miou.loc["vit", "verdict"] == "worse"
    cost = pd.read_csv(out / "plugins_costs.csv")
    assert sorted(set(cost["variant"])) == ["acr", "supportnet", "vit", "wsfcn"] and len(cost) == 5 + 5 + 4 + 3
    text = (out / "plugins.md").read_text()
    assert "## Each configuration against its baseline, paired by seed" in text
    assert "| ViT + ACR − ViT single stage | 3 |" in text and "| WS-FCN + MainNet/SupportNet − WS-FCN | 5 |" in text
    assert "| WS-FCN + MainNet/SupportNet − WS-FCN | 1.000 | 2.00 (2.00–2.00) |" in text  # 16 / 32 images per second
    assert "| ViT + ACR − ViT single stage | 1.000 | 4.00 (4.00–4.00) |" in text
    assert "| ViT single stage | 0.250 | 1 |" in text and "| WS-FCN | 0.500 | 1 |" in text
    assert "its seed's `backbone_vit` run: model.method=cam, model.backbone=vit_toy" in text
    assert (out / "plugins.png").stat().st_size > 5000
    (runs / "acr" / "s4" / "ms" / "metrics" / "toy_val.json").unlink()
    with pytest.raises(WsssError, match=r"benchmark run missing: .*acr/s4/ms/metrics/toy_val\.json"):
        plugins.run({}, args)
