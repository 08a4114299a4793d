"""Time `wsss prepare` of the default (toy) configuration twice and check both runs give the same bytes.

Usage (from the repository root): python tests/benchmarks/bench_prepare.py [--params params.yaml]
It prepares into a temporary data root, so data/ is left alone. Not a pytest test.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        data_root = Path(scratch) / "data"
        command = [sys.executable, "-m", "wsss.cli", "prepare", "--params", args.params, "-S", f"data.root={data_root}"]
        digests, times = [], []
        for run in (1, 2):
            start = time.perf_counter()
            subprocess.run(command, check=True)
            times.append(time.perf_counter() - start)
            (dataset,) = [p for p in data_root.iterdir() if not p.name.startswith(".")]
            digests.append(tree_digest(dataset))
            size = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file())
            print(f"run {run}: {times[-1]:.1f} s wall, {len(digests[-1])} files, {size / 2**20:.1f} MiB")
    identical = digests[0] == digests[1]
    differing = sorted(k for k in digests[0].keys() | digests[1].keys() if digests[0].get(k) != digests[1].get(k))
    print(f"identical bytes: {identical}" + ("" if identical else f" ({len(differing)} differ, e.g. {differing[:3]})"))
    print(f"under 60 s: {max(times) < 60}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
