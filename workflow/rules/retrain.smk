rule retrain:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        pseudo=f"results/{{dataset}}/{PARAMS['data']['train_split']}/pseudo",
        code=stage_code("retrain"),
    output:
        checkpoint="results/{dataset}/retrain.pt",
        config="results/{dataset}/retrain.yaml",
        curve="results/{dataset}/retrain_log.tsv",
    params:
        config=stage_params("retrain"),
    log:
        "results/logs/{dataset}/retrain.log",
    benchmark:
        "results/benchmarks/{dataset}/retrain.tsv"
    threads: workflow.cores
    resources:
        gpu=lambda wc: 0 if wc.dataset == "toy" else 1,
        mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 32000,
        runtime=lambda wc: 60 if wc.dataset == "toy" else 1440,
    shell:
        stage_cmd("retrain")
