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
        gpu=lambda wc: 0 if wc.dataset == "toy" else 1,
        mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 16000,
        runtime=lambda wc: 30 if wc.dataset == "toy" else 240,
    shell:
        stage_cmd("infer", "-S data.eval_split={wildcards.split}")


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
        gpu=lambda wc: 0 if wc.dataset == "toy" else 1,
        mem_mb=lambda wc: 4000 if wc.dataset == "toy" else 16000,
        runtime=lambda wc: 30 if wc.dataset == "toy" else 240,
    shell:
        stage_cmd("infer", "--stage2", "-S data.eval_split={wildcards.split}")
