"""`wsss benchmark-report`: the ablation benchmark's table, checks, figures and example page.

Reads every run's evaluation (``<runs>/<variant>/s<seed>/<mode>/metrics/<dataset>_<split>.json`` and the
per-class CSV beside it) and writes into ``--out``:

- ``runs.csv``: one row per variant x seed x inference mode x CRF;
- ``summary.csv``: mean and sample std over seeds of mIoU and pixel accuracy;
- with ``paired`` variants in the design (:mod:`wsss.benchmark.paired`): ``paired.csv`` (per-seed mIoU
  differences to the reference, mean and 95 % interval, and the diagnostics' differences), ``costs.csv``
  (step time and peak memory per run) and ``paired.png``;
- ``report.md``: the command, dataset knobs and schedule, the table (with parameter counts), the
  paper's orderings checked on the means, and the figures;
- ``miou.png`` (mIoU per configuration, error bars = std over seeds), ``per_class.png`` (per-class
  IoU of the reference against the upper bound) and ``examples.png`` (image, ground truth, CAM,
  reference mask, reference + CRF, upper bound, for the first validation images).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.benchmark import design as bench_design
from wsss.benchmark import paired
from wsss.data.dataset import read_image, read_split
from wsss.data.palette import colorize, load_mask
from wsss.errors import WsssError
from wsss.paths import StagePaths, for_config
from wsss.utils.atomic import atomic_path, write_text

UPPER_BOUND_SHARE = 0.75  # the reference must reach this share of the upper bound's mIoU
KNOBS = ["part_contrast", "part_fraction", "context_prob", "occlusion", "clutter", "max_objects", "min_size",
         "max_size", "n_train", "n_val", "num_classes", "ignore_width", "seed"]
SCHEDULE = ["train.epochs", "train.cls_epochs", "train.batch_size", "train.crop_size", "train.lr", "model.backbone",
            "model.head_channels"]


def _settings(design: bench_design.Design) -> list[tuple[str, bool, str]]:
    """(mode, crf, column label) in table order: every mode without, then with CRF."""
    return [(m, crf, f"{design.modes[m].label}{' + CRF' if crf else ''}") for m in design.modes for crf in (False, True)]


def run_paths(cfg: dict, runs: Path, variant: str, seed: int, mode: str) -> StagePaths:
    """Where one run's inference mode wrote its stage outputs (its stages ran with that --results)."""
    return for_config(cfg, runs / variant / f"s{seed}" / mode)


def collect(design: bench_design.Design, cfg: dict, runs: Path, variants: list[str] | None = None,
            modes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run scores (one row per variant, seed, mode, crf) and per-class IoU, precision and recall (one row per
    class and run), for the given variants (each with its seeds) and modes (default: the main table's)."""
    rows, classes = [], []
    for variant, seed in design.runs(variants):
        for mode in modes or list(design.modes):
            paths = run_paths(cfg, runs, variant, seed, mode)
            folder = paths.results
            try:
                metrics = json.loads(paths.metrics_json.read_text())
                table = pd.read_csv(paths.miou_csv)
            except FileNotFoundError as exc:
                raise WsssError(f"benchmark run missing: {exc.filename}; run the benchmark target first") from None
            except (json.JSONDecodeError, pd.errors.ParserError) as exc:
                raise WsssError(f"unreadable benchmark result under {folder}: {exc}") from None
            for crf, suffix in ((False, ""), (True, "_crf")):
                rows.append({"variant": variant, "seed": seed, "mode": mode, "crf": crf,
                             "miou": metrics[f"miou{suffix}"], "pixel_acc": metrics[f"pixel_acc{suffix}"],
                             "images": metrics["images"]})
                per_class = table[table["class"] != "mean"]
                for name, iou, precision, recall in zip(per_class["class"], per_class[f"iou{suffix}"],
                                                        per_class[f"precision{suffix}"], per_class[f"recall{suffix}"]):
                    classes.append({"variant": variant, "seed": seed, "mode": mode, "crf": crf, "class": name,
                                    "iou": iou, "precision": precision, "recall": recall})
    return pd.DataFrame(rows), pd.DataFrame(classes)


def summarise(runs: pd.DataFrame, metrics: tuple[str, ...] = ("miou", "pixel_acc")) -> pd.DataFrame:
    """Mean and sample std over seeds of each metric column, per variant, mode and CRF."""
    grouped = runs.groupby(["variant", "mode", "crf"], sort=False)
    stats = {f"{m}_{stat}": (m, stat) for m in metrics for stat in ("mean", "std")}
    return grouped.agg(**stats, seeds=("seed", "nunique")).reset_index()


def param_counts(design: bench_design.Design, params_files: list[str], variants: list[str] | None = None,
                 voc: bool = True) -> dict[str, tuple[float, float]]:
    """Trainable parameters per variant (default: the main table's), its plug-ins' heads included: at the
    benchmark's size (thousands) and, with ``voc``, at VOC size (WR38, millions; else nan)."""
    import torch

    from wsss.model.network import build_model
    from wsss.plugins import build_plugins

    counts = {}
    for name in variants or design.ladder:
        sizes = []
        # at VOC size under the design's short schedule, which validates none of its epochs: `last` keeps it valid
        for extra in ([], ["data.name=voc", "train.select=last"]) if voc else ([],):
            cfg = bench_design.params.load(params_files, design.overrides(name) + extra)
            with torch.device("meta"):
                model = build_model(cfg, load_weights=False)
                plugins = build_plugins(cfg, model)
            sizes.append(sum(p.numel() for m in (model, plugins) for p in m.parameters() if p.requires_grad))
        counts[name] = (sizes[0] / 1e3, sizes[1] / 1e6 if voc else float("nan"))
    return counts


def summary_value(summary: pd.DataFrame, variant: str, mode: str, crf: bool, column: str = "miou_mean") -> float:
    row = summary[(summary["variant"] == variant) & (summary["mode"] == mode) & (summary["crf"] == crf)]
    return float(row[column].iloc[0])


def summary_cell(summary: pd.DataFrame, variant: str, mode: str, crf: bool, metric: str) -> str:
    """A table cell: the metric's mean ± std over seeds (the mean alone with one seed)."""
    mean = summary_value(summary, variant, mode, crf, f"{metric}_mean")
    std = summary_value(summary, variant, mode, crf, f"{metric}_std")
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def checks(design: bench_design.Design, summary: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """The paper's orderings on the means over seeds: (claim, holds, the numbers)."""
    out = []
    settings = _settings(design)
    ladder = [v for v in ("cam", "ssss", design.reference) if v in design.ladder]
    for mode, crf, label in settings:
        values = [summary_value(summary, v, mode, crf) for v in ladder]
        holds = all(a <= b for a, b in zip(values, values[1:]))
        chain = " ≤ ".join(f"{design.variants[v].label} {x:.3f}" for v, x in zip(ladder, values))
        out.append((f"{' ≥ '.join(design.variants[v].label for v in reversed(ladder))} ({label})", holds, chain))
    modes = list(design.modes)
    weak = [v for v in design.ladder if design.variants[v].trainer == "weak"]
    if len(modes) >= 2:
        first, last = modes[0], modes[-1]
        for crf in (False, True):
            diffs = [summary_value(summary, v, last, crf) - summary_value(summary, v, first, crf) for v in weak]
            detail = ", ".join(f"{design.variants[v].label} {d:+.3f}" for v, d in zip(weak, diffs))
            out.append((f"{design.modes[last].label} ≥ {design.modes[first].label}{' (with CRF)' if crf else ''}, "
                        f"on average over the weak configurations", float(np.mean(diffs)) >= 0,
                        f"mean difference {np.mean(diffs):+.3f} ({detail})"))
    for mode in modes:
        diffs = [summary_value(summary, v, mode, True) - summary_value(summary, v, mode, False) for v in weak]
        detail = ", ".join(f"{design.variants[v].label} {d:+.3f}" for v, d in zip(weak, diffs))
        out.append((f"CRF ≥ no CRF ({design.modes[mode].label}), on average over the weak configurations",
                    float(np.mean(diffs)) >= 0, f"mean difference {np.mean(diffs):+.3f} ({detail})"))
    last = modes[-1]
    ref, ub = summary_value(summary, design.reference, last, True), summary_value(summary, design.upper_bound, last, True)
    share = ref / ub if ub > 0 else float("nan")
    out.append((f"{design.variants[design.reference].label} ({design.modes[last].label} + CRF) ≥ "
                f"{UPPER_BOUND_SHARE:.0%} of the upper bound", share >= UPPER_BOUND_SHARE,
                f"{ref:.3f} / {ub:.3f} = {share:.1%}"))
    return out


def job_time(design: bench_design.Design, runs: Path) -> tuple[float, int]:
    """(sum of job seconds, number of jobs) from Snakemake's benchmark files: training and the main
    table's inference modes, not the probes nor the second stage's runs. File times are not used: a copy or checkout resets them."""
    total, jobs = 0.0, 0
    for tsv in runs.glob("*/s*/benchmarks/*.tsv"):
        folder = tsv.relative_to(runs).parts[0]
        if folder not in (*design.ladder, *{design.variant_backbone(v) for v in design.ladder}):  # the second stage's,
            continue                                                                               # the plug-in report's
        if any(tsv.stem.startswith(f"{probe}_") for probe in design.probes):  # <probe>_<stage>.tsv
            continue
        try:
            total += float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        except (KeyError, IndexError, ValueError, pd.errors.ParserError):
            continue
        jobs += 1
    return total, jobs


def figure_miou(design: bench_design.Design, summary: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    settings = _settings(design)
    variants = design.ladder
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 2, 4.2))
    width = 0.8 / len(settings)
    colors = plt.cm.tab20(np.linspace(0, 1, 20))[: len(settings)]
    for i, (mode, crf, label) in enumerate(settings):
        means = [summary_value(summary, v, mode, crf) for v in variants]
        stds = [summary_value(summary, v, mode, crf, "miou_std") for v in variants]
        xs = np.arange(len(variants)) + (i - (len(settings) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=np.nan_to_num(stds), capsize=2, label=label, color=colors[i])
    ax.set_xticks(np.arange(len(variants)), [design.variants[v].label for v in variants], rotation=20, ha="right")
    ax.set_ylabel("mIoU (mean ± std over each configuration's seeds)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def figure_per_class(design: bench_design.Design, classes: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    mode = list(design.modes)[-1]
    picked = classes[(classes["mode"] == mode) & classes["crf"]]
    names = list(dict.fromkeys(picked["class"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.0))
    for offset, variant in ((-0.2, design.reference), (0.2, design.upper_bound)):
        stats = picked[picked["variant"] == variant].groupby("class", sort=False)["iou"].agg(["mean", "std"]).reindex(names)
        ax.bar(np.arange(len(names)) + offset, stats["mean"], 0.4, yerr=np.nan_to_num(stats["std"]), capsize=2,
               label=f"{design.variants[variant].label}")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("IoU (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title(f"per-class IoU, {design.modes[mode].label} + CRF")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def figure_examples(design: bench_design.Design, cfg: dict, runs: Path, path: Path) -> None:
    plt = pyplot()
    mode = list(design.modes)[-1]
    cam = "cam" if "cam" in design.variants else design.reference
    shown = [cam, design.reference, *design.paired, design.upper_bound]
    seed = next(s for s in design.seeds if all(s in design.variants[v].seeds for v in shown))
    split = cfg["data"]["eval_split"]
    data = for_config(cfg).data
    names = read_split(data, split)[: design.qualitative]
    ref, ub = design.variants[design.reference].label, design.variants[design.upper_bound].label

    def masks(variant: str, stage: str) -> Path:
        return getattr(run_paths(cfg, runs, variant, seed, mode), stage) / "masks"

    columns = [("image", None), ("ground truth", data / "SegmentationClass"),
               (design.variants[cam].label, masks(cam, "infer")), (ref, masks(design.reference, "infer")),
               (f"{ref} + CRF", masks(design.reference, "crf")),
               *[(f"{design.variants[v].label} + CRF", masks(v, "crf")) for v in design.paired],
               (f"{ub} + CRF", masks(design.upper_bound, "crf"))]
    fig, axes = plt.subplots(len(names), len(columns), figsize=(1.9 * len(columns), 1.9 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, (title, folder) in enumerate(columns):
            ax = axes[r][c]
            if folder is None:
                ax.imshow(np.asarray(read_image(data / "JPEGImages" / f"{name}.jpg")))
            else:
                ax.imshow(colorize(load_mask(folder / f"{name}.png")))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"{split} images, seed {seed}, {design.modes[mode].label}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported when a figure is drawn, not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(design: bench_design.Design, cfg: dict, summary: pd.DataFrame, counts: dict, found: list,
             times: tuple[float, int], images: int, paired_lines: list[str] | None = None) -> str:
    settings = _settings(design)
    lines = ["# Ablation benchmark on the embedded dataset", "",
             "Made by `snakemake --cores 2 results/benchmark/report.md` from `params.yaml` and "
             f"`{design.path.as_posix()}` (the design: seeds, schedule, configurations, inference modes). "
             f"Seeds: {', '.join(map(str, design.seeds))} (a configuration's own seeds where the table says fewer); "
             f"{images} validation images; mean ± sample std over seeds.", ""]
    total, jobs = times
    if jobs:
        lines += [f"Job time: {total / 60:.1f} min over {jobs} jobs (Snakemake benchmark files); with `--cores N` "
                  "the wall time is at least that divided by N.", ""]
    lines += ["## Dataset difficulty knobs (`data.toy`) and schedule", "", "| key | value |", "|---|---|"]
    lines += [f"| data.toy.{k} | {cfg['data']['toy'][k]} |" for k in KNOBS]
    for key in SCHEDULE:
        section, name = key.split(".")
        lines.append(f"| {key} | {cfg[section][name]} |")
    if design.backbone is not None:
        lines += ["", "Every run starts from its seed's shared backbone: `wsss pretrain` with the settings above, then "
                  "these (the stand-in for the paper's ImageNet weights; the configurations differ in their heads only):",
                  "", "| backbone run | value |", "|---|---|"]
        lines += [f"| {key} | {bench_design.typed_value(value)} |" for key, value in design.backbone.items()]
    for title, column in (("mIoU", "miou"), ("Pixel accuracy", "pixel_acc")):
        lines += ["", f"## {title}", "",
                  "| configuration | params (benchmark size, K) | params (VOC size, M) | seeds | "
                  + " | ".join(s[2] for s in settings) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(settings)]
        for variant in design.ladder:
            spec = design.variants[variant]
            cells = [summary_cell(summary, variant, m, c, column) for m, c, _ in settings]
            toy, voc = counts[variant]
            lines.append(f"| {spec.label} | {toy:.1f} | {voc:.2f} | {len(spec.seeds)} | " + " | ".join(cells) + " |")
    lines += paired_lines or []
    lines += ["", "## The paper's orderings, on the means over seeds", "", "| claim | holds | numbers |", "|---|---|---|"]
    lines += [f"| {claim} | {'yes' if ok else '**no**'} | {numbers} |" for claim, ok, numbers in found]
    lines += ["", "## Figures", "", "![mIoU per configuration](miou.png)", "",
              "![per-class IoU](per_class.png)", "", "![examples](examples.png)", ""]
    return "\n".join(lines)


def run(cfg: dict, args) -> None:
    params_files = args.params or ["params.yaml"]
    design = bench_design.load(args.design, params_files)
    runs, out = Path(args.runs), Path(args.out)
    bench_cfg = design.config(params_files, design.reference)
    run_rows, classes = collect(design, bench_cfg, runs)
    summary = summarise(run_rows)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "runs.csv") as tmp:
        run_rows.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    figure_miou(design, summary, out / "miou.png")
    figure_per_class(design, classes, out / "per_class.png")
    figure_examples(design, bench_cfg, runs, out / "examples.png")
    found = checks(design, summary)
    paired_lines = None
    if design.paired:
        paired_miou, diag = paired.tables(design, run_rows, classes)
        cost = paired.costs(design, bench_cfg, runs)
        ratios = paired.cost_ratios(design, cost)
        with atomic_path(out / "paired.csv") as tmp:
            pd.concat([paired_miou.assign(measure="miou"), diag], ignore_index=True).to_csv(tmp, index=False, float_format="%.6f")
        with atomic_path(out / "costs.csv") as tmp:
            cost.to_csv(tmp, index=False, float_format="%.6f")
        settings = _settings(design)
        paired.figure(design, paired_miou, settings, out / "paired.png")
        paired_lines = paired.markdown(design, paired_miou, diag, ratios, settings)
    text = markdown(design, bench_cfg, summary, param_counts(design, params_files), found, job_time(design, runs),
                    int(run_rows["images"].iloc[0]), paired_lines)
    write_text(out / "report.md", text)
    print(text)
