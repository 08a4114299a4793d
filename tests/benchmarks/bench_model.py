"""Model speed figures (a script, not a test): forward+backward time, and on CUDA peak memory.

    .venv/bin/python tests/benchmarks/bench_model.py              # CPU: WR38 WS-FCN b2 @321, small b16 @ toy crop
    .venv/bin/python tests/benchmarks/bench_model.py --cuda       # + WR38 WS-FCN b16 @321, fp32 and bf16

A step is forward, the classification + a stand-in segmentation loss, backward (and on CUDA an
SGD step). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F

from wsss import config
from wsss.model.network import build_model
from wsss.model.optim import build_optimizer

PARAMS = config.REPO_ROOT / "params.yaml"


def _step(model, x, labels, opt=None, amp: bool = False) -> None:
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = model(x)
        loss = F.multilabel_soft_margin_loss(out["cls"].float(), labels) + out["logits"].float().square().mean()
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench(overrides: list[str], batch: int, size: int, device: str, warmup: int, iters: int,
          amp: bool = False, optimizer: bool = False, channels_last: bool = False) -> dict:
    cfg = config.load([PARAMS], overrides)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(batch, config.num_classes(cfg) - 1, device=device)
    labels[:, :2] = 1
    opt = build_optimizer(model, cfg) if optimizer else None
    for _ in range(warmup):
        _step(model, x, labels, opt, amp)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        _step(model, x, labels, opt, amp)
        _sync(device)
        times.append(time.perf_counter() - start)
    result = {
        "model": " ".join(overrides) or "toy preset",
        "device": device, "batch": batch, "size": size, "amp_bf16": amp, "channels_last": channels_last,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "step_s_min": round(min(times), 3), "step_s_mean": round(sum(times) / len(times), 3),
    }
    if device == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="also run the GPU figures (if CUDA is available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--skip-wr38-cpu", action="store_true", help="only the small model on CPU")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = []
    if not args.skip_cpu:
        if not args.skip_wr38_cpu:
            runs.append(bench(["data.name=voc"], batch=2, size=321, device="cpu", warmup=1, iters=2))
        for cl in (False, True):
            crop = config.load([config.REPO_ROOT / "params.yaml"])["train"]["crop_size"]  # the toy preset's
            runs.append(bench([], batch=16, size=crop, device="cpu", warmup=2, iters=5, channels_last=cl))
    if args.cuda:
        if not torch.cuda.is_available():
            print(json.dumps({"cuda": "not available"}))
        else:
            torch.backends.cudnn.benchmark = True
            for amp in (False, True):
                runs.append(bench(["data.name=voc"], batch=16, size=321, device="cuda", warmup=3, iters=10,
                                  amp=amp, optimizer=True))
                torch.cuda.empty_cache()
    for run in runs:
        print(json.dumps(run))


if __name__ == "__main__":
    main()
