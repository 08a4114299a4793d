# Sharding (`snakemake --set-scatter infer=N`): N `infer_shard` jobs, each `wsss infer --shard I/N`
# into results/{dataset}/{split}/infer.shards/I-of-N, then `infer` gathers them (`wsss infer --gather N`)
# into the same folder an unsharded run writes. With N = 1 (the default) `infer` is one job.
scattergather:
    infer=1,


# one inference job (unsharded, a shard, or the second stage's): a GPU and its memory except on the toy data
INFER_RESOURCES = dict(
    gpu=lambda wc: 0 if wc.dataset == "toy" else 1,
    mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 16000,
    runtime=lambda wc: 30 if wc.dataset == "toy" else 240,
)


INFER_SHARDS = len(scatter.infer("{scatteritem}"))

if INFER_SHARDS == 1:

    rule infer:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            checkpoint="results/{dataset}/train.pt",
            code=stage_code("infer"),
        output:
            directory("results/{dataset}/{split}/infer"),
        params:
            config=stage_params("infer"),
        log:
            "results/logs/{dataset}/{split}/infer.log",
        benchmark:
            "results/benchmarks/{dataset}/{split}/infer.tsv"
        threads: workflow.cores
        resources:
            **INFER_RESOURCES,
        shell:
            stage_cmd("infer", "-S data.eval_split={wildcards.split}")

else:

    rule infer_shard:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            checkpoint="results/{dataset}/train.pt",
            code=stage_code("infer"),
        output:
            temp(directory("results/{dataset}/{split}/infer.shards/{scatteritem}")),
        params:
            config=stage_params("infer"),
        log:
            "results/logs/{dataset}/{split}/infer.{scatteritem}.log",
        benchmark:
            "results/benchmarks/{dataset}/{split}/infer.{scatteritem}.tsv"
        threads: workflow.cores
        resources:
            **INFER_RESOURCES,
        shell:
            stage_cmd("infer", "-S data.eval_split={wildcards.split}", "--shard {wildcards.scatteritem}")

    rule infer:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            checkpoint="results/{dataset}/train.pt",  # the gather checks the shards came from it as it is now
            shards=gather.infer("results/{{dataset}}/{{split}}/infer.shards/{scatteritem}"),
            code=stage_code("infer"),
        output:
            directory("results/{dataset}/{split}/infer"),
        params:
            config=stage_params("infer"),
        log:
            "results/logs/{dataset}/{split}/infer.log",
        threads: 1
        resources:
            gpu=0,
            mem_mb=1000,
            runtime=30,
        shell:
            stage_cmd("infer", "-S data.eval_split={wildcards.split}", f"--gather {INFER_SHARDS}")


rule infer_stage2:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        checkpoint="results/{dataset}/retrain.pt",
        code=stage_code("infer_stage2"),
    output:
        directory("results/{dataset}/stage2/{split}/infer"),
    params:
        config=stage_params("infer_stage2"),
    log:
        "results/logs/{dataset}/stage2/{split}/infer.log",
    benchmark:
        "results/benchmarks/{dataset}/stage2/{split}/infer.tsv"
    threads: workflow.cores
    resources:
        **INFER_RESOURCES,
    shell:
        stage_cmd("infer", "--stage2", "-S data.eval_split={wildcards.split}")
