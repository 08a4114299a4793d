rule train:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        checkpoint="results/{dataset}/pretrain.pt",
        code=stage_code("train"),
    output:
        checkpoint="results/{dataset}/train.pt",
        config="results/{dataset}/train.yaml",
        curve="results/{dataset}/train_log.tsv",
        validation="results/{dataset}/train_val.tsv",
        figure=report("results/{dataset}/train_curve.png", caption="../report/train_curve.rst", category="Training",
                      subcategory="{dataset}", labels={"figure": "training curve"}),
    params:
        config=stage_params("train"),
    log:
        "results/logs/{dataset}/train.log",
    benchmark:
        "results/benchmarks/{dataset}/train.tsv"
    threads: workflow.cores
    resources:
        gpu=training_gpus,
        mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 32000,
        runtime=lambda wc: 60 if wc.dataset == "toy" else 2880,
    shell:
        stage_cmd("train")
