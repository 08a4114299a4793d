"""The benchmark's paired rows: each ``paired`` variant (a training plug-in) against the reference (WS-FCN),
or each on-request ``plugins`` variant against its own ``baseline``, seed by seed, and what it costs.
A comparison is a list of pairs (variant, baseline): ``Design.main_pairs`` or ``Design.plugin_pairs``.

Both runs of a seed start from the same shared backbone and see the same data order, so the per-seed
difference removes most of the seed-to-seed spread that the mean ± std of each configuration carries.
For every setting (inference mode x CRF) the report gives the mean of the per-seed differences and its
95 % interval (Student's t with n - 1 degrees of freedom, ``scipy.stats.t``). The cost is a per-seed ratio
to the reference's run of the same seed, from the same benchmark invocation: the training step time
(median over the ``train`` curve's rows of batch size / ``img_per_s``, the segmentation epochs) and the
peak resident memory of the ``train`` job (``max_rss`` of its Snakemake benchmark file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.benchmark import design as bench_design
from wsss.errors import WsssError
from wsss.paths import for_config

CONFIDENCE = 0.95
DIAGNOSTICS = {  # per-run measure (see diagnostics) -> its label
    "background_iou": "background IoU",
    "fg_precision": "foreground precision (mean over classes)",
    "fg_recall": "foreground recall (mean over classes)",
}


def interval(diffs: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``diffs`` (one per seed) and its two-sided t interval.
    One value has no interval: (mean, nan, nan)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """Whether an interval of differences lies above 0, below 0, or holds it."""
    if math.isnan(low):
        return "one seed"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"


Pairs = list[tuple[str, str]]  # (variant, the baseline it is compared with)


def differences(design: bench_design.Design, values: pd.DataFrame, column: str, keys: list[str],
                pairs: Pairs | None = None) -> pd.DataFrame:
    """Per pair (default: the main table's paired variants and the reference) and per ``keys`` group: the mean
    per-seed difference of ``column`` to the baseline and its interval. ``values`` has one row per variant, seed
    and ``keys``."""
    rows = []
    for variant, baseline in design.main_pairs if pairs is None else pairs:
        seeds = design.paired_seeds(variant, baseline)
        mine = values[(values["variant"] == variant) & values["seed"].isin(seeds)]
        ref = values[(values["variant"] == baseline) & values["seed"].isin(seeds)]
        joined = mine.merge(ref, on=["seed", *keys], suffixes=("", "_ref"))
        for group, part in joined.groupby(keys, sort=False):
            diffs = (part[column] - part[f"{column}_ref"]).to_numpy()
            mean, low, high = interval(diffs)
            rows.append({"variant": variant, "baseline": baseline, **dict(zip(keys, group)),
                         "seeds": len(diffs), "mean": mean, "low": low, "high": high, "verdict": verdict(low, high),
                         "per_seed": " ".join(f"{d:+.3f}" for d in diffs)})
    return pd.DataFrame(rows)


def diagnostics(classes: pd.DataFrame) -> pd.DataFrame:
    """Per run (variant, seed, mode, crf): the background IoU and the foreground classes' mean precision and
    recall, from the per-class rows of :func:`wsss.benchmark.report.collect`."""
    rows = []
    for key, part in classes.groupby(["variant", "seed", "mode", "crf"], sort=False):
        fg = part[part["class"] != "background"]
        rows.append(dict(zip(["variant", "seed", "mode", "crf"], key),
                         background_iou=float(part[part["class"] == "background"]["iou"].iloc[0]),
                         fg_precision=float(fg["precision"].mean()), fg_recall=float(fg["recall"].mean())))
    return pd.DataFrame(rows)


def costs(design: bench_design.Design, cfg: dict, runs: Path, pairs: Pairs | None = None) -> pd.DataFrame:
    """Per run of every variant of the pairs (default: the reference and the paired variants): the training step
    time (s) and the train job's peak resident memory (MB). Raises WsssError naming a missing or unreadable file."""
    rows = []
    batch = cfg["train"]["batch_size"]
    pairs = design.main_pairs if pairs is None else pairs
    for variant, seed in design.runs(list(dict.fromkeys(name for pair in pairs for name in reversed(pair)))):
        folder = runs / variant / f"s{seed}"
        curve = for_config(cfg, folder).train_log("train")
        bench = folder / "benchmarks" / "train.tsv"
        try:
            rows_of_curve = pd.read_csv(curve, sep="\t")
            speed = rows_of_curve[rows_of_curve["stage"] == "train"]["img_per_s"]
            rss = float(pd.read_csv(bench, sep="\t")["max_rss"].iloc[0])
        except FileNotFoundError as exc:
            raise WsssError(f"benchmark run missing: {exc.filename}; run the benchmark target first") from None
        except (KeyError, IndexError, ValueError, pd.errors.ParserError) as exc:
            raise WsssError(f"unreadable training record under {folder}: {exc}") from None
        if speed.empty:
            raise WsssError(f"{curve}: no 'train' rows with img_per_s (the training curve is empty)")
        rows.append({"variant": variant, "seed": seed, "step_s": float(np.median(batch / speed.to_numpy())),
                     "max_rss_mb": rss})
    return pd.DataFrame(rows)


def cost_ratios(design: bench_design.Design, cost: pd.DataFrame, pairs: Pairs | None = None) -> pd.DataFrame:
    """Per pair (default: the main table's): the mean, lowest and highest per-seed ratio to the baseline of step
    time and peak memory, and the baseline's own mean figures."""
    rows = []
    for variant, baseline in design.main_pairs if pairs is None else pairs:
        ref = cost[cost["variant"] == baseline].set_index("seed")
        mine = cost[cost["variant"] == variant].set_index("seed")
        seeds = design.paired_seeds(variant, baseline)
        row = {"variant": variant, "baseline": baseline, "seeds": len(seeds)}
        for column in ("step_s", "max_rss_mb"):
            ratio = mine.loc[seeds, column].to_numpy() / ref.loc[seeds, column].to_numpy()
            row.update({f"{column}_ref": float(ref.loc[seeds, column].mean()), f"{column}": float(mine.loc[seeds, column].mean()),
                        f"{column}_ratio": float(ratio.mean()), f"{column}_ratio_min": float(ratio.min()),
                        f"{column}_ratio_max": float(ratio.max())})
        rows.append(row)
    return pd.DataFrame(rows)


def figure(design: bench_design.Design, paired_miou: pd.DataFrame, settings: list[tuple[str, bool, str]], path: Path,
           pairs: Pairs | None = None) -> None:
    """Per-seed mIoU differences to the baseline (dots) with their mean and 95 % interval, per setting and pair."""
    from wsss.benchmark.report import pyplot, save_figure

    plt = pyplot()
    pairs = design.main_pairs if pairs is None else pairs
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs) + 1, 3.6), squeeze=False, sharey=True)
    for ax, (variant, baseline) in zip(axes[0], pairs):
        for i, (mode, crf, label) in enumerate(settings):
            row = _setting(paired_miou[paired_miou["variant"] == variant], mode, crf)
            dots = [float(d) for d in row["per_seed"].split()]
            ax.scatter([i] * len(dots), dots, s=12, color="grey", zorder=2)
            err = [[row["mean"] - row["low"]], [row["high"] - row["mean"]]] if not math.isnan(row["low"]) else None
            ax.errorbar([i + 0.15], [row["mean"]], yerr=err, fmt="o", color="C3", capsize=4, zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(settings)), [s[2] for s in settings], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{design.variants[variant].label} − {design.variants[baseline].label}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"mIoU difference\n(dots: seeds; mean, {CONFIDENCE:.0%} interval)")
    fig.tight_layout()
    save_figure(fig, path)


def _setting(frame: pd.DataFrame, mode: str, crf: bool) -> pd.Series:
    """The one row of ``frame`` (already narrowed to a variant and measure) for an inference mode and CRF."""
    return frame[(frame["mode"] == mode) & (frame["crf"] == crf)].iloc[0]


def _cell(row) -> str:
    if math.isnan(row["low"]):
        return f"{row['mean']:+.3f}"
    return f"{row['mean']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def markdown(design: bench_design.Design, paired_miou: pd.DataFrame, diag: pd.DataFrame, ratios: pd.DataFrame,
             settings: list[tuple[str, bool, str]], pairs: Pairs | None = None, figure_name: str = "paired.png",
             level: str = "##") -> list[str]:
    """The report's section on the pairs (default: the main table's paired variants against the reference):
    mIoU differences, the diagnostics, the cost ratios. With several baselines each row names its own."""
    pairs = design.main_pairs if pairs is None else pairs
    baselines = list(dict.fromkeys(b for _, b in pairs))
    label = {name: design.variants[name].label for name in design.variants}
    if len(baselines) == 1:
        against = label[baselines[0]]
        title, row_name = f"Plug-ins against {against}, paired by seed", (lambda v, b: label[v])
    else:
        against = "its baseline"
        title, row_name = "Each configuration against its baseline, paired by seed", (lambda v, b: f"{label[v]} − {label[b]}")
    lines = ["", f"{level} {title}", "",
             f"Per-seed difference of mIoU to {against} (same seed, same shared backbone where both start from one): "
             f"mean [{CONFIDENCE:.0%} interval, Student's t over the seeds]; the verdict is the interval's sign.", "",
             "| configuration | seeds | " + " | ".join(s[2] for s in settings) + " |",
             "|---|---:|" + "---:|" * len(settings)]

    def part_of(frame: pd.DataFrame, variant: str, baseline: str) -> pd.DataFrame:
        return frame[(frame["variant"] == variant) & (frame["baseline"] == baseline)]

    for variant, baseline in pairs:
        part = part_of(paired_miou, variant, baseline)
        cells = [f"{_cell(row)} ({row['verdict']})" for row in (_setting(part, m, c) for m, c, _ in settings)]
        lines.append(f"| {row_name(variant, baseline)} | {int(part['seeds'].iloc[0])} | " + " | ".join(cells) + " |")
    lines += ["", "Per-seed differences (mIoU, " + ", ".join(s[2] for s in settings) + "):", ""]
    for variant, baseline in pairs:
        part = part_of(paired_miou, variant, baseline)
        per = "; ".join(f"{name}: {_setting(part, m, c)['per_seed']}" for m, c, name in settings)
        lines.append(f"- {row_name(variant, baseline)}: {per}")
    picked = list(dict.fromkeys([settings[0], settings[-1]]))  # the first and the last setting
    lines += ["", f"What moved (paired differences to {against}; foreground = the non-background classes):", "",
              "| configuration | measure | " + " | ".join(s[2] for s in picked) + " |", "|---|---|" + "---:|" * len(picked)]
    for variant, baseline in pairs:
        for measure, name in DIAGNOSTICS.items():
            part = part_of(diag[diag["measure"] == measure], variant, baseline)
            cells = [_cell(_setting(part, m, c)) for m, c, _ in picked]
            lines.append(f"| {row_name(variant, baseline)} | {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Training cost against {against}, measured in this benchmark (per-seed ratio: mean, lowest–highest; "
              "step time = median seconds per training step of the segmentation epochs, one thread, two jobs "
              "sharing two cores; memory = the train job's peak resident set):", "",
              "| configuration | step (s) | × " + against + " | peak RSS (MB) | × " + against + " |",
              "|---|---:|---:|---:|---:|"]
    shown = set()
    for _, row in ratios.iterrows():
        if row["baseline"] not in shown:
            shown.add(row["baseline"])
            lines.append(f"| {label[row['baseline']]} | {row['step_s_ref']:.3f} | 1 | {row['max_rss_mb_ref']:.0f} | 1 |")
        lines.append(f"| {row_name(row['variant'], row['baseline'])} | {row['step_s']:.3f} | {row['step_s_ratio']:.2f} "
                     f"({row['step_s_ratio_min']:.2f}–{row['step_s_ratio_max']:.2f}) | {row['max_rss_mb']:.0f} | "
                     f"{row['max_rss_mb_ratio']:.2f} ({row['max_rss_mb_ratio_min']:.2f}–{row['max_rss_mb_ratio_max']:.2f}) |")
    lines += ["", f"![paired differences]({figure_name})"]
    return lines


def tables(design: bench_design.Design, run_rows: pd.DataFrame, classes: pd.DataFrame,
           pairs: Pairs | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired mIoU differences per pair, mode and CRF; paired diagnostic differences, with a ``measure`` column)."""
    paired_miou = differences(design, run_rows, "miou", ["mode", "crf"], pairs)
    diag = diagnostics(classes)
    parts = []
    for measure in DIAGNOSTICS:
        part = differences(design, diag, measure, ["mode", "crf"], pairs)
        part.insert(2, "measure", measure)
        parts.append(part)
    return paired_miou, pd.concat(parts, ignore_index=True)
