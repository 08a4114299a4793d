"""How many CPU cores this process may use."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the system has one (a SLURM
    job or a container limited to some cores sees those, not the whole node), else the core count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
