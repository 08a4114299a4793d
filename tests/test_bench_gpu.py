"""tests/benchmarks/bench_gpu.py in its reduced form: the script CI can run without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "benchmarks" / "bench_gpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # the CPU path, also on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_the_reduced_run_prints_ws_fcn_beside_ssss_for_training_and_both_chunks():
    proc = run("--reduced")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header] == ["config", "what", "precision", "images/s", "s", "peak GiB"]
    seen = {(r[0].strip(), r[1].strip()) for r in body}
    for config in ("WS-FCN", "SSSS"):
        assert (config, "train b4 @64") in seen
        for chunk in (1, 8):
            assert (config, f"infer 96x72, 8 views, chunk {chunk}") in seen
    assert ("WS-FCN", "train b4 @64, channels-last") in seen
    assert ("WS-FCN", "infer 96x72, 8 views, chunk 8, bf16") in seen
    assert ("WS-FCN", "infer 96x72, 8 views, chunk 8, channels-last") in seen
    assert len(body) == 9 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in body)
    assert proc.stdout.startswith("device: CPU, 1 threads")


def test_the_paper_sizes_need_a_gpu():
    proc = run()
    assert proc.returncode == 2 and "no CUDA GPU: the paper-size figures need one" in proc.stderr
