"""The ``wsss`` command: one subcommand per pipeline stage, each reading params.yaml and ``-S`` overrides."""

from __future__ import annotations

import argparse
import importlib
import sys

from wsss.errors import WsssError

# subcommand -> (module, one-line help). Modules are imported only when their stage runs.
STAGES = {
    "prepare": ("wsss.stages.prepare", "generate the embedded dataset, download/verify/extract VOC 2012 + SBD or "
                                       "MS COCO 2014, or verify and link your own VOC-format folder"),
    "pretrain": ("wsss.stages.pretrain", "classification-only epochs (the first part of the schedule)"),
    "train": ("wsss.stages.train", "single-stage self-supervised segmentation training, from the pretrain checkpoint"),
    "supervise": ("wsss.stages.supervise", "fully supervised upper bound: the same network and schedule, trained on "
                                           "ground-truth masks (not part of the weak pipeline)"),
    "infer": ("wsss.stages.infer", "multi-scale + flip inference on the evaluation split"),
    "crf": ("wsss.stages.crf", "dense-CRF refinement of the inferred masks, parallel over images"),
    "evaluate": ("wsss.stages.evaluate", "confusion matrix, per-class IoU, mIoU and pixel accuracy, raw and CRF"),
    "predict": ("wsss.stages.predict", "segment a folder of your own images with a trained checkpoint: masks, overlays "
                                       "and optionally the probabilities (multi-scale + flip, CRF)"),
    "submit": ("wsss.stages.submit", "the VOC evaluation server's archive: the test images' CRF masks as "
                                     "results/VOC2012/Segmentation/comp6_test_cls/*.png in results/<dataset>_test_submission.tar.gz"),
    "pseudo": ("wsss.stages.pseudo", "pseudo-masks of the training split (multi-scale + flip, image-level labels, CRF) "
                                     "for a second, fully supervised stage; `wsss evaluate --pseudo` scores them"),
    "retrain": ("wsss.stages.retrain", "the second stage: torchvision's DeepLabV3 trained on the pseudo-masks"),
    "benchmark-report": ("wsss.benchmark.report", "the ablation benchmark's table, orderings, figures and examples "
                                                  "(run by the results/benchmark/report.md target)"),
    "benchmark-probes": ("wsss.benchmark.probes", "the benchmark's diagnostic inference modes beside the main ones "
                                                  "(run by the results/benchmark/probes.md target)"),
    "benchmark-plugins": ("wsss.benchmark.plugins", "the benchmark's on-request plug-in variants, each paired with "
                                                    "its own baseline (run by the results/benchmark/plugins.md target)"),
    "benchmark-two-stage": ("wsss.benchmark.two_stage", "the benchmark's two-stage rows: pseudo-masks, the second "
                                                        "stage and its ground-truth ceiling, paired with the single "
                                                        "stage (run by the results/benchmark/two_stage.md target)"),
    "model-info": ("wsss.stages.model_info", "parameter counts and output shapes of the configured model (JSON)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsss", description="Weakly-supervised semantic segmentation pipeline (WS-FCN / SSSS).")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", action="append", default=None, metavar="PATH",
                       help="params file (default: $WSSS_PARAMS, a list separated by ':', else params.yaml); "
                            "repeat to overlay files, later ones win")
        p.add_argument("-S", "--set", action="append", default=[], dest="overrides", metavar="KEY.PATH=VALUE",
                       help="override a parameter, typed as in `dvc exp run -S` (e.g. -S model.fca=false)")
        if name not in ("prepare", "model-info", "benchmark-report", "benchmark-probes", "benchmark-plugins",
                        "benchmark-two-stage"):
            p.add_argument("--results", default="results", metavar="DIR",
                           help="root of this stage's inputs and outputs from earlier stages (default: results)")
        if name in ("infer", "crf", "evaluate"):
            which = p.add_mutually_exclusive_group() if name == "evaluate" else p
            which.add_argument("--stage2", action="store_true",
                               help="the second stage: the network `wsss retrain` trained (results/<dataset>/stage2/...)")
            if name == "evaluate":
                which.add_argument("--pseudo", action="store_true",
                                   help="score the pseudo-masks of `wsss pseudo` on pseudo.score_split instead")
        if name in ("infer", "crf"):
            sharding = p.add_mutually_exclusive_group()
            sharding.add_argument("--shard", default=None, metavar="I/N",
                                  help="only the I-th of N contiguous blocks of the images (1-based), into "
                                       f"<{name} folder>.shards/I-of-N/, for `--gather N` to join")
            sharding.add_argument("--gather", type=int, default=None, metavar="N",
                                  help=f"join the N shards into the {name} folder, refusing a missing or foreign one")
        if name == "predict":
            p.add_argument("images", metavar="IMAGES", help="a folder of images (JPEG, PNG, BMP, TIFF, WebP; any size or mode)")
            p.add_argument("out", metavar="OUT", help="where masks/, overlays/ (and probs/) go; a re-run continues there")
            p.add_argument("--probs", action="store_true", help="also write each image's class scores (probs/<name>.npz)")
            p.add_argument("--no-crf", action="store_true", help="the masks without the dense CRF")
            p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                           help="a file that is not a readable image: stop naming it (default; what was done stays and "
                                "a re-run continues), or skip it, list it in OUT/skipped.tsv and go on")
        if name in ("infer", "pseudo", "predict", "submit"):
            stage2 = ", with --stage2 retrain.pt" if name == "infer" else ""
            p.add_argument("--checkpoint", default=None, metavar="PATH",
                           help=f"the model to run (default: <results>/<dataset>/train.pt{stage2}); "
                                "e.g. a `wsss supervise` checkpoint")
        if name == "retrain":
            p.add_argument("--ground-truth", action="store_true",
                           help="train on the training split's ground-truth masks instead of the pseudo-masks: "
                                "the fully supervised ceiling of the second stage")
        if name in ("benchmark-report", "benchmark-probes", "benchmark-plugins", "benchmark-two-stage"):
            p.add_argument("--design", default="workflow/benchmark.yaml", metavar="PATH", help="the benchmark design file")
            p.add_argument("--runs", default="results/benchmark/runs", metavar="DIR", help="where the runs are")
            p.add_argument("--out", default="results/benchmark", metavar="DIR", help="where the report goes")
        if name == "model-info":
            p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                           help="input size for the output shapes (default: train.crop_size)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to re-run the command under torchrun
    from wsss import config

    try:
        cfg = config.load(args.params or config.default_params_files(), args.overrides)
        module = importlib.import_module(STAGES[args.stage][0])
        module.run(cfg, args)
    except WsssError as exc:
        print(f"wsss {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsss {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
