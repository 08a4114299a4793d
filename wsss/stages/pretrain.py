"""`wsss pretrain`: the classification-only epochs [0, train.cls_epochs) of the schedule."""

from __future__ import annotations

from wsss.engine import trainer


def run(cfg: dict, args) -> None:
    trainer.run_stage("pretrain", cfg, args.results, getattr(args, "argv", None))
