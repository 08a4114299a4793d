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
        gpu=0,
        mem_mb=8000,
        runtime=lambda wc: 30 if wc.dataset == "toy" else 240,
    shell:
        stage_cmd("crf", "-S data.eval_split={wildcards.split}")


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
        gpu=0,
        mem_mb=8000,
        runtime=lambda wc: 30 if wc.dataset == "toy" else 240,
    shell:
        stage_cmd("crf", "--stage2", "-S data.eval_split={wildcards.split}")
