"""Time how fast `wsss prepare` and the weights fetcher give up when there is no network.

Usage (from the repository root): python tests/benchmarks/bench_download.py [--repeats 5]
Not a pytest test. Two servers on 127.0.0.1 stand in for the network:

- ``refused``: a port where nothing listens (the connection is refused at once);
- ``silent``: a socket that listens but never accepts, so the TCP handshake completes in the kernel
  and no HTTP answer ever comes (``reachable``'s connect succeeds; the download's read timeout
  decides; ``download``'s default is 30 s).

It prints, per case, the median and worst wall time over the repeats for the VOC preparation
(``prepare_voc`` with no ``data.source``) and for the WR38 weights (``fetch_weights`` with no
``model.weights``) with the error's first line, and checks each ends in a ``WsssError`` (naming
what to set where the server cannot be reached).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import voc_data_cfg  # noqa: E402
from wsss.data.voc import prepare_voc  # noqa: E402
from wsss.data.weights import fetch_weights  # noqa: E402
from wsss.errors import WsssError  # noqa: E402


@contextmanager
def refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}/nothing-here"


@contextmanager
def silent():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/never-answers"


def time_failure(run, needle: str | None) -> tuple[float, str]:
    """Seconds until ``run`` raised its WsssError, and the error's first line; exits if it did not raise
    or (with ``needle``) if the error does not name it."""
    start = time.perf_counter()
    try:
        run()
    except WsssError as err:
        elapsed = time.perf_counter() - start
        if needle is not None and needle not in str(err):
            raise SystemExit(f"the error does not name {needle!r}:\n{err}")
        return elapsed, str(err).splitlines()[0]
    raise SystemExit("expected a WsssError, the call returned")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = [("refused", refused), ("silent", silent)]
    print(f"{'case':<11} {'what':<14} {'median s':>9} {'worst s':>8}  error (repeats: {args.repeats})")
    for name, server in cases:
        for what in ("voc prepare", "wr38 weights"):
            times, first = [], ""
            # a server that accepts and never answers fails on the read timeout, with its own message
            needle = None if name == "silent" else ("data.source" if what == "voc prepare" else "model.weights")
            for _ in range(args.repeats):
                with server() as url, tempfile.TemporaryDirectory(prefix="bench-download-") as scratch:
                    root = Path(scratch)
                    for var in ("WSSS_VOC_URL", "WSSS_SBD_URL", "WSSS_WR38_URL"):
                        os.environ[var] = url
                    if what == "voc prepare":
                        elapsed, first = time_failure(
                            lambda: prepare_voc(voc_data_cfg(root), root / "voc", progress=False), needle)
                    else:
                        elapsed, first = time_failure(lambda: fetch_weights("wr38", root, None, progress=False), needle)
                    times.append(elapsed)
            print(f"{name:<11} {what:<14} {statistics.median(times):>9.2f} {max(times):>8.2f}  {first[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
