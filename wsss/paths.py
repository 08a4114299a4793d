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
    train_split: str = "train_aug"
    stage2: bool = False  # the second stage's inference, CRF and evaluation (the network `wsss retrain` trained)

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

    def val_log(self, stage: str) -> Path:
        """The validation rows of ``train`` / ``supervise`` (``wsss.engine.validation.VAL_COLUMNS``)."""
        return self.run / f"{stage}_val.tsv"

    def curve_figure(self, stage: str) -> Path:
        """The training and validation loss of ``train`` / ``supervise``, the selected epoch marked."""
        return self.run / f"{stage}_curve.png"

    def stage_config(self, stage: str) -> Path:
        return self.run / f"{stage}.yaml"

    @property
    def _eval_dir(self) -> Path:
        return self.run / "stage2" / self.split if self.stage2 else self.run / self.split

    @property
    def _suffix(self) -> str:
        return "_stage2" if self.stage2 else ""

    @property
    def infer(self) -> Path:
        return self._eval_dir / "infer"

    @property
    def crf(self) -> Path:
        return self._eval_dir / "crf"

    @property
    def miou_csv(self) -> Path:
        return self.results / f"{self.dataset}_{self.split}_miou{self._suffix}.csv"

    @property
    def metrics_json(self) -> Path:
        return self.results / "metrics" / f"{self.dataset}_{self.split}{self._suffix}.json"

    @property
    def eval_config(self) -> Path:
        return self._eval_dir / "evaluate.yaml"

    @property
    def iou_figure(self) -> Path:
        return self.results / f"{self.dataset}_{self.split}_iou{self._suffix}.png"

    @property
    def gallery_figure(self) -> Path:
        """Validation images beside their ground truth and predictions (``wsss.stages.evaluate.GALLERY_IMAGES``)."""
        return self.results / f"{self.dataset}_{self.split}_gallery{self._suffix}.png"

    @property
    def submission(self) -> Path:
        """The VOC evaluation server's archive of the test masks (``wsss submit``)."""
        return self.results / f"{self.dataset}_test_submission.tar.gz"

    @property
    def pseudo(self) -> Path:
        """The training split's pseudo-masks (``wsss pseudo``)."""
        return self.run / self.train_split / "pseudo"

    @property
    def pseudo_csv(self) -> Path:
        return self.results / f"{self.dataset}_{self.train_split}_pseudo_miou.csv"

    @property
    def pseudo_metrics_json(self) -> Path:
        return self.results / "metrics" / f"{self.dataset}_{self.train_split}_pseudo.json"

    @property
    def pseudo_iou_figure(self) -> Path:
        return self.results / f"{self.dataset}_{self.train_split}_pseudo_iou.png"

    @property
    def pseudo_eval_config(self) -> Path:
        return self.run / self.train_split / "evaluate_pseudo.yaml"


def for_config(cfg: dict, results: str | Path | None = None, stage2: bool = False) -> StagePaths:
    """The paths for ``cfg``; ``results`` (the stage CLIs' ``--results``) moves every output under another root;
    ``stage2``: infer, crf and evaluate of the second stage (``--stage2``)."""
    return StagePaths(dataset=cfg["data"]["name"], split=cfg["data"]["eval_split"], data_root=Path(cfg["data"]["root"]),
                      results=Path(results) if results is not None else Path("results"),
                      train_split=cfg["data"]["train_split"], stage2=stage2)
