rule pretrain:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        code=stage_code("pretrain"),
    output:
        checkpoint="results/{dataset}/pretrain.pt",
        config="results/{dataset}/pretrain.yaml",
        curve="results/{dataset}/pretrain_log.tsv",
    params:
        config=stage_params("pretrain"),
    log:
        "results/logs/{dataset}/pretrain.log",
    benchmark:
        "results/benchmarks/{dataset}/pretrain.tsv"
    threads: workflow.cores
    resources:
        gpu=training_gpus,
        mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 32000,
        runtime=lambda wc: 30 if wc.dataset == "toy" else 600,
    shell:
        stage_cmd("pretrain")
