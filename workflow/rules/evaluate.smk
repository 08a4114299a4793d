rule evaluate:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        infer="results/{dataset}/{split}/infer",
        crf="results/{dataset}/{split}/crf",
        code=stage_code("evaluate"),
    output:
        table="results/{dataset}_{split}_miou.csv",
        metrics="results/metrics/{dataset}_{split}.json",
        figure=report("results/{dataset}_{split}_iou.png", caption="../report/iou.rst", category="Evaluation",
                      subcategory="{dataset} {split}", labels={"figure": "per-class IoU"}),
        gallery=report("results/{dataset}_{split}_gallery.png", caption="../report/gallery.rst", category="Evaluation",
                       subcategory="{dataset} {split}", labels={"figure": "examples"}),
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


rule evaluate_stage2:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        infer="results/{dataset}/stage2/{split}/infer",
        crf="results/{dataset}/stage2/{split}/crf",
        code=stage_code("evaluate_stage2"),
    output:
        table="results/{dataset}_{split}_miou_stage2.csv",
        metrics="results/metrics/{dataset}_{split}_stage2.json",
        figure=report("results/{dataset}_{split}_iou_stage2.png", caption="../report/iou.rst", category="Second stage",
                      subcategory="{dataset} {split}", labels={"figure": "per-class IoU"}),
        gallery=report("results/{dataset}_{split}_gallery_stage2.png", caption="../report/gallery.rst",
                       category="Second stage", subcategory="{dataset} {split}", labels={"figure": "examples"}),
        config="results/{dataset}/stage2/{split}/evaluate.yaml",
    params:
        config=stage_params("evaluate_stage2"),
    log:
        "results/logs/{dataset}/stage2/{split}/evaluate.log",
    benchmark:
        "results/benchmarks/{dataset}/stage2/{split}/evaluate.tsv"
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        stage_cmd("evaluate", "--stage2", "-S data.eval_split={wildcards.split}")


# results/metrics/<dataset>_<split>_stage2.json would also fit evaluate's pattern, with split "<split>_stage2"
ruleorder: evaluate_stage2 > evaluate


rule evaluate_pseudo:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        pseudo="results/{dataset}/{train_split}/pseudo",
        code=stage_code("evaluate_pseudo"),
    output:
        table="results/{dataset}_{train_split}_pseudo_miou.csv",
        metrics="results/metrics/{dataset}_{train_split}_pseudo.json",
        figure=report("results/{dataset}_{train_split}_pseudo_iou.png", caption="../report/iou.rst",
                      category="Second stage", subcategory="{dataset} {train_split} pseudo-masks",
                      labels={"figure": "per-class IoU"}),
        config="results/{dataset}/{train_split}/evaluate_pseudo.yaml",
    params:
        config=stage_params("evaluate_pseudo"),
    log:
        "results/logs/{dataset}/{train_split}/evaluate_pseudo.log",
    benchmark:
        "results/benchmarks/{dataset}/{train_split}/evaluate_pseudo.tsv"
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        stage_cmd("evaluate", "--pseudo", "-S data.train_split={wildcards.train_split}")


# results/<dataset>_<train_split>_pseudo_miou.csv would also fit evaluate's pattern, with split "<train_split>_pseudo"
ruleorder: evaluate_pseudo > evaluate
