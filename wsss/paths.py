"""Where each stage reads and writes. Both engines (Snakefile, dvc.yaml) use these same paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StagePaths:
    dataset: str
    split: str
    data_root: Path = Path("data")
    results: Path = Path("results")

    @property
    def data(self) -> Path:
        return self.data_root / self.dataset

    @property
    def run(self) -> Path:
        return self.results / self.dataset

    @property
    def state(self) -> Path:
        """Resumable mid-run checkpoints; not a stage output, so an interrupted run keeps them."""
        return self.run / "state"

    def checkpoint(self, stage: str) -> Path:
        return self.run / f"{stage}.pt"

    def train_log(self, stage: str) -> Path:
        return self.run / f"{stage}_log.tsv"

    def stage_config(self, stage: str) -> Path:
        return self.run / f"{stage}.yaml"

    @property
    def infer(self) -> Path:
        return self.run / self.split / "infer"

    @property
    def crf(self) -> Path:
        return self.run / self.split / "crf"

    @property
    def miou_csv(self) -> Path:
        return self.results / f"{self.dataset}_{self.split}_miou.csv"

    @property
    def metrics_json(self) -> Path:
        return self.results / "metrics" / f"{self.dataset}_{self.split}.json"

    @property
    def eval_config(self) -> Path:
        return self.run / self.split / "evaluate.yaml"

    @property
    def iou_figure(self) -> Path:
        return self.results / f"{self.dataset}_{self.split}_iou.png"


def for_config(cfg: dict, results: str | Path | None = None) -> StagePaths:
    """The paths for ``cfg``; ``results`` (the stage CLIs' ``--results``) moves every output under another root."""
    return StagePaths(dataset=cfg["data"]["name"], split=cfg["data"]["eval_split"], data_root=Path(cfg["data"]["root"]),
                      results=Path(results) if results is not None else Path("results"))
