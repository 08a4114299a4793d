"""`wsss pretrain`: the classification-only epochs [0, train.cls_epochs) of the schedule."""

from __future__ import annotations

from wsss.engine import trainer
from wsss.errors import WsssError
from wsss.paths import for_config


def run(cfg: dict, args) -> None:
    paths = for_config(cfg)
    if not (paths.data / "prepared.json").is_file():
        raise WsssError(f"dataset not prepared: {paths.data}/prepared.json is missing; run `wsss prepare` first")
    phase = trainer.phase_for("pretrain", cfg)
    trainer.run(cfg, phase, paths.checkpoint("pretrain"), paths.train_log("pretrain"), paths.stage_config("pretrain"))
    print(f"pretrain: wrote {paths.checkpoint('pretrain')} (epochs 0-{phase.end_epoch})")
