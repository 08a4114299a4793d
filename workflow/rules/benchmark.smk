# The ablation benchmark on the embedded dataset (workflow/benchmark.yaml):
#
#     snakemake --cores 2 results/benchmark/report.md
#
# Every variant x seed is trained (pretrain + train, or supervise for the upper bound), inferred in
# every inference mode, refined by the CRF and evaluated; `wsss benchmark-report` then writes the
# table, figures and example page. Runs live under results/benchmark/runs/<variant>/s<seed>/ and use
# the same stage CLIs as the main DAG, with --results pointing there. Each job takes one core, so
# `--cores N` trains N runs at once. A variant runs with its own `seeds` where the design gives them;
# the report reads each train job's curve and Snakemake benchmark file for the paired rows' cost.
# The runs read params.yaml and the design file only: --configfile overlays do not reach them. With a
# `backbone` entry in the design, each seed's shared backbone is trained first
# (results/benchmark/runs/backbone/s<seed>/) and every run of that seed starts from it; a variant with
# `backbone: <name>` starts from the named one of `backbones` instead (runs/backbone_<name>/s<seed>/).
# The design's probes (more inference modes on some variants' trained models) run only for
#
#     snakemake --cores 2 results/benchmark/probes.md
#
# and its `plugins` (more variants, each paired with its own baseline) only for
#
#     snakemake --cores 2 results/benchmark/plugins.md
import shlex

from wsss.benchmark import design as bench_design

BENCH_DESIGN = "workflow/benchmark.yaml"
BENCH = bench_design.load(BENCH_DESIGN, ["params.yaml"])
BENCH_OUT = "results/benchmark"
BENCH_RUN = bench_design.RUNS + "/{variant}/s{seed}"
BENCH_BACKBONE_RUN = bench_design.BACKBONE_RUN
BENCH_DATA_OVERRIDES = [o for o in BENCH.overrides(next(iter(BENCH.variants))) if o.startswith("data.")]
BENCH_DATA_CFG = bench_design.params.load(["params.yaml"], BENCH_DATA_OVERRIDES)["data"]
BENCH_DATA = BENCH_DATA_CFG["root"] + "/toy"


wildcard_constraints:
    variant="|".join(BENCH.variants),
    chain=bench_design.CHAIN_PATTERN,
    mode="|".join(BENCH.all_modes),
    seed=r"\d+",
    backbone="|".join(BENCH.backbone_folders) or "(?!)",


def bench_params(stage, with_mode=False):
    """The slice of a run's resolved configuration that `stage` depends on (a change re-runs it)."""

    def pick(wc):
        return param_slice(BENCH.config(["params.yaml"], wc.variant, wc.mode if with_mode else None, int(wc.seed)), stage)

    return pick


def bench_shell(stage, overrides, args):
    """`wsss <stage>` on params.yaml with these `-S` overrides and arguments, one thread."""
    sets = " ".join(f"-S {shlex.quote(o)}" for o in overrides)
    return " ".join(["OMP_NUM_THREADS=1", "wsss", stage, "--params params.yaml", sets, *args])


def bench_cmd(stage, *extra, with_mode=False):
    """`wsss <stage>` for one run: params.yaml + the design's overrides, one thread, logged."""

    def cmd(wc):
        overrides = BENCH.overrides(wc.variant, wc.mode if with_mode else None, int(wc.seed))
        args = [e.format(model=bench_model_name(wc.variant), **wc) for e in extra]  # params functions get no wildcard formatting of their own
        return bench_shell(stage, overrides, args)

    return cmd


def bench_model_name(variant):
    return "supervise" if BENCH.variants[variant].trainer == "supervise" else "train"


def bench_outputs(pattern, modes, variants=None):
    """`pattern` (under a run's folder, with {mode}) for every trained run of the design and every mode."""
    return [BENCH_RUN.format(variant=v, seed=s) + pattern.format(mode=m) for v, s in BENCH.runs(variants) for m in modes]


def bench_model_path(variant, seed):
    """The trained checkpoint of one run (train.pt, or supervise.pt for the upper bound)."""
    return BENCH_RUN.format(variant=variant, seed=seed) + f"/toy/{bench_model_name(variant)}.pt"


def bench_model(wc):
    return bench_model_path(wc.variant, wc.seed)


rule bench_prepare:
    input:
        code=stage_code("prepare"),
    output:
        directory(BENCH_DATA),
    log:
        BENCH_OUT + "/logs/prepare.log",
    shell:
        "wsss prepare --params params.yaml "
        + " ".join(f"-S {shlex.quote(o)}" for o in BENCH_DATA_OVERRIDES)
        + " 2>&1 | tee {log}"


def bench_backbone(wc):
    """The shared backbone a run of this variant and seed starts from (none without a `backbone` design entry)."""
    folder = BENCH.variant_backbone(wc.variant)
    return [BENCH.backbone_checkpoint(int(wc.seed), folder=folder)] if folder is not None else []


rule bench_backbone:
    input:
        data=BENCH_DATA,
        code=stage_code("pretrain"),
    output:
        checkpoint=BENCH_BACKBONE_RUN + "/toy/pretrain.pt",
    params:
        config=lambda wc: param_slice(BENCH.backbone_config(["params.yaml"], int(wc.seed), wc.backbone), "pretrain"),
        cmd=lambda wc: bench_shell("pretrain", BENCH.backbone_overrides(int(wc.seed), wc.backbone),
                                   ["--results", BENCH_BACKBONE_RUN.format(backbone=wc.backbone, seed=wc.seed)]),
    log:
        BENCH_BACKBONE_RUN + "/logs/pretrain.log",
    benchmark:
        BENCH_BACKBONE_RUN + "/benchmarks/pretrain.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_pretrain:
    input:
        data=BENCH_DATA,
        backbone=bench_backbone,
        code=stage_code("pretrain"),
    output:
        checkpoint=BENCH_RUN + "/toy/pretrain.pt",
    params:
        config=bench_params("pretrain"),
        cmd=bench_cmd("pretrain", "--results", BENCH_RUN),
    log:
        BENCH_RUN + "/logs/pretrain.log",
    benchmark:
        BENCH_RUN + "/benchmarks/pretrain.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_train:
    input:
        data=BENCH_DATA,
        checkpoint=BENCH_RUN + "/toy/pretrain.pt",
        code=stage_code("train"),
    output:
        checkpoint=BENCH_RUN + "/toy/train.pt",
    params:
        config=bench_params("train"),
        cmd=bench_cmd("train", "--results", BENCH_RUN),
    log:
        BENCH_RUN + "/logs/train.log",
    benchmark:
        BENCH_RUN + "/benchmarks/train.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_supervise:
    input:
        data=BENCH_DATA,
        checkpoint=BENCH_RUN + "/toy/pretrain.pt",
        code=stage_code("supervise"),
    output:
        checkpoint=BENCH_RUN + "/toy/supervise.pt",
    params:
        config=bench_params("supervise"),
        cmd=bench_cmd("supervise", "--results", BENCH_RUN),
    log:
        BENCH_RUN + "/logs/supervise.log",
    benchmark:
        BENCH_RUN + "/benchmarks/supervise.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_infer:
    input:
        data=BENCH_DATA,
        checkpoint=bench_model,
        code=stage_code("infer"),
    output:
        directory(BENCH_RUN + "/{mode}/toy/val/infer"),
    params:
        config=bench_params("infer", with_mode=True),
        cmd=bench_cmd("infer", "--results", BENCH_RUN + "/{mode}", "--checkpoint", BENCH_RUN + "/toy/{model}.pt", with_mode=True),
    log:
        BENCH_RUN + "/logs/{mode}_infer.log",
    benchmark:
        BENCH_RUN + "/benchmarks/{mode}_infer.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_crf:
    input:
        data=BENCH_DATA,
        infer=BENCH_RUN + "/{mode}/toy/val/infer",
        code=stage_code("crf"),
    output:
        directory(BENCH_RUN + "/{mode}/toy/val/crf"),
    params:
        config=bench_params("crf", with_mode=True),
        cmd=bench_cmd("crf", "-S crf.workers=1", "--results", BENCH_RUN + "/{mode}", with_mode=True),
    log:
        BENCH_RUN + "/logs/{mode}_crf.log",
    benchmark:
        BENCH_RUN + "/benchmarks/{mode}_crf.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_evaluate:
    input:
        data=BENCH_DATA,
        infer=BENCH_RUN + "/{mode}/toy/val/infer",
        crf=BENCH_RUN + "/{mode}/toy/val/crf",
        code=stage_code("evaluate"),
    output:
        metrics=BENCH_RUN + "/{mode}/metrics/toy_val.json",
        table=BENCH_RUN + "/{mode}/toy_val_miou.csv",
    params:
        config=bench_params("evaluate", with_mode=True),
        cmd=bench_cmd("evaluate", "--results", BENCH_RUN + "/{mode}", with_mode=True),
    log:
        BENCH_RUN + "/logs/{mode}_evaluate.log",
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_report:
    input:
        design=BENCH_DESIGN,
        metrics=bench_outputs("/{mode}/metrics/toy_val.json", BENCH.modes),
        tables=bench_outputs("/{mode}/toy_val_miou.csv", BENCH.modes),
        models=[bench_model_path(v, s) for v, s in BENCH.runs()],
        code=["wsss/benchmark/design.py", "wsss/benchmark/report.py", "wsss/benchmark/paired.py"],
    output:
        report=BENCH_OUT + "/report.md",
        summary=BENCH_OUT + "/summary.csv",
        runs=BENCH_OUT + "/runs.csv",
        miou=BENCH_OUT + "/miou.png",
        per_class=BENCH_OUT + "/per_class.png",
        examples=BENCH_OUT + "/examples.png",
    log:
        BENCH_OUT + "/logs/report.log",
    shell:
        "wsss benchmark-report --params params.yaml --design {input.design} --runs {BENCH_OUT}/runs --out {BENCH_OUT} 2>&1 | tee {log}"


rule bench_plugins:
    input:
        design=BENCH_DESIGN,
        metrics=bench_outputs("/{mode}/metrics/toy_val.json", BENCH.modes, BENCH.plugin_report_variants),
        models=[bench_model_path(v, s) for v, s in BENCH.runs(BENCH.plugin_report_variants)],
        code=["wsss/benchmark/design.py", "wsss/benchmark/report.py", "wsss/benchmark/paired.py",
              "wsss/benchmark/plugins.py"],
    output:
        report=BENCH_OUT + "/plugins.md",
        runs=BENCH_OUT + "/plugins.csv",
        paired=BENCH_OUT + "/plugins_paired.csv",
        costs=BENCH_OUT + "/plugins_costs.csv",
        figure=BENCH_OUT + "/plugins.png",
    log:
        BENCH_OUT + "/logs/plugins.log",
    shell:
        "wsss benchmark-plugins --params params.yaml --design {input.design} --runs {BENCH_OUT}/runs --out {BENCH_OUT} 2>&1 | tee {log}"


rule bench_probes:
    input:
        design=BENCH_DESIGN,
        metrics=bench_outputs("/{mode}/metrics/toy_val.json", BENCH.all_modes, BENCH.probe_variants),
        code=["wsss/benchmark/design.py", "wsss/benchmark/report.py", "wsss/benchmark/probes.py"],
    output:
        report=BENCH_OUT + "/probes.md",
        runs=BENCH_OUT + "/probes.csv",
        figure=BENCH_OUT + "/probes.png",
    log:
        BENCH_OUT + "/logs/probes.log",
    shell:
        "wsss benchmark-probes --params params.yaml --design {input.design} --runs {BENCH_OUT}/runs --out {BENCH_OUT} 2>&1 | tee {log}"


# ---------------------------------------------------------------- the second stage, on request:
#
#     snakemake --cores 2 results/benchmark/two_stage.md
#
# Each second-stage run ("chain", design.chains()) is a folder under results/benchmark/runs: a variant's
# <variant>/s<seed>/two_stage (pseudo-masks of its trained run, scored, retrained on), ceiling/s<seed> (the
# same trainer on the ground-truth masks, `wsss retrain --ground-truth`: retrain_gt.pt) and plateau/i<iterations>
# (the ceiling's budget sweep). All use the same stage CLIs as the main DAG's second stage with --results
# pointing at the chain.
BENCH_CHAIN = bench_design.RUNS + "/{chain}"
BENCH_PSEUDO_CHAIN = bench_design.RUNS + "/{variant}/s{seed}/two_stage"
BENCH_TRAIN_SPLIT = BENCH_DATA_CFG["train_split"]


def chain_of(wc):
    """The chain a job belongs to: its {chain} wildcard, or the pseudo-mask chain of {variant} and {seed}."""
    return getattr(wc, "chain", None) or f"{wc.variant}/s{wc.seed}/two_stage"


def chain_cmd(stage, *args):
    """`wsss <stage>` for one second-stage run: the chain's overrides, one thread, --results at the chain."""

    def cmd(wc):
        chain = chain_of(wc)
        return bench_shell(stage, BENCH.chain_overrides(chain),
                           ["--results", f"{bench_design.RUNS}/{chain}", *(a.format(**wc) for a in args)])

    return cmd


def chain_params(stage):
    def pick(wc):
        return param_slice(BENCH.chain_config(["params.yaml"], chain_of(wc)), stage)

    return pick


def chain_checkpoint(wc):
    """The second-stage checkpoint of a chain: retrain.pt on the pseudo-masks, retrain_gt.pt on the ground truth."""
    name = "retrain" if BENCH.chain_kind(wc.chain) == "pseudo" else "retrain_gt"
    return f"{bench_design.RUNS}/{wc.chain}/toy/{name}.pt"


def chain_infer_cmd(wc):
    """`wsss infer --stage2`, with the ground-truth runs' checkpoint named (the default is the pseudo-mask one)."""
    gt = chain_checkpoint(wc).endswith("retrain_gt.pt")
    return chain_cmd("infer", "--stage2", *(["--checkpoint", chain_checkpoint(wc)] if gt else []))(wc)


rule bench_pseudo:
    input:
        data=BENCH_DATA,
        checkpoint=BENCH_RUN + "/toy/train.pt",
        code=stage_code("pseudo"),
    output:
        directory(BENCH_PSEUDO_CHAIN + f"/toy/{BENCH_TRAIN_SPLIT}/pseudo"),
    params:
        config=chain_params("pseudo"),
        cmd=chain_cmd("pseudo", "-S crf.workers=1", "--checkpoint", BENCH_RUN + "/toy/train.pt"),
    log:
        BENCH_PSEUDO_CHAIN + "/logs/pseudo.log",
    benchmark:
        BENCH_PSEUDO_CHAIN + "/benchmarks/pseudo.tsv"
    threads: 1  # the network; its one CRF worker process mostly waits for it (about 1.2 cores busy)
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_evaluate_pseudo:
    input:
        data=BENCH_DATA,
        pseudo=BENCH_PSEUDO_CHAIN + f"/toy/{BENCH_TRAIN_SPLIT}/pseudo",
        code=stage_code("evaluate_pseudo"),
    output:
        metrics=BENCH_PSEUDO_CHAIN + f"/metrics/toy_{BENCH_TRAIN_SPLIT}_pseudo.json",
    params:
        config=chain_params("evaluate_pseudo"),
        cmd=chain_cmd("evaluate", "--pseudo"),
    log:
        BENCH_PSEUDO_CHAIN + "/logs/evaluate_pseudo.log",
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_retrain:
    input:
        data=BENCH_DATA,
        pseudo=BENCH_PSEUDO_CHAIN + f"/toy/{BENCH_TRAIN_SPLIT}/pseudo",
        code=stage_code("retrain"),
    output:
        checkpoint=BENCH_PSEUDO_CHAIN + "/toy/retrain.pt",
    params:
        config=chain_params("retrain"),
        cmd=chain_cmd("retrain"),
    log:
        BENCH_PSEUDO_CHAIN + "/logs/retrain.log",
    benchmark:
        BENCH_PSEUDO_CHAIN + "/benchmarks/retrain.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_ceiling:
    wildcard_constraints:
        chain=bench_design.GROUND_TRUTH_PATTERN,
    input:
        data=BENCH_DATA,
        code=stage_code("retrain"),
    output:
        checkpoint=BENCH_CHAIN + "/toy/retrain_gt.pt",
    params:
        config=chain_params("retrain"),
        cmd=chain_cmd("retrain", "--ground-truth"),
    log:
        BENCH_CHAIN + "/logs/retrain.log",
    benchmark:
        BENCH_CHAIN + "/benchmarks/retrain.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_infer_stage2:
    input:
        data=BENCH_DATA,
        checkpoint=chain_checkpoint,
        code=stage_code("infer_stage2"),
    output:
        directory(BENCH_CHAIN + "/toy/stage2/val/infer"),
    params:
        config=chain_params("infer_stage2"),
        cmd=chain_infer_cmd,
    log:
        BENCH_CHAIN + "/logs/infer_stage2.log",
    benchmark:
        BENCH_CHAIN + "/benchmarks/infer_stage2.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_crf_stage2:
    input:
        data=BENCH_DATA,
        infer=BENCH_CHAIN + "/toy/stage2/val/infer",
        code=stage_code("crf_stage2"),
    output:
        directory(BENCH_CHAIN + "/toy/stage2/val/crf"),
    params:
        config=chain_params("crf_stage2"),
        cmd=chain_cmd("crf", "--stage2", "-S crf.workers=1"),
    log:
        BENCH_CHAIN + "/logs/crf_stage2.log",
    benchmark:
        BENCH_CHAIN + "/benchmarks/crf_stage2.tsv"
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


rule bench_evaluate_stage2:
    input:
        data=BENCH_DATA,
        infer=BENCH_CHAIN + "/toy/stage2/val/infer",
        crf=BENCH_CHAIN + "/toy/stage2/val/crf",
        code=stage_code("evaluate_stage2"),
    output:
        metrics=BENCH_CHAIN + "/metrics/toy_val_stage2.json",
    params:
        config=chain_params("evaluate_stage2"),
        cmd=chain_cmd("evaluate", "--stage2"),
    log:
        BENCH_CHAIN + "/logs/evaluate_stage2.log",
    threads: 1
    shell:
        "{params.cmd} > {log} 2>&1"


def bench_two_stage_inputs(wc=None):
    t = BENCH.two_stage
    if t is None:
        return []
    chains = [f"{bench_design.RUNS}/{c}" for c in BENCH.chains()]
    return ([f"{c}/metrics/toy_val_stage2.json" for c in chains]
            + [f"{bench_design.RUNS}/{v}/s{s}/two_stage/metrics/toy_{BENCH_TRAIN_SPLIT}_pseudo.json" for v, s in BENCH.runs(t.variants)]
            + bench_outputs("/{mode}/metrics/toy_val.json", [t.mode], t.variants))


rule bench_two_stage:
    input:
        design=BENCH_DESIGN,
        metrics=bench_two_stage_inputs(),
        code=["wsss/benchmark/design.py", "wsss/benchmark/report.py", "wsss/benchmark/paired.py",
              "wsss/benchmark/two_stage.py"],
    output:
        report=BENCH_OUT + "/two_stage.md",
        runs=BENCH_OUT + "/two_stage.csv",
        figure=BENCH_OUT + "/two_stage.png",
    log:
        BENCH_OUT + "/logs/two_stage.log",
    shell:
        "wsss benchmark-two-stage --params params.yaml --design {input.design} --runs {BENCH_OUT}/runs --out {BENCH_OUT} 2>&1 | tee {log}"
