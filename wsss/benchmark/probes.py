"""`wsss benchmark-probes`: the benchmark's diagnostic inference modes, beside the main table's.

The design's ``probes`` run more inference modes (one scale at a time, the network's own background,
...) on the trained models of ``probes.variants``. This reads those runs and the same variants' main
modes, and writes into ``--out``:

- ``probes.csv``: one row per variant x seed x mode x CRF (mIoU, pixel accuracy, background IoU);
- ``probes.md``: mIoU and background IoU, mean ± sample std over seeds, every mode side by side;
- ``probes.png``: mIoU per variant and mode, without and with CRF (error bars = std over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.benchmark import design as bench_design
from wsss.benchmark.report import collect, pyplot, save_figure, summarise, summary_cell, summary_value
from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path, write_text

BACKGROUND = "background"


def scores(design: bench_design.Design, cfg: dict, runs: Path) -> pd.DataFrame:
    """One row per probe variant, seed, mode (main modes first, then probes) and CRF, with background IoU."""
    modes = design.all_modes
    rows, classes = collect(design, cfg, runs, design.probe_variants, modes)
    bg = classes[classes["class"] == BACKGROUND].drop(columns="class").rename(columns={"iou": "background_iou"})
    return rows.merge(bg, on=["variant", "seed", "mode", "crf"], how="left")


def markdown(design: bench_design.Design, summary: pd.DataFrame, images: int) -> str:
    modes = design.all_modes
    lines = ["# Benchmark probes", "",
             "Made by `snakemake --cores 2 results/benchmark/probes.md` from the trained models of the benchmark "
             f"(`{design.path.as_posix()}`, key `probes`): more inference modes on the same checkpoints. "
             "Seeds: " + "; ".join(f"{design.variants[v].label} {', '.join(map(str, design.variants[v].seeds))}"
                                   for v in design.probe_variants)
             + f"; {images} validation images; mean ± sample std over seeds. "
             f"The first {len(design.modes)} columns are the main table's modes.", "",
             "| mode | settings |", "|---|---|"]
    for name in modes:
        settings = ", ".join(f"{k}={bench_design.typed_value(v)}" for k, v in design.mode(name).params.items())
        lines.append(f"| {design.mode(name).label} | {settings or 'params.yaml'} |")
    tables = (("mIoU", "miou", False), ("mIoU with CRF", "miou", True), ("Background IoU", "background_iou", False))
    for title, column, crf in tables:
        lines += ["", f"## {title}", "", "| configuration | " + " | ".join(design.mode(m).label for m in modes) + " |",
                  "|---|" + "---:|" * len(modes)]
        for variant in design.probe_variants:
            cells = [summary_cell(summary, variant, m, crf, column) for m in modes]
            lines.append(f"| {design.variants[variant].label} | " + " | ".join(cells) + " |")
    lines += ["", "![mIoU per mode](probes.png)", ""]
    return "\n".join(lines)


def figure(design: bench_design.Design, summary: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    modes = design.all_modes
    variants = design.probe_variants
    fig, axes = plt.subplots(1, 2, figsize=(2.2 * len(variants) + 3, 4.8), sharey=True)
    width = 0.8 / len(modes)
    colors = plt.cm.tab10(np.arange(len(modes)) % 10)
    for ax, crf in zip(axes, (False, True)):
        for i, mode in enumerate(modes):
            means = [summary_value(summary, v, mode, crf, "miou_mean") for v in variants]
            stds = [summary_value(summary, v, mode, crf, "miou_std") for v in variants]
            xs = np.arange(len(variants)) + (i - (len(modes) - 1) / 2) * width
            ax.bar(xs, means, width, yerr=np.nan_to_num(stds), capsize=2, label=design.mode(mode).label, color=colors[i])
        ax.set_xticks(np.arange(len(variants)), [design.variants[v].label for v in variants], rotation=15, ha="right")
        ax.set_title("with CRF" if crf else "without CRF")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mIoU (mean ± std over each configuration's seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(modes) / 4), 1, 1))
    save_figure(fig, path)


def run(cfg: dict, args) -> None:
    params_files = args.params or ["params.yaml"]
    design = bench_design.load(args.design, params_files)
    if not design.probes:
        raise WsssError(f"{args.design}: no 'probes' entry: nothing to report")
    runs, out = Path(args.runs), Path(args.out)
    rows = scores(design, design.config(params_files, design.reference), runs)
    summary = summarise(rows, ("miou", "background_iou"))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "probes.csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.6f")
    figure(design, summary, out / "probes.png")
    text = markdown(design, summary, int(rows["images"].iloc[0]))
    write_text(out / "probes.md", text)
    print(text)
