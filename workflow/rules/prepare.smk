rule prepare:
    input:
        code=stage_code("prepare"),
    output:
        directory(f"{DATA_ROOT}/{{dataset}}"),
    params:
        config=stage_params("prepare"),
    log:
        "results/logs/{dataset}/prepare.log",
    benchmark:
        "results/benchmarks/{dataset}/prepare.tsv"
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=240,
    shell:
        stage_cmd("prepare")
