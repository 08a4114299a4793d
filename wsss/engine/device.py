"""Device choice from a params value (auto | cpu | cuda)."""

from __future__ import annotations

import os

import torch

from wsss.errors import WsssError
from wsss.utils.cores import available_cores


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WsssError("device 'cuda' was asked for (train.device / infer.device) but no CUDA GPU is available")
    return torch.device(name)


def limit_cpu_threads(dev: torch.device, reserved: int = 0, processes: int = 1) -> int:
    """On CPU, one intra-op thread per core not taken by data-loader workers, the cores shared
    evenly by the ``processes`` of a data-parallel run on this machine.

    Oversubscribed OpenMP threads spin against each other: on 2 cores, 2 threads beside a busy
    loader worker made a training step 10-20 times slower than 1 thread. ``OMP_NUM_THREADS``, when
    set (as for jobs sharing the machine), is the budget to share with the workers instead of the
    core count.
    """
    if dev.type != "cpu":
        return torch.get_num_threads()
    budget = available_cores()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        budget = int(os.environ["OMP_NUM_THREADS"])
    threads = max(1, budget // max(1, processes) - reserved)
    torch.set_num_threads(threads)
    return threads
