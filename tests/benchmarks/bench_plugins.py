"""The training plug-ins' cost (a script, not a test): step time and peak memory against each one's baseline.

    .venv/bin/python tests/benchmarks/bench_plugins.py            # toy preset: batch 16, 96 px crops
    .venv/bin/python tests/benchmarks/bench_plugins.py --steps 20

A step is what the trainer does with the segmentation term on: the network on the crop (and on
every plug-in view), the loss with the plug-ins' pseudo-label adjustment and terms, backward, an
SGD step, and the plug-ins' after-step work (SupportNet's EMA teacher update). Each configuration
runs in a process of its own, so that its peak resident memory is its own; the ratios are to its
baseline (WS-FCN; the ViT single stage for ACR) measured in the same invocation. Inputs are random: cost does not
depend on them (FBR's k-means sees random background features).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VIT = "model.backbone=vit_toy"
CONFIGS = {  # name: (overrides, the configuration it is a ratio to)
    "WS-FCN": ([], "WS-FCN"),
    "+ RTC": (["plugins.rtc.enabled=true"], "WS-FCN"),
    "+ FBR": (["plugins.fbr.enabled=true"], "WS-FCN"),
    "+ MainNet/SupportNet": (["plugins.supportnet.enabled=true"], "WS-FCN"),
    "ViT single stage": ([VIT], "WS-FCN"),
    "ViT + ACR": ([VIT, "plugins.acr.enabled=true"], "ViT single stage"),
}


def measure(overrides: list[str], steps: int, threads: int) -> dict:
    """Median step time (s) after two warm-up steps, and this process's peak RSS (MiB)."""
    import torch

    from wsss import config
    from wsss.engine.trainer import _with_plugins
    from wsss.model.losses import build_loss
    from wsss.model.network import build_model
    from wsss.model.optim import build_optimizer
    from wsss.plugins import build_plugins

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = config.load([config.REPO_ROOT / "params.yaml"], overrides)
    model = build_model(cfg)
    plugins = build_plugins(cfg, model)
    optimizer = build_optimizer(model, cfg, extra=plugins)
    loss_fn = build_loss(cfg)
    batch, size = cfg["train"]["batch_size"], cfg["train"]["crop_size"]
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(batch, 3, size, size, generator=g)
    images = (raw - 0.45) / 0.225
    labels = (torch.rand(batch, config.num_classes(cfg) - 1, generator=g) < 0.2).float()
    labels[:, 0] = 1
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        out = model(images)
        if plugins:
            losses = _with_plugins(plugins, model, out, images, raw, labels, 0, True, loss_fn, {}, False)
        else:
            losses = loss_fn(out, raw, labels, seg_on=True)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        plugins.after_step(model)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[2:]), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a configuration, in the child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(CONFIGS[args.one][0], args.steps, args.threads)))
        return
    rows = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    print(f"toy preset, {args.threads} threads, median of {args.steps} steps\n")
    print("| configuration | step (s) | against | x step | peak RSS (MiB) | x RSS |")
    print("|---|---:|---|---:|---:|---:|")
    for name, r in rows.items():
        base = rows[CONFIGS[name][1]]
        print(f"| {name} | {r['step_s']:.3f} | {CONFIGS[name][1]} | {r['step_s'] / base['step_s']:.2f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} |")


if __name__ == "__main__":
    main()
