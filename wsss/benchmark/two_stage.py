"""`wsss benchmark-two-stage`: the benchmark's second stage beside its single-stage result.

Reads the design's ``two_stage`` runs (``wsss.benchmark.design``: the pseudo-mask chains of
``two_stage.variants``, the ground-truth ceiling, the ceiling's budget sweep) and the same variants'
single-stage runs in ``two_stage.mode``, and writes into ``--out``:

- ``two_stage.csv``: one row per result (``kind`` single_stage | pseudo | stage2 | ceiling | plateau,
  variant, seed, iterations, mIoU and pixel accuracy without and with CRF, images);
- ``two_stage.md``: the second stage's settings; mIoU of the single stage, the pseudo-masks (training
  split), the second stage and the ceiling (mean ± sample std over seeds); the second stage against
  the single stage paired by seed (mean and 95 % t interval of the per-seed difference, as the
  plug-ins' rows of the main report); both as a share of the ceiling; the ceiling's budget sweep
  (validation mIoU against ``retrain.iterations``: the ceiling counts as one only where it has stopped
  rising); the time each stage took (Snakemake benchmark files);
- ``two_stage.png``: the per-seed results and the budget sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.benchmark import design as bench_design
from wsss.benchmark.paired import CONFIDENCE, interval, verdict
from wsss.benchmark.report import pyplot, run_paths, save_figure
from wsss.data.dataset import read_split
from wsss.errors import WsssError
from wsss.paths import for_config
from wsss.utils.atomic import atomic_path, write_text

PLATEAU_RISE = 0.01  # the sweep has reached a plateau if its longest budget adds less mIoU (with CRF) than this
                     # over the one before it (one seed: compare with the ceiling's spread over seeds)
KINDS = {"single_stage": "single stage", "pseudo": "pseudo-masks", "stage2": "second stage",
         "ceiling": "ceiling (ground-truth masks)"}
STAGES = {  # label -> (where, Snakemake benchmark file): where = the weak run, the chain, or the seed's backbone
    "backbone (pretrain)": ("backbone", "pretrain"), "pretrain": ("run", "pretrain"), "train": ("run", "train"),
    "infer": ("run", "{mode}_infer"), "crf": ("run", "{mode}_crf"), "pseudo": ("chain", "pseudo"),
    "retrain": ("chain", "retrain"), "infer --stage2": ("chain", "infer_stage2"), "crf --stage2": ("chain", "crf_stage2"),
}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WsssError(f"benchmark run missing: {path}; run `snakemake results/benchmark/two_stage.md` first") from None
    except json.JSONDecodeError as exc:
        raise WsssError(f"unreadable benchmark result {path}: {exc}") from None


def _row(kind: str, variant: str, seed: int, iterations: int | None, metrics: dict) -> dict:
    return {"kind": kind, "variant": variant, "seed": seed, "iterations": iterations,
            "miou": metrics["miou"], "miou_crf": metrics["miou_crf"], "pixel_acc": metrics["pixel_acc"],
            "pixel_acc_crf": metrics["pixel_acc_crf"], "images": metrics["images"]}


def scores(design: bench_design.Design, params_files: list[str], runs: Path) -> pd.DataFrame:
    """One row per result the report reads, from the runs' metrics files (see the module doc)."""
    t = design.two_stage
    rows = []
    for variant, seed in design.runs(t.variants):
        single = run_paths(design.config(params_files, variant, t.mode, seed), runs, variant, seed, t.mode)
        rows.append(_row("single_stage", variant, seed, None, _read(single.metrics_json)))
        chain = f"{variant}/s{seed}/two_stage"
        cfg = design.chain_config(params_files, chain)
        rows.append(_row("pseudo", variant, seed, None, _read(for_config(cfg, runs / chain).pseudo_metrics_json)))
        rows.append(_row("stage2", variant, seed, cfg["retrain"]["iterations"],
                         _read(for_config(cfg, runs / chain, stage2=True).metrics_json)))
    for chain in design.chains():
        kind = design.chain_kind(chain)
        if kind == "pseudo":
            continue
        cfg = design.chain_config(params_files, chain)
        rows.append(_row(kind, bench_design.CEILING_NAME, cfg["retrain"]["seed"], cfg["retrain"]["iterations"],
                         _read(for_config(cfg, runs / chain, stage2=True).metrics_json)))
    frame = pd.DataFrame(rows)
    frame["iterations"] = frame["iterations"].astype("Int64")
    return frame


def sweep(frame: pd.DataFrame, design: bench_design.Design) -> pd.DataFrame:
    """The ceiling's budget sweep: the plateau runs and the first ceiling seed's run, by iterations."""
    first = design.two_stage.ceiling_seeds[0]
    points = frame[(frame["kind"] == "plateau") | ((frame["kind"] == "ceiling") & (frame["seed"] == first))]
    return points.drop_duplicates("iterations").sort_values("iterations").reset_index(drop=True)


def paired_rows(frame: pd.DataFrame, variant: str) -> list[dict]:
    """The second stage minus the single stage of ``variant``, seed by seed, without and with CRF."""
    mine = frame[(frame["kind"] == "stage2") & (frame["variant"] == variant)].set_index("seed")
    ref = frame[(frame["kind"] == "single_stage") & (frame["variant"] == variant)].set_index("seed")
    seeds = sorted(set(mine.index) & set(ref.index))
    out = []
    for column in ("miou", "miou_crf"):
        diffs = (mine.loc[seeds, column] - ref.loc[seeds, column]).to_numpy()
        mean, low, high = interval(diffs)
        out.append({"variant": variant, "column": column, "seeds": len(seeds), "mean": mean, "low": low, "high": high,
                    "verdict": verdict(low, high), "per_seed": " ".join(f"{d:+.3f}" for d in diffs)})
    return out


def stage_times(design: bench_design.Design, runs: Path) -> pd.DataFrame:
    """Seconds per stage (mean, lowest, highest over the pseudo-mask chains' seeds) from Snakemake's benchmark files."""
    t = design.two_stage
    rows = []
    for variant, seed in design.runs(t.variants):
        folders = {"backbone": runs / bench_design.BACKBONE_NAME / f"s{seed}", "run": runs / variant / f"s{seed}",
                   "chain": runs / variant / f"s{seed}" / "two_stage"}
        for label, (where, stem) in STAGES.items():
            tsv = folders[where] / "benchmarks" / f"{stem.format(mode=t.mode)}.tsv"
            if where == "backbone" and design.backbone is None:
                continue
            try:
                seconds = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
            except FileNotFoundError:
                raise WsssError(f"benchmark record missing: {tsv}") from None
            except (KeyError, IndexError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise WsssError(f"unreadable benchmark record {tsv}: {exc!r}") from None
            rows.append({"variant": variant, "seed": seed, "stage": label, "s": seconds})
    frame = pd.DataFrame(rows)
    return frame.groupby(["variant", "stage"], sort=False)["s"].agg(["mean", "min", "max"]).reset_index()


def _mean_std(frame: pd.DataFrame, column: str) -> str:
    values = frame[column]
    if len(values) < 2:
        return f"{values.mean():.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _interval_cell(row: dict) -> str:
    if np.isnan(row["low"]):
        return f"{row['mean']:+.3f} ({row['verdict']})"
    return f"{row['mean']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] ({row['verdict']})"


def markdown(design: bench_design.Design, cfg: dict, frame: pd.DataFrame, pairs: list[dict], points: pd.DataFrame,
             times: pd.DataFrame, train_images: int) -> str:
    """The report's text; ``cfg`` is the ceiling's configuration, ``train_images`` the training split's size."""
    t = design.two_stage
    r = cfg["retrain"]
    mode = design.modes[t.mode].label
    scored = int(frame[frame["kind"] == "pseudo"]["images"].iloc[0])
    val_images = int(frame[frame["kind"] == "stage2"]["images"].iloc[0])
    lines = ["# The second stage on the embedded dataset", "",
             "Made by `snakemake --cores 2 results/benchmark/two_stage.md` from `params.yaml` and "
             f"`{design.path.as_posix()}` (key `two_stage`), on the trained runs of the main benchmark: each run's "
             f"pseudo-masks of the training split ({mode}, the classes from the image labels, CRF; `wsss pseudo`), a "
             "fully supervised network trained on them (`wsss retrain`), then inferred, refined and evaluated as the "
             f"single stage is ({mode}; {val_images} validation images). The ceiling is the same trainer, network and "
             "schedule on the ground-truth masks (`wsss retrain --ground-truth`). Mean ± sample std over seeds.", "",
             "| second stage | value |", "|---|---|"]
    for key in ("network", "pretrained", "iterations", "batch_size", "crop_size", "lr", "lr_mults", "poly_power",
                "momentum", "weight_decay", "scale"):
        lines.append(f"| retrain.{key} | {bench_design.typed_value(r[key])} |")
    lines += ["", "## mIoU", "", "| configuration | result | seeds | mIoU | mIoU with CRF |", "|---|---|---:|---:|---:|"]
    for variant in t.variants:
        for kind in ("single_stage", "pseudo", "stage2"):
            part = frame[(frame["kind"] == kind) & (frame["variant"] == variant)]
            label = KINDS[kind] + (f" ({cfg['pseudo']['score_split']}, {scored} images)" if kind == "pseudo" else "")
            lines.append(f"| {design.variants[variant].label} | {label} | {len(part)} | {_mean_std(part, 'miou')} | "
                         f"{_mean_std(part, 'miou_crf')} |")
    ceiling = frame[frame["kind"] == "ceiling"]
    lines.append(f"| — | {KINDS['ceiling']} | {len(ceiling)} | {_mean_std(ceiling, 'miou')} | "
                 f"{_mean_std(ceiling, 'miou_crf')} |")
    lines += ["", "## The second stage against the single stage, paired by seed", "",
              f"Per-seed difference of validation mIoU (second stage minus single stage, same seed, same weak run): "
              f"mean [{CONFIDENCE:.0%} interval, Student's t over the seeds]; the verdict is the interval's sign.", "",
              "| configuration | seeds | mIoU | mIoU with CRF | per seed (with CRF) |", "|---|---:|---:|---:|---|"]
    for variant in t.variants:
        raw, crf = [p for p in pairs if p["variant"] == variant]
        lines.append(f"| {design.variants[variant].label} | {raw['seeds']} | {_interval_cell(raw)} | "
                     f"{_interval_cell(crf)} | {crf['per_seed']} |")
    top = points.iloc[-1]
    lines += ["", "## Share of the ceiling", "",
              f"Each mean over seeds divided by the ceiling: at the second stage's budget ({r['iterations']} iterations, "
              f"mean over {len(ceiling)} seeds; for the second stage the difference is what its labels cost at equal "
              f"training), and at the sweep's longest budget ({int(top['iterations'])} iterations, seed "
              f"{t.ceiling_seeds[0]} only). The ceiling is the second stage's network trained from scratch on the "
              "ground truth; the single stage's network is another (its backbone pretrained for classification on "
              "the same images), so its row is a share of the best this data allows, not a same-network comparison.",
              "", "| configuration | result | ceiling | mIoU | mIoU with CRF |", "|---|---|---|---:|---:|"]
    for variant in t.variants:
        for kind in ("single_stage", "stage2"):
            part = frame[(frame["kind"] == kind) & (frame["variant"] == variant)]
            for name, value in ((f"{r['iterations']} iterations", ceiling.mean(numeric_only=True)),
                                (f"{int(top['iterations'])} iterations, seed {t.ceiling_seeds[0]}", top)):
                cells = [f"{part[c].mean():.3f} / {value[c]:.3f} = {part[c].mean() / value[c]:.1%}"
                         for c in ("miou", "miou_crf")]
                lines.append(f"| {design.variants[variant].label} | {KINDS[kind]} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "## The ceiling's budget", "",
              f"Ground-truth runs of seed {t.ceiling_seeds[0]} with more and fewer iterations (the poly schedule "
              f"stretched to each budget). The ceiling's budget is {r['iterations']} iterations.", "",
              "| iterations | epochs | mIoU | mIoU with CRF | rise (with CRF) |", "|---:|---:|---:|---:|---:|"]
    per_epoch = max(1, train_images // r["batch_size"])
    previous = None
    for _, point in points.iterrows():
        rise = "" if previous is None else f"{point['miou_crf'] - previous:+.3f}"
        lines.append(f"| {int(point['iterations'])} | {point['iterations'] / per_epoch:.1f} | {point['miou']:.3f} | "
                     f"{point['miou_crf']:.3f} | {rise} |")
        previous = point["miou_crf"]
    spread = (f" For scale: the ceiling's sample std over its {len(ceiling)} seeds at {r['iterations']} iterations is "
              f"{ceiling['miou_crf'].std(ddof=1):.3f} (with CRF)." if len(ceiling) > 1
              else " (One ceiling seed: no spread over seeds to compare with.)")
    lines += ["", plateau_verdict(points) + spread, "", "## Time per stage", "",
              "Seconds per job (mean, lowest–highest over seeds; Snakemake benchmark files; one thread per job, two "
              "jobs sharing two cores; pseudo runs the network and one CRF process).", "",
              "| configuration | stage | s | range |", "|---|---|---:|---:|"]
    for _, row in times.iterrows():
        lines.append(f"| {design.variants[row['variant']].label} | {row['stage']} | {row['mean']:.0f} | "
                     f"{row['min']:.0f}–{row['max']:.0f} |")
    lines += ["", "![two-stage results](two_stage.png)", ""]
    return "\n".join(lines)


def plateau_verdict(points: pd.DataFrame) -> str:
    """One sentence: whether the sweep's longest budget still adds ``PLATEAU_RISE`` mIoU (with CRF) or more over the
    budget before it."""
    if len(points) < 2:
        return "The sweep has one budget: whether the ceiling has plateaued is not measured."
    last, before = points.iloc[-1], points.iloc[-2]
    rise = float(last["miou_crf"] - before["miou_crf"])
    held = rise < PLATEAU_RISE
    return (f"Plateau: {'yes' if held else '**no**'}: {int(last['iterations'])} iterations give {rise:+.3f} mIoU (with "
            f"CRF) over {int(before['iterations'])} (a plateau is a rise below {PLATEAU_RISE:+.3f}, one seed).")


def figure(design: bench_design.Design, frame: pd.DataFrame, points: pd.DataFrame, budget: int, path: Path) -> None:
    plt = pyplot()
    t = design.two_stage
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    groups = [(design.variants[v].label, k, frame[(frame["kind"] == k) & (frame["variant"] == v)])
              for v in t.variants for k in ("single_stage", "pseudo", "stage2")]
    groups.append(("", "ceiling", frame[frame["kind"] == "ceiling"]))
    colors = {"single_stage": "tab:blue", "pseudo": "tab:orange", "stage2": "tab:green", "ceiling": "tab:gray"}
    for i, (_, kind, part) in enumerate(groups):
        for column, marker, shift in (("miou", "o", -0.15), ("miou_crf", "s", 0.15)):
            left.scatter(np.full(len(part), i + shift), part[column], color=colors[kind], marker=marker, alpha=0.7,
                         label=("with CRF" if column == "miou_crf" else "without CRF") if i == 0 else None)
            left.hlines(part[column].mean(), i + shift - 0.12, i + shift + 0.12, color="black")
    left.set_xticks(range(len(groups)), [f"{label}\n{KINDS[kind]}".strip() for label, kind, _ in groups], fontsize=7)
    left.set_ylabel("mIoU (each seed; bar = mean)")
    left.set_ylim(0, 1)
    left.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8, frameon=False)
    left.set_title("single stage, pseudo-masks (train), second stage, ceiling")
    budgets = points["iterations"].astype(int).to_numpy()
    right.plot(budgets, points["miou"], "o-", label="without CRF")
    right.plot(budgets, points["miou_crf"], "s-", label="with CRF")
    right.axvline(budget, color="gray", ls="--", lw=1, label=f"budget ({budget})")
    right.set_xscale("log", base=2)
    right.set_xlabel("retrain.iterations (ground-truth masks)")
    right.set_ylabel("validation mIoU")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, frameon=False)
    right.set_title("the ceiling's budget sweep")
    fig.tight_layout()
    save_figure(fig, path)


def run(cfg: dict, args) -> None:
    params_files = args.params or ["params.yaml"]
    design = bench_design.load(args.design, params_files)
    if design.two_stage is None:
        raise WsssError(f"{args.design}: no 'two_stage' entry: nothing to report")
    runs, out = Path(args.runs), Path(args.out)
    frame = scores(design, params_files, runs)
    ceiling_cfg = design.chain_config(params_files, f"{bench_design.CEILING_NAME}/s{design.two_stage.ceiling_seeds[0]}")
    points = sweep(frame, design)
    pairs = [row for variant in design.two_stage.variants for row in paired_rows(frame, variant)]
    times = stage_times(design, runs)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "two_stage.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    budget = ceiling_cfg["retrain"]["iterations"]
    figure(design, frame, points, budget, out / "two_stage.png")
    train_images = len(read_split(for_config(ceiling_cfg).data, ceiling_cfg["data"]["train_split"]))
    text = markdown(design, ceiling_cfg, frame, pairs, points, times, train_images)
    write_text(out / "two_stage.md", text)
    print(text)
