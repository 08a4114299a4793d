rule pseudo:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        checkpoint="results/{dataset}/train.pt",
        code=stage_code("pseudo"),
    output:
        directory("results/{dataset}/{train_split}/pseudo"),
    params:
        config=stage_params("pseudo"),
    log:
        "results/logs/{dataset}/{train_split}/pseudo.log",
    benchmark:
        "results/benchmarks/{dataset}/{train_split}/pseudo.tsv"
    threads: workflow.cores
    resources:
        gpu=lambda wc: 0 if wc.dataset == "toy" else 1,
        mem_mb=lambda wc: 8000 if wc.dataset == "toy" else 16000,
        runtime=lambda wc: 60 if wc.dataset == "toy" else 720,
    shell:
        stage_cmd("pseudo", "-S data.train_split={wildcards.train_split}")

