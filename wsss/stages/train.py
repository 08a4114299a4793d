"""`wsss train`: single-stage self-supervised segmentation, epochs [train.cls_epochs, train.epochs),
continuing from the pretrain checkpoint (model, optimiser and epoch)."""

from __future__ import annotations

from wsss.engine import trainer


def run(cfg: dict, args) -> None:
    trainer.run_stage("train", cfg, args.results, getattr(args, "argv", None))
