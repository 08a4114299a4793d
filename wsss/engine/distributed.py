"""Data-parallel training: one process per GPU (or per CPU share), launched by torchrun or srun.

One initialisation path for every launcher (`init`):

- under ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` set by it);
- under ``srun`` with more than one task (``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``; the
  rendezvous address from ``MASTER_ADDR``/``MASTER_PORT`` when set, else the first host of
  ``SLURM_JOB_NODELIST`` through ``scontrol`` and a port derived from the job id);
- otherwise one process, nothing initialised.

A process joins the process group once, at its first `init`, and leaves it when it exits: the phases
it runs after the first (pretrain then train in one Python process) use the same group. Leaving and
joining again does not work: ``destroy_process_group`` resets torch's group counter, so the new
default group takes the old one's name, and the launcher's rendezvous store still holds the old
group's gloo addresses under it; the new handshake reads them and fails ("Gloo connectFullMesh
failed ... Connection refused") or waits forever, within a few cycles (torch 2.14).

The backend is NCCL on GPUs (each process takes the GPU of its local rank) and gloo on CPUs.
``train.batch_size`` is the global batch: each of the W ranks takes its contiguous 1/W share of every
global batch (`wsss.data.sampling.EpochBatches`), computes the loss of its share with the global
normalisers (`share_of_count`), and the gradients of every trainable parameter (the network's and
the plug-ins') are averaged over the ranks after each backward pass (`average_gradients`). So one
step on W ranks is the step of one process on the whole batch, to float rounding. BatchNorms in
training mode are synchronised (`sync_batchnorms`): torch's ``SyncBatchNorm`` on GPUs, `CPUSyncBatchNorm`
on CPUs, where torch's refuses to run.

`torch.nn.parallel.DistributedDataParallel` is not used: the plug-ins run the network on extra views
within one step and own heads outside it, which DDP's one-forward-per-backward reducer does not
carry; one flat all-reduce of all gradients per step carries every case with one code path.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd.function import once_differentiable

from wsss.errors import WsssError


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Context()


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else None


def launched_ranks() -> int:
    """The number of processes the launcher started (``WORLD_SIZE`` of torchrun, ``SLURM_NTASKS`` of
    srun); 1 when none did. A batch script's own ``SLURM_NTASKS`` counts only inside ``srun``
    (``SLURM_STEP_ID`` set)."""
    if _int_env("WORLD_SIZE") is not None:
        return _int_env("WORLD_SIZE")
    if _int_env("SLURM_STEP_ID") is not None and (_int_env("SLURM_NTASKS") or 1) > 1:
        return _int_env("SLURM_NTASKS")
    return 1


def _slurm_rendezvous() -> None:
    """``MASTER_ADDR``/``MASTER_PORT`` for a job started by srun, unless already set."""
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        if not nodes:
            raise WsssError("srun started several tasks but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        try:
            hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                   check=True, timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            raise WsssError(f"cannot resolve the first host of SLURM_JOB_NODELIST={nodes!r} with scontrol "
                            f"({exc}); set MASTER_ADDR") from None
        os.environ["MASTER_ADDR"] = hosts[0]
    os.environ.setdefault("MASTER_PORT", str(20000 + (_int_env("SLURM_JOB_ID") or 0) % 20000))


def init(device: torch.device) -> Context:
    """Join the process group the launcher set up (see the module's text); a single process otherwise.

    On CUDA each process is bound to the GPU of its local rank. Raises WsssError when the launcher
    started more processes than there are GPUs on a node, or its environment is incomplete.
    """
    world = launched_ranks()
    if world == 1:
        return SINGLE
    if _int_env("WORLD_SIZE") is not None:  # torchrun
        rank, local = _int_env("RANK"), _int_env("LOCAL_RANK")
    else:  # srun
        rank, local = _int_env("SLURM_PROCID"), _int_env("SLURM_LOCALID")
        _slurm_rendezvous()
    if rank is None or local is None:
        raise WsssError(f"a launcher started {world} processes but did not set this one's rank "
                        "(RANK/LOCAL_RANK under torchrun, SLURM_PROCID/SLURM_LOCALID under srun)")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise WsssError(f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start at most "
                            "that many processes per node (train.processes, torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
    if not dist.is_initialized():  # once per process (see the module's text); left at exit
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                init_method="env://")
        atexit.register(_leave)
    return Context(rank=rank, world_size=world, local_rank=local)


def _leave() -> None:
    """Leave the process group at the process's exit, without waiting for the other ranks."""
    if dist.is_initialized():
        dist.destroy_process_group()


def processes_on_node(context: Context) -> int:
    """How many ranks share this machine (``LOCAL_WORLD_SIZE`` of torchrun, ``SLURM_NTASKS_PER_NODE``
    of srun; all of them otherwise)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if context.distributed and _int_env(name):
            return _int_env(name)
    return context.world_size


def device_of(context: Context, device: torch.device) -> torch.device:
    """The device this rank computes on: its own GPU on CUDA, the CPU otherwise."""
    return torch.device("cuda", context.local_rank) if device.type == "cuda" and context.distributed else device


def barrier(context: Context) -> None:
    """Wait for every rank (a no-op for one process); at the end of a phase too, where the process group
    stays for the process's next phase (see the module's text)."""
    if context.distributed:
        dist.barrier()


_PER_RANK = [False]  # within `per_rank()`: losses normalise by this rank's counts


@contextlib.contextmanager
def per_rank():
    """Within it, `share_of_count` returns this rank's own count: for work that a rank does alone
    (a whole validation batch), where the other ranks are not computing the same loss."""
    _PER_RANK[0] = True
    try:
        yield
    finally:
        _PER_RANK[0] = False


def share_of_count(count: torch.Tensor) -> torch.Tensor:
    """The global count over ranks divided by the number of ranks: the normaliser that makes the mean
    over ranks of a per-rank ``sum / share`` equal to the global ``sum / count`` (``count`` itself
    for one process). Used where a loss divides by a count that differs between ranks (valid images,
    labelled pixels)."""
    if _PER_RANK[0] or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return (total / dist.get_world_size()).to(count.dtype if count.is_floating_point() else torch.float32)


def mean_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    """The element-wise mean of ``values`` over the ranks (``values`` itself for one process)."""
    if not context.distributed:
        return values
    home = values.device
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else home
    values = values.detach().to(on, copy=True)
    dist.all_reduce(values)
    return (values / context.world_size).to(home)


def average_gradients(parameters, context: Context) -> None:
    """Replace each parameter's gradient by its mean over the ranks, in one flat all-reduce.

    A parameter without a gradient on this rank takes part with zeros, so that every rank reduces
    the same buffer; it keeps no gradient afterwards if no rank had one.
    """
    if not context.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    dist.all_reduce(had)
    flat /= context.world_size
    offset = 0
    for p, any_rank in zip(params, had.tolist()):
        n = p.numel()
        if any_rank:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum over the ranks of the gradients
    (every rank's output depends on every rank's input), an all-reduce in the backward pass too; not
    twice differentiable.

    Built on ``torch.distributed.all_reduce``, which holds no reference to the process group, so that
    `_leave` frees it: gloo's threads stop only when the group's last reference goes
    (``destroy_process_group`` drops torch's own, and gloo's ``shutdown`` does nothing). torch's
    differentiable all-reduces keep one: ``torch.distributed.nn.functional.all_reduce`` binds
    ``group.WORLD`` as it is at the module's first import (the default group, when imported after
    `init`), and ``torch.distributed._functional_collectives.all_reduce`` keeps references from its
    first call. gloo's threads then still run while Python shuts down, and a rank can abort at exit
    ("terminate called without an active exception") after its work is done."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d that, in training mode within a process group, normalises with the statistics of
    the global batch: per-channel sums and sums of squares are all-reduced with
    `_SumOverRanks` (which carries gradients), so the forward and
    backward passes are those of one BatchNorm over every rank's images. The running statistics
    take the unbiased global variance, as ``torch.nn.BatchNorm2d`` does. Outside a process group, or
    in evaluation mode, it is ``torch.nn.BatchNorm2d``. For CPUs (gloo), where torch's
    ``SyncBatchNorm`` does not run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        # two passes (the mean, then the centred squares) keep the variance exact where E[x^2] - E[x]^2 cancels
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        var = _SumOverRanks.apply((x - mean.view(1, -1, 1, 1)).pow(2).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def _synced(bn: nn.BatchNorm2d, device: torch.device) -> nn.Module:
    kind = nn.SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm
    new = kind(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
               track_running_stats=bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    if bn.affine:
        new.weight.requires_grad_(bn.weight.requires_grad)
        new.bias.requires_grad_(bn.bias.requires_grad)
    return new.to(device)


def sync_batchnorms(module: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """Swap every plain ``nn.BatchNorm2d`` below ``module`` for its synchronised form (in place; the
    parameter and buffer names, hence checkpoints, are unchanged). Subclasses with their own rule
    (`wsss.model.layers.FrozenStatsBatchNorm2d`) are kept; BatchNorms a backbone freezes stay in
    evaluation mode, where no statistics are synchronised. Nothing changes for one process."""
    if not context.distributed:
        return module
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, _synced(child, device))
        else:
            sync_batchnorms(child, context, device)
    return module


def launch(processes: int, argv: list[str] | None = None) -> int:
    """Re-run this ``wsss`` command under ``torchrun --standalone --nproc-per-node processes`` and
    return its exit status (the job's: non-zero when any rank failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "wsss.cli", *argv]
    print(f"launching {processes} processes: torchrun --standalone --nproc-per-node={processes} "
          f"-m wsss.cli {' '.join(argv)}", flush=True)
    return subprocess.run(command, check=False).returncode


def needs_launch(processes: int) -> bool:
    """True when ``train.processes`` asks for more than one process and no launcher started this one."""
    return processes > 1 and launched_ranks() == 1

