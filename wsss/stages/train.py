"""`wsss train`: single-stage self-supervised segmentation, epochs [train.cls_epochs, train.epochs),
continuing from the pretrain checkpoint (model, optimiser and epoch)."""

from __future__ import annotations

from wsss.engine import trainer
from wsss.errors import WsssError
from wsss.paths import for_config


def run(cfg: dict, args) -> None:
    paths = for_config(cfg)
    if not (paths.data / "prepared.json").is_file():
        raise WsssError(f"dataset not prepared: {paths.data}/prepared.json is missing; run `wsss prepare` first")
    phase = trainer.phase_for("train", cfg)
    trainer.run(cfg, phase, paths.checkpoint("train"), paths.train_log("train"), paths.stage_config("train"))
    print(f"train: wrote {paths.checkpoint('train')} (epochs {phase.first_epoch}-{phase.end_epoch})")
