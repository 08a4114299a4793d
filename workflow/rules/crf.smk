# Sharding (`snakemake --set-scatter crf=N`): as for infer, N `crf_shard` jobs then the `crf` gather.
scattergather:
    crf=1,


# one CRF job (unsharded, a shard, or the second stage's): CPU only
CRF_RESOURCES = dict(gpu=0, mem_mb=8000, runtime=lambda wc: 30 if wc.dataset == "toy" else 240)


CRF_SHARDS = len(scatter.crf("{scatteritem}"))

if CRF_SHARDS == 1:

    rule crf:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            infer="results/{dataset}/{split}/infer",
            code=stage_code("crf"),
        output:
            directory("results/{dataset}/{split}/crf"),
        params:
            config=stage_params("crf"),
        log:
            "results/logs/{dataset}/{split}/crf.log",
        benchmark:
            "results/benchmarks/{dataset}/{split}/crf.tsv"
        threads: workflow.cores
        resources:
            **CRF_RESOURCES,
        shell:
            stage_cmd("crf", "-S data.eval_split={wildcards.split}")

else:

    rule crf_shard:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            infer="results/{dataset}/{split}/infer",
            code=stage_code("crf"),
        output:
            temp(directory("results/{dataset}/{split}/crf.shards/{scatteritem}")),
        params:
            config=stage_params("crf"),
        log:
            "results/logs/{dataset}/{split}/crf.{scatteritem}.log",
        benchmark:
            "results/benchmarks/{dataset}/{split}/crf.{scatteritem}.tsv"
        threads: workflow.cores
        resources:
            **CRF_RESOURCES,
        shell:
            stage_cmd("crf", "-S data.eval_split={wildcards.split}", "--shard {wildcards.scatteritem}")

    rule crf:
        input:
            data=f"{DATA_ROOT}/{{dataset}}",
            infer="results/{dataset}/{split}/infer",
            shards=gather.crf("results/{{dataset}}/{{split}}/crf.shards/{scatteritem}"),
            code=stage_code("crf"),
        output:
            directory("results/{dataset}/{split}/crf"),
        params:
            config=stage_params("crf"),
        log:
            "results/logs/{dataset}/{split}/crf.log",
        threads: 1
        resources:
            gpu=0,
            mem_mb=1000,
            runtime=30,
        shell:
            stage_cmd("crf", "-S data.eval_split={wildcards.split}", f"--gather {CRF_SHARDS}")


rule crf_stage2:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        infer="results/{dataset}/stage2/{split}/infer",
        code=stage_code("crf_stage2"),
    output:
        directory("results/{dataset}/stage2/{split}/crf"),
    params:
        config=stage_params("crf_stage2"),
    log:
        "results/logs/{dataset}/stage2/{split}/crf.log",
    benchmark:
        "results/benchmarks/{dataset}/stage2/{split}/crf.tsv"
    threads: workflow.cores
    resources:
        **CRF_RESOURCES,
    shell:
        stage_cmd("crf", "--stage2", "-S data.eval_split={wildcards.split}")
