# The PASCAL VOC evaluation server's archive (`wsss submit`): the test images' CRF masks as
# results/VOC2012/Segmentation/comp6_test_cls/*.png, from the dataset's own test list (the embedded
# dataset) or data.test_source (VOC2012test.tar, extracted).
rule submit:
    input:
        data=f"{DATA_ROOT}/{{dataset}}",
        checkpoint="results/{dataset}/train.pt",
        code=stage_code("submit"),
    output:
        "results/{dataset}_test_submission.tar.gz",
    params:
        config=stage_params("submit"),
    log:
        "results/logs/{dataset}/submit.log",
    benchmark:
        "results/benchmarks/{dataset}/submit.tsv"
    threads: workflow.cores
    resources:
        **INFER_RESOURCES,
    shell:
        stage_cmd("submit")
