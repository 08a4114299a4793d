"""`wsss supervise`: the fully supervised upper bound.

Epochs [train.cls_epochs, train.epochs) from the pretrain checkpoint, exactly as `wsss train`, but
the segmentation loss is taken against the ground-truth masks instead of the pseudo-labels
(``train.supervised_loss``). So the network, data, augmentation, schedule and classification
warm-up are those of the weak model: only the source of the pixel labels differs. Writes
``<results>/<dataset>/supervise.pt``, which ``wsss infer --checkpoint`` runs. Not part of the weak
pipeline's DAG: the ablation benchmark (workflow/rules/benchmark.smk) uses it as the upper bound.
"""

from __future__ import annotations

from wsss.engine import trainer


def run(cfg: dict, args) -> None:
    trainer.run_stage("supervise", cfg, args.results, getattr(args, "argv", None))
