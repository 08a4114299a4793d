"""GPU figures of WS-FCN beside SSSS in one run (a script, not a test): training images/s and peak
memory in fp32 and bf16, and one image's multi-scale + flip inference with `infer.chunk` 1 and 8;
then WS-FCN under each speed key: `train.channels_last`, `train.compile`, `train.cudnn_benchmark`
off (the other rows autotune), `infer.amp` (bf16) and `infer.channels_last`.

    .venv/bin/python tests/benchmarks/bench_gpu.py             # on a GPU: the paper's sizes (below)
    .venv/bin/python tests/benchmarks/bench_gpu.py --reduced   # anywhere: the toy network, small sizes

Paper sizes (the `voc` preset, WR38, random weights: speed does not depend on them): training steps
of batch 16 at 321 x 321 (forward, fp32 or under bf16 autocast as `train.amp`, the method's loss
with its segmentation term, PAMR included, backward, the SGD step), cuDNN autotuning on; inference of one 500 x 375 image at the 8 views of
`infer.scales` x flip on the 1024 x 1024 canvas (`wsss.stages.infer.predict`, as the infer stage
runs it). `--reduced` runs the same code with the toy preset (batch 4 of 64 px, a 96 x 72 image at
its own size; of the speed keys channels-last and bf16 inference, not compile) so that CI checks the
script; its figures mean nothing for a GPU. Prints a Markdown table, and the rows as JSON lines
with `--json`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image

from wsss import config
from wsss.data.dataset import normalize
from wsss.model.losses import build_loss
from wsss.model.network import build_model
from wsss.model.optim import build_optimizer
from wsss.stages.infer import predict

CONFIGS = {"WS-FCN": [], "SSSS": ["model.fca=false", "model.sf2=false"]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_figures(overrides: list[str], batch: int, size: int, device: str, amp: bool, warmup: int, steps: int,
                  channels_last: bool = False, compiled: bool = False) -> dict:
    """Seconds per training step (best of ``steps`` after ``warmup``) and peak memory: forward under bf16
    autocast when ``amp`` (as `train.amp`), the method's own loss with its segmentation term (PAMR and
    pseudo-labels included), backward, the SGD step."""
    cfg = config.load([config.REPO_ROOT / "params.yaml"], overrides)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).to(device).train()
    optimizer = build_optimizer(model, cfg)
    loss_fn = build_loss(cfg)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    step_model = torch.compile(model) if compiled else model  # as wsss.engine.trainer.speed_settings
    raw = torch.rand(batch, 3, size, size, device=device)
    images = normalize(raw).contiguous(memory_format=memory_format)
    labels = torch.zeros(batch, config.num_classes(cfg) - 1, device=device)
    labels[:, :2] = 1
    times = []
    for i in range(warmup + steps):
        if i == warmup and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = step_model(images)
        losses = loss_fn(out, raw, labels, seg_on=True)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"s": round(min(times), 3),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}


def infer_figures(overrides: list[str], image_size: tuple[int, int], chunk: int, device: str, repeats: int,
                  amp: bool = False, channels_last: bool = False) -> dict:
    """Seconds per image (best of ``repeats`` after one warm-up) and peak memory of ``predict``."""
    cfg = config.load([config.REPO_ROOT / "params.yaml"], overrides)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    image = Image.new("RGB", image_size, (120, 80, 40))
    icfg = cfg["infer"]
    options = {"amp": amp, "channels_last": channels_last}
    with torch.no_grad():
        predict(model, image, icfg["scales"], icfg["flip"], chunk, icfg["pad_size"], device, **options)
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict(model, image, icfg["scales"], icfg["flip"], chunk, icfg["pad_size"], device, **options)
            sync(device)
            times.append(time.perf_counter() - start)
    views = len(icfg["scales"]) * (2 if icfg["flip"] else 1)
    return {"s_per_image": round(min(times), 3), "views": views,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}


def run(reduced: bool, device: str) -> list[dict]:
    if reduced:
        preset, batch, size, image, steps, repeats = [], 4, 64, (96, 72), 2, 2
    else:
        preset, batch, size, image, steps, repeats = ["data.name=voc"], 16, 321, (500, 375), 10, 3
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name, model in CONFIGS.items():
        overrides = preset + model
        for amp in (False, True) if device == "cuda" else (False,):  # bf16 autocast is `train.amp`: CUDA only
            step = train_figures(overrides, batch, size, device, amp, warmup=1 if reduced else 3, steps=steps)
            rows.append({"config": name, "what": f"train b{batch} @{size}", "precision": "bf16" if amp else "fp32",
                         "img_per_s": round(batch / step["s"], 1), "s": step["s"], "peak_mem_gib": step["peak_mem_gib"]})
            if device == "cuda":
                torch.cuda.empty_cache()
        for chunk in (1, 8):
            fig = infer_figures(overrides, image, chunk, device, repeats)
            rows.append({"config": name, "what": f"infer {image[0]}x{image[1]}, {fig['views']} views, chunk {chunk}",
                         "precision": "fp32", "img_per_s": round(1 / fig["s_per_image"], 2), "s": fig["s_per_image"],
                         "peak_mem_gib": fig["peak_mem_gib"]})
            if device == "cuda":
                torch.cuda.empty_cache()
    rows += speed_rows(preset + CONFIGS["WS-FCN"], batch, size, image, steps, repeats, device, reduced)
    return rows


def speed_rows(overrides: list[str], batch: int, size: int, image: tuple[int, int], steps: int, repeats: int,
               device: str, reduced: bool) -> list[dict]:
    """WS-FCN under each speed key, one key at a time (fp32 training, inference with chunk 8)."""
    rows = []
    warmup = 1 if reduced else 3
    trials = [("channels-last", {"channels_last": True})]
    if device == "cuda":
        trials += [("torch.compile", {"compiled": True}), ("cuDNN autotuning off", {})]
    for label, options in trials:
        torch.backends.cudnn.benchmark = device == "cuda" and label != "cuDNN autotuning off"
        step = train_figures(overrides, batch, size, device, False, warmup=warmup, steps=steps, **options)
        rows.append({"config": "WS-FCN", "what": f"train b{batch} @{size}, {label}", "precision": "fp32",
                     "img_per_s": round(batch / step["s"], 1), "s": step["s"], "peak_mem_gib": step["peak_mem_gib"]})
    torch.backends.cudnn.benchmark = device == "cuda"
    for label, options in (("bf16", {"amp": True}), ("channels-last", {"channels_last": True})):
        fig = infer_figures(overrides, image, 8, device, repeats, **options)
        rows.append({"config": "WS-FCN", "what": f"infer {image[0]}x{image[1]}, {fig['views']} views, chunk 8, {label}",
                     "precision": "bf16" if options.get("amp") else "fp32", "img_per_s": round(1 / fig["s_per_image"], 2),
                     "s": fig["s_per_image"], "peak_mem_gib": fig["peak_mem_gib"]})
    return rows


def table(rows: list[dict], device: str) -> str:
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"device: {where}", "", "| config | what | precision | images/s | s | peak GiB |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        mem = "" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        lines.append(f"| {r['config']} | {r['what']} | {r['precision']} | {r['img_per_s']} | {r['s']} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="the toy network at small sizes (any device)")
    parser.add_argument("--json", action="store_true", help="also print each row as a JSON line")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.reduced:
        parser.error("no CUDA GPU: the paper-size figures need one (use --reduced to check the script)")
    rows = run(args.reduced, device)
    print(table(rows, device))
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
