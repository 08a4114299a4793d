"""Figures of the pipeline's results (matplotlib on the file-only Agg backend).

Presentation only: the numbers they show are computed and tested elsewhere (``wsss.metrics``,
``wsss.stages.evaluate``), so the mutation tests leave this module out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsss.utils.atomic import atomic_path


def iou_figure(df: pd.DataFrame, conf: np.ndarray, title: str, path: Path) -> None:
    """The evaluate stage's figure, written atomically to ``path`` (PNG): per-class IoU, raw and with
    CRF, beside the row-normalised confusion matrix ``conf`` (``(C, C)``, rows ground truth).

    ``df`` is the evaluate stage's table: one row per class, then the ``mean`` row last.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = df[df["class"] != "mean"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    x = np.arange(len(per_class))
    ax1.bar(x - 0.2, per_class["iou"], 0.4, label=f"raw (mIoU {df['iou'].iloc[-1]:.3f})")
    ax1.bar(x + 0.2, per_class["iou_crf"], 0.4, label=f"CRF (mIoU {df['iou_crf'].iloc[-1]:.3f})")
    ax1.set_xticks(x, per_class["class"], rotation=60, ha="right", fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("IoU")
    ax1.set_title(title)
    ax1.legend()
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax2.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax2.set_title("confusion (CRF), rows normalised")
    ax2.set_xlabel("predicted")
    ax2.set_ylabel("ground truth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def training_curve(rows: list[dict], val_rows: list[dict], selected: dict, title: str, path: Path) -> None:
    """A training stage's figure, written atomically to ``path`` (PNG): the logged training loss and
    its terms against the optimiser step, the validation loss at the step it was computed, and the
    epoch whose weights the checkpoint holds (``selected``: ``rule``, ``epoch``, ``score``) marked.

    ``rows``: the stage's curve rows (``step``, ``loss``, ``cls``, ``seg``); ``val_rows``: its
    validation rows (``epoch``, ``step``, ``val_loss``); either may be empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if rows:
        steps = [r["step"] for r in rows]
        for column, style in (("loss", "-"), ("cls", ":"), ("seg", "--")):
            ax.plot(steps, [r[column] for r in rows], style, lw=1, label=f"training {column}")
    if val_rows:
        ax.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", color="black",
                label="validation loss")
        for r in val_rows:
            ax.annotate(f"{r['epoch']} ep.", (r["step"], r["val_loss"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
    if selected["rule"] == "best":
        chosen = next(r for r in val_rows if r["epoch"] == selected["epoch"])
        ax.plot([chosen["step"]], [chosen["val_loss"]], "*", ms=16, color="tab:red",
                label=f"kept: the weights after {selected['epoch']} epochs (score {selected['score']:.4f})")
        kept = "the weights with the best 1 - mean validation loss"
    else:
        kept = f"the last weights (after {selected['epoch']} epochs)"
    ax.set_title(f"{title}: kept {kept}", fontsize=10)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    if ax.get_legend_handles_labels()[0]:  # a run too short for a curve row has nothing to label
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
