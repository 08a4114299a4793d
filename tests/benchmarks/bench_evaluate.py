"""Evaluator speed on a VOC-val-sized split: 1,449 mask pairs of 500x375, 21 classes.

    python tests/benchmarks/bench_evaluate.py [--images 1449]

Prints the time of what `wsss evaluate` does (two prediction sets, raw and CRF, against one ground
truth, PNG decoding included) and the pixel throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wsss.data.palette import save_mask
from wsss.stages.evaluate import accumulate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1449)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir, crf_dir = Path(tmp, "gt"), Path(tmp, "pred"), Path(tmp, "crf")
        for d in (gt_dir, pred_dir, crf_dir):
            d.mkdir()
        names = [f"{i:06d}" for i in range(args.images)]
        for name in names:
            gt = np.zeros((375, 500), np.uint8)
            for _ in range(3):  # blocky objects, like real masks (they compress like them too)
                y, x = rng.integers(0, 300), rng.integers(0, 400)
                gt[y:y + rng.integers(20, 150), x:x + rng.integers(20, 200)] = rng.integers(1, 21)
            pred = np.roll(gt, rng.integers(-8, 8), axis=1)
            save_mask(gt, gt_dir / f"{name}.png")
            save_mask(pred, pred_dir / f"{name}.png")
            save_mask(np.roll(gt, 2, axis=0), crf_dir / f"{name}.png")
        start = time.perf_counter()
        (conf,) = accumulate(names, gt_dir, [pred_dir], 21, 255)
        one = time.perf_counter() - start
        start = time.perf_counter()
        accumulate(names, gt_dir, [pred_dir, crf_dir], 21, 255)
        both = time.perf_counter() - start
    pixels = conf.sum()
    print(f"evaluate: {args.images} masks of 500x375: one mask set {one:.2f} s ({pixels / one / 1e6:.1f} Mpixel/s), "
          f"raw + CRF as the stage does {both:.2f} s")


if __name__ == "__main__":
    main()
