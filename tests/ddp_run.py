"""A data-parallel run for tests/test_distributed.py: the same script as one process or under torchrun.

    python tests/ddp_run.py train CONFIG.json RESULTS [--kill-after-epoch E] [--deterministic]
    python tests/ddp_run.py batchnorm OUT_DIR
    python tests/ddp_run.py losses OUT_DIR
    python tests/ddp_run.py phases OUT_DIR

``train`` runs `wsss.engine.trainer` for pretrain then train on the configuration in CONFIG.json (what
`wsss pretrain` and `wsss train` do, without the dataset check of the CLI). ``--deterministic``
takes the network's own random layers out (dropout as identity, the stochastic gate at its
expectation), whose draws come from each rank's generator and so differ with the number of
processes. ``--kill-after-epoch E`` stops the run (exit status 1) right after the resumable state of
epoch E reached the disk. ``batchnorm`` and ``losses`` compute, on this rank's half of a fixed batch,
a synchronised BatchNorm and the balanced segmentation loss with their gradients, and write them to
OUT_DIR/rank<r>.pt. ``phases`` goes through 20 phases as the trainer brackets each one
(`distributed.init`, an all-reduce, `distributed.barrier`) and writes each phase's sum. These three also
write, in the process's last exit handler (after `wsss.engine.distributed` left the process group), how
many threads it still has: OUT_DIR/threads.rank<r>.txt.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn


def deterministic_network() -> None:
    from wsss.model.gate import StochasticGate

    nn.Dropout.forward = lambda self, x: x
    nn.Dropout2d.forward = lambda self, x: x
    StochasticGate.forward = lambda self, x1, x2: (1.0 - self.psi) * x1 + self.psi * x2


def train(config: Path, results: Path, kill_after: int | None) -> None:
    from wsss.engine import checkpoint, trainer
    from wsss.paths import for_config

    cfg = json.loads(config.read_text())
    paths = for_config(cfg, results)
    if kill_after is not None:
        real_save = checkpoint.save

        def save_then_die(path, state):
            real_save(path, state)
            if Path(path).parent == paths.state and state.get("epoch") == kill_after:
                print(f"killed after epoch {kill_after}", flush=True)
                os._exit(1)

        trainer.checkpoint.save = save_then_die
    for stage in ("pretrain", "train"):
        if not paths.checkpoint(stage).is_file():
            trainer.run(cfg, trainer.phase_for(stage, cfg, paths), paths)


def halves(out: Path, what: str) -> None:
    import torch.distributed as dist

    from wsss.engine import distributed
    from wsss.model.losses import balanced_seg_loss

    context = distributed.init(torch.device("cpu"))
    rank, world = context.rank, context.world_size
    generator = torch.Generator().manual_seed(7)
    result = {}
    if what == "batchnorm":
        x = torch.randn(8, 3, 5, 4, generator=generator) * 3 + 1
        bn = distributed.sync_batchnorms(nn.Sequential(nn.BatchNorm2d(3)), context, torch.device("cpu"))
        with torch.no_grad():
            bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            bn[0].bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
        mine = x.chunk(world)[rank].clone().requires_grad_(True)
        y = bn(mine)
        weights = torch.randn(8, 3, 5, 4, generator=generator).chunk(world)[rank]
        (y * weights).sum().backward()
        distributed.average_gradients(bn.parameters(), context)
        result = {"type": type(bn[0]).__name__, "y": y.detach(), "grad_x": mine.grad,
                  "grad_weight": bn[0].weight.grad * world, "running_mean": bn[0].running_mean,
                  "running_var": bn[0].running_var}
    else:
        logits = torch.randn(8, 3, 6, 6, generator=generator)
        pseudo = torch.randint(0, 3, (8, 6, 6), generator=generator)
        pseudo[[1, 2, 5]] = 0  # three images whose pseudo-labels miss their classes: not valid
        labels = torch.ones(8, 2)
        mine = logits.chunk(world)[rank].clone().requires_grad_(True)
        loss, _ = balanced_seg_loss(mine, pseudo.chunk(world)[rank], labels.chunk(world)[rank], reduction="valid")
        loss.backward()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        result = {"loss": total / world, "grad": mine.grad / world}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{rank}.pt")
    distributed.barrier(context)


def phases(out: Path, count: int = 20) -> None:
    import torch.distributed as dist

    from wsss.engine import distributed

    sums = []
    for _ in range(count):
        context = distributed.init(torch.device("cpu"))
        total = torch.tensor([context.rank + 1.0])
        dist.all_reduce(total)
        sums.append(total.item())
        distributed.barrier(context)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"sums": sums}, out / f"rank{context.rank}.pt")


def count_threads_at_exit(out: Path) -> None:
    """Registered before `distributed.init` registers its exit handler, so it runs after that one (last in,
    first out): the process's threads once it has left the process group (1: gloo's are gone)."""
    def count() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"threads.rank{os.environ.get('RANK', '0')}.txt").write_text(str(len(os.listdir("/proc/self/task"))))
    atexit.register(count)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["train", "batchnorm", "losses", "phases"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--kill-after-epoch", type=int, default=None)
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    if args.deterministic:
        deterministic_network()
    if args.what != "train":
        count_threads_at_exit(args.paths[0])
    if args.what == "train":
        train(args.paths[0], args.paths[1], args.kill_after_epoch)
    elif args.what == "phases":
        phases(args.paths[0])
    else:
        halves(args.paths[0], args.what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
