rule evaluate:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        infer="results/{dataset}/{split}/infer",
        crf="results/{dataset}/{split}/crf",
        code=stage_code("evaluate"),
    output:
        table="results/{dataset}_{split}_miou.csv",
        metrics="results/metrics/{dataset}_{split}.json",
        figure="results/{dataset}_{split}_iou.png",
        config="results/{dataset}/{split}/evaluate.yaml",
    params:
        config=stage_params("evaluate"),
    log:
        "results/logs/{dataset}/{split}/evaluate.log",
    benchmark:
        "results/benchmarks/{dataset}/{split}/evaluate.tsv"
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        stage_cmd("evaluate", "-S data.eval_split={wildcards.split}")
