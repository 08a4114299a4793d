"""An EMA teacher: an exponential-moving-average copy of a trained module that a plug-in may own.

A plug-in makes one in its constructor from the network it is given (``EMATeacher(network,
momentum)``), runs it on any view with ``teacher(x)`` (no gradients, always in evaluation mode:
no dropout, the stochastic gate off, BatchNorm on its running statistics) and updates it in its
``after_step`` hook, which the trainer calls after every optimiser step:

    teacher <- momentum * teacher + (1 - momentum) * student     (every parameter)
    teacher buffers <- student buffers                           (BatchNorm statistics, counters)

Its parameters do not require gradients, so the optimiser and the gradient all-reduce leave them
out; as a sub-module of the plug-in it is saved with every checkpoint and restored on resume. Every
rank holds the same student after the all-reduce, so every rank's teacher stays the same.
(Mean teacher, Tarvainen & Valpola 2017; momentum 0.999 as there.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wsss.errors import WsssError


def check_momentum(value: float, key: str) -> None:
    """Refuse a momentum outside (0, 1) (WsssError naming ``key``)."""
    if not 0.0 < float(value) < 1.0:
        raise WsssError(f"key '{key}': teacher momentum {value!r} must lie strictly between 0 and 1")


class EMATeacher(nn.Module):
    """An EMA copy of ``module``, starting equal to it. ``momentum`` in (0, 1): the teacher's share."""

    def __init__(self, module: nn.Module, momentum: float):
        super().__init__()
        check_momentum(momentum, "momentum")
        self.momentum = float(momentum)
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        """Always evaluation mode, whatever the trainer asks of the plug-in around it."""
        return super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student`` (the same architecture): parameters blended, buffers copied."""
        mine, theirs = list(self.module.parameters()), list(student.parameters())
        if len(mine) != len(theirs):
            raise WsssError(f"EMA teacher: the student has {len(theirs)} parameters, the teacher {len(mine)}")
        for t, s in zip(mine, theirs):
            t.mul_(self.momentum).add_(s.detach().to(t.dtype), alpha=1.0 - self.momentum)
        for t, s in zip(self.module.buffers(), student.buffers()):
            t.copy_(s)
