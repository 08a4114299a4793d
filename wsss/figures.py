"""Figures of the pipeline's results (matplotlib on the file-only Agg backend).

Presentation only: the numbers they show are computed and tested elsewhere (``wsss.metrics``,
``wsss.stages.evaluate``), so the mutation tests leave this module out.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.utils.atomic import atomic_path

MAX_TICK_CLASSES = 30  # more classes than this: the confusion matrix is drawn without tick labels


def iou_figure(df: pd.DataFrame, conf: np.ndarray, title: str, path: Path) -> None:
    """The evaluate stage's figure, written atomically to ``path`` (PNG): per-class IoU, raw and with
    CRF, beside the row-normalised confusion matrix ``conf`` (``(C, C)``, rows ground truth).

    ``df`` is the evaluate stage's table: one row per class, then the ``mean`` row last. The matrix's
    axes are labelled with the class names up to ``MAX_TICK_CLASSES`` classes (VOC's 21; not COCO's 81).
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
    shown = ax2.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax2, fraction=0.046, pad=0.04, label="share of the row's pixels")
    if len(per_class) == len(norm) and len(norm) <= MAX_TICK_CLASSES:
        ticks = np.arange(len(norm))
        ax2.set_xticks(ticks, per_class["class"], rotation=90, fontsize=7)
        ax2.set_yticks(ticks, per_class["class"], fontsize=7)
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


def gallery_figure(rows: list[tuple[str, list[np.ndarray]]], columns: list[str], class_names: list[str], title: str,
                   path: Path, ignore_index: int = 255) -> None:
    """Example images beside their masks, written atomically to ``path`` (PNG): one row per image, one
    column per entry of ``columns`` (their titles, e.g. image, ground truth, prediction, prediction + CRF).

    ``rows``: ``(name, panels)`` per image, ``panels`` in the order of ``columns``: the RGB image
    (``(H, W, 3)`` uint8) first, then class-index masks (``(H, W)``, values ``0..C-1`` or
    ``ignore_index``), drawn in the VOC palette. Each row is labelled with the image's name and the
    classes of its ground truth (the second panel) but the first (their count past four); a legend
    below names every class that any mask shows (``class_names[i]``, ``class_i`` past its end), and
    ``ignore_index`` as ``ignore``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from wsss.data.palette import colorize, voc_palette

    def name_of(index: int) -> str:
        if index == ignore_index:
            return "ignore"
        return class_names[index] if index < len(class_names) else f"class_{index}"

    aspect = float(np.median([panels[0].shape[0] / panels[0].shape[1] for _, panels in rows])) if rows else 1.0
    width = 2.3
    fig, axes = plt.subplots(max(len(rows), 1), len(columns), squeeze=False, layout="constrained",
                             figsize=(width * len(columns) + 0.6, width * aspect * max(len(rows), 1) + 1.0))
    shown: set[int] = set()
    for r, (name, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel)
            else:
                mask = np.asarray(panel)
                shown |= {int(v) for v in np.unique(mask)}
                ax.imshow(colorize(mask), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        gt_classes = [name_of(int(v)) for v in np.unique(panels[1]) if 0 < v != ignore_index] if len(panels) > 1 else []
        listed = ", ".join(gt_classes) if len(gt_classes) <= 4 else f"{len(gt_classes)} classes"
        axes[r][0].set_ylabel("\n".join([name, *textwrap.wrap(listed, 24)]), fontsize=7)
    palette = np.array(voc_palette(), dtype=float).reshape(256, 3) / 255
    handles = [Patch(facecolor=palette[i], edgecolor="0.3", label=name_of(i)) for i in sorted(shown)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
