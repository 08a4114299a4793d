"""`wsss benchmark-plugins`: the design's on-request ``plugins`` variants, each against its own baseline.

The ``plugins`` entry of the design holds variants that the main table does not wait for (plug-ins that
bring a teacher network, another backbone architecture, ...). This reads their runs and those of the
baselines they name, and writes into ``--out``:

- ``plugins.csv``: one row per variant x seed x inference mode x CRF (mIoU, pixel accuracy);
- ``plugins_paired.csv``: per pair, the per-seed mIoU differences (mean, 95 % interval) and the
  diagnostics' differences (:mod:`wsss.benchmark.paired`);
- ``plugins_costs.csv``: step time and peak memory per run;
- ``plugins.md``: mIoU and pixel accuracy (mean ± std over seeds), the paired differences and the cost
  ratios; ``plugins.png``: the paired differences, seed by seed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsss.benchmark import design as bench_design
from wsss.benchmark import paired
from wsss.benchmark.report import _settings, collect, param_counts, summarise, summary_cell
from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path, write_text


def markdown(design: bench_design.Design, summary: pd.DataFrame, counts: dict, images: int,
             paired_lines: list[str]) -> str:
    settings = _settings(design)
    variants = design.plugin_report_variants
    lines = ["# Plug-ins against their own baselines, on the embedded dataset", "",
             "Made by `snakemake --cores 2 results/benchmark/plugins.md` from `params.yaml` and "
             f"`{design.path.as_posix()}` (key `plugins`; the schedule and dataset of the main report, "
             "`results/benchmark/report.md`). Seeds: "
             + "; ".join(f"{design.variants[v].label} {', '.join(map(str, design.variants[v].seeds))}" for v in variants)
             + f"; {images} validation images; mean ± sample std over seeds.", "",
             "| configuration | settings | starts from |", "|---|---|---|"]
    for name in variants:
        spec = design.variants[name]
        settings_text = ", ".join(f"{k}={bench_design.typed_value(v)}" for k, v in spec.params.items()) or "params.yaml"
        folder = design.variant_backbone(name)
        start = "scratch" if folder is None else f"its seed's `{folder}` run: " + ", ".join(
            f"{k}={bench_design.typed_value(v)}" for k, v in design.backbone_params(folder).items())
        lines.append(f"| {spec.label} | {settings_text} | {start} |")
    for title, column in (("mIoU", "miou"), ("Pixel accuracy", "pixel_acc")):
        lines += ["", f"## {title}", "",
                  "| configuration | params (benchmark size, K) | seeds | " + " | ".join(s[2] for s in settings) + " |",
                  "|---|---:|---:|" + "---:|" * len(settings)]
        for name in variants:
            cells = [summary_cell(summary, name, m, c, column) for m, c, _ in settings]
            lines.append(f"| {design.variants[name].label} | {counts[name][0]:.1f} | {len(design.variants[name].seeds)} | "
                         + " | ".join(cells) + " |")
    lines += paired_lines + [""]
    return "\n".join(lines)


def run(cfg: dict, args) -> None:
    params_files = args.params or ["params.yaml"]
    design = bench_design.load(args.design, params_files)
    if not design.plugin_pairs:
        raise WsssError(f"{args.design}: no 'plugins' variant with a 'baseline': nothing to compare")
    runs, out = Path(args.runs), Path(args.out)
    variants = design.plugin_report_variants
    bench_cfg = design.config(params_files, design.reference)
    run_rows, classes = collect(design, bench_cfg, runs, variants)
    summary = summarise(run_rows)
    pairs = design.plugin_pairs
    paired_miou, diag = paired.tables(design, run_rows, classes, pairs)
    cost = paired.costs(design, bench_cfg, runs, pairs)
    ratios = paired.cost_ratios(design, cost, pairs)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "plugins.csv") as tmp:
        run_rows.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out / "plugins_paired.csv") as tmp:
        pd.concat([paired_miou.assign(measure="miou"), diag], ignore_index=True).to_csv(tmp, index=False,
                                                                                        float_format="%.6f")
    with atomic_path(out / "plugins_costs.csv") as tmp:
        cost.to_csv(tmp, index=False, float_format="%.6f")
    settings = _settings(design)
    paired.figure(design, paired_miou, settings, out / "plugins.png", pairs)
    lines = paired.markdown(design, paired_miou, diag, ratios, settings, pairs, "plugins.png")
    text = markdown(design, summary, param_counts(design, params_files, variants, voc=False), int(run_rows["images"].iloc[0]), lines)
    write_text(out / "plugins.md", text)
    print(text)
