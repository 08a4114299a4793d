"""The training loop shared by `pretrain` and `train`: epochs, logging, resumable state, final checkpoint.

`pretrain` runs epochs [0, cls_epochs) with the classification loss only; `train` starts from the
pretrain checkpoint and runs [cls_epochs, epochs) with the segmentation term switched on, computing
the validation loss before the epochs `wsss.config.validation_epochs` names (`wsss.engine.validation`)
and, with ``train.select: best``, ending with the weights it scored best. After every epoch the full
state (model, optimiser, epoch, RNG states, curve and validation rows, the best score so far and its
weights) is saved atomically under ``results/<dataset>/state/``; the same command re-run after a
kill continues from there, with any number of processes.

Data parallel (`wsss.engine.distributed`): run as one process, or with ``train.processes`` > 1 the
command re-runs itself under ``torchrun`` (or is started by torchrun or srun directly); the global
batch ``train.batch_size`` is split over the ranks, gradients are averaged over them, and only rank 0
writes. The images' order and augmentation depend on the seed, epoch and image alone
(`wsss.data.sampling`), and the global random generators are re-seeded from (seed, epoch, rank) at the
start of every epoch, so a resumed run is the uninterrupted one and a run's data do not depend on the
number of processes or loader workers. What still draws from a rank's own generator (dropout, a
plug-in's sampling) differs with the number of processes.
"""

from __future__ import annotations

import copy as copy_module
import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.dataset import VOCSegmentation
from wsss.data.sampling import EpochBatches, SeededSamples, check_batch_split, sample_seed
from wsss.data.transforms import TrainTransform
from wsss.data.voc import training_mask_dir
from wsss.data.weights import fetch_weights
from wsss.figures import training_curve
from wsss.engine import checkpoint, device as devices, distributed, validation
from wsss.errors import WsssError
from wsss.model.losses import build_loss
from wsss.model.network import build_model
from wsss.model.optim import build_optimizer
from wsss.paths import StagePaths, for_config
from wsss.plugins import PluginSet, Step, build_plugins, check_plugins
from wsss.utils.atomic import write_text, write_yaml

LOG_COLUMNS = ["stage", "epoch", "step", "loss", "cls", "seg", "lr", "img_per_s", "pseudo_valid"]
TENSORS = ("pseudo", "refined")  # loss outputs that are maps, not curve values


@dataclass
class Phase:
    """One training stage: its name, epoch range, and whether the segmentation loss is on."""

    name: str
    first_epoch: int
    end_epoch: int
    init_checkpoint: Path | None = None
    supervised: bool = False


def phase_for(stage: str, cfg: dict, paths: StagePaths) -> Phase:
    train = cfg["train"]
    if stage == "pretrain":
        return Phase("pretrain", 0, train["cls_epochs"])
    if stage == "train":
        return Phase("train", train["cls_epochs"], train["epochs"], paths.checkpoint("pretrain"))
    if stage == "supervise":  # as `train`, from the same pretrain checkpoint, with ground truth for pseudo-labels
        return Phase("supervise", train["cls_epochs"], train["epochs"], paths.checkpoint("pretrain"), supervised=True)
    raise ValueError(stage)


def _dataset(cfg: dict) -> VOCSegmentation:
    """The training split, checked once (every listed file exists) for the whole run."""
    root = for_config(cfg).data
    dataset = VOCSegmentation(root, cfg["data"]["train_split"], params.num_classes(cfg),
                              transform=TrainTransform.from_config(cfg), mask_dir=training_mask_dir(cfg, root))
    if len(dataset) < cfg["train"]["batch_size"]:
        raise WsssError(f"split '{cfg['data']['train_split']}' of {root} has {len(dataset)} images, fewer than "
                        f"train.batch_size={cfg['train']['batch_size']}")
    return dataset


def _loader(dataset: VOCSegmentation, cfg: dict, epoch: int, context: distributed.Context,
            pin_memory: bool = False) -> DataLoader:
    """This rank's share of every global batch of ``epoch`` (`wsss.data.sampling`); ``pin_memory``
    (training on a GPU) lets the batches go to it asynchronously."""
    t = cfg["train"]
    batches = EpochBatches(len(dataset), t["batch_size"], t["seed"], epoch, context.rank, context.world_size)
    return DataLoader(SeededSamples(dataset, t["seed"]), batch_sampler=batches, num_workers=t["workers"],
                      pin_memory=pin_memory)


def speed_settings(model: torch.nn.Module, cfg: dict, dev: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The training-speed keys, none of which changes what is computed beyond float rounding:
    ``train.channels_last`` (the network's weights and the batches in channels-last memory format),
    ``train.cudnn_benchmark`` (cuDNN picks its fastest convolution algorithms; CUDA only) and
    ``train.compile`` (the training steps run ``torch.compile(model)``; the weights saved are the
    eager module's, so checkpoints do not change). Returns the module the steps call and the
    batches' memory format."""
    t = cfg["train"]
    memory_format = torch.channels_last if t["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    torch.backends.cudnn.benchmark = bool(t["cudnn_benchmark"]) and dev.type == "cuda"
    return (torch.compile(model) if t["compile"] else model), memory_format


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the global generators for ``epoch`` on ``rank`` (dropout, plug-ins' sampling)."""
    return sample_seed(seed, 2, epoch, rank) % 2**32


# keys that say how a run is spread, not what it computes: a state saved with other values resumes
HOW_IT_RUNS = ("processes", "workers")


def _state_path(cfg: dict, phase: Phase, paths: StagePaths) -> Path:
    what = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in HOW_IT_RUNS}}
    key = params.fingerprint({"cfg": what, "phase": phase.name, "supervised": phase.supervised})
    return paths.state / f"{phase.name}-{key}.pt"


def curve_tsv(rows: list[dict], columns: list[str] = LOG_COLUMNS) -> str:
    """Training-curve rows as a tab-separated table under a header of ``columns``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plugin_state(plugins: PluginSet, copy: bool = False) -> dict:
    """A checkpoint's ``plugins`` entry (heads and state of every plug-in); none without plug-ins.
    ``copy``: tensors copied to the CPU, to be kept while training goes on."""
    if not plugins:
        return {}
    return {"plugins": _cpu_copy(plugins.state_dict()) if copy else plugins.state_dict()}


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy_module.deepcopy(v)
            for k, v in state.items()}


def _with_plugins(plugins: PluginSet, model: torch.nn.Module, out: dict, images: torch.Tensor, raw: torch.Tensor,
                  labels: torch.Tensor, epoch: int, seg_on: bool, loss_fn, extra: dict, use_amp: bool) -> dict:
    """The network's loss with the plug-ins: their views through the network, their pseudo-label
    adjustment, and their weighted terms added to ``total`` (each also under ``<plugin>.<term>``)."""
    views = plugins.extra_views(images, raw)
    outputs = {"crop": out}
    for name, (view, _) in views.items():
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs[name] = model(view)
    if "mask" not in extra:  # the weak loss: the plug-ins may adjust its pseudo-labels
        extra = {**extra, "adjust": plugins.adjust_pseudo}
    losses = dict(loss_fn(out, raw, labels, seg_on=seg_on, **extra))
    step = Step(epoch, seg_on, images, raw, labels, outputs, views, losses.get("pseudo"), losses.get("refined"))
    terms = plugins.losses(step)
    losses["total"] = losses["total"] + PluginSet.total(terms)
    losses.update({name: value.detach() for name, (value, _) in terms.items()})
    return losses


def _log_values(losses: dict, context: distributed.Context) -> dict[str, float]:
    """The step's scalar losses averaged over the ranks (the global batch's values), as floats."""
    keys = sorted(k for k in losses if k not in TENSORS)
    values = torch.tensor([float(torch.as_tensor(losses[k]).detach()) for k in keys], dtype=torch.float64)
    return dict(zip(keys, distributed.mean_over_ranks(values, context).tolist()))


def run(cfg: dict, phase: Phase, paths: StagePaths) -> bool:
    """Run ``phase`` and write its checkpoint, curve and configuration under ``paths`` (rank 0 only).
    Returns whether this process is rank 0 (the one that wrote)."""
    t = cfg["train"]
    dev = devices.resolve(t["device"])
    context = distributed.init(dev)
    try:
        _run(cfg, phase, paths, distributed.device_of(context, dev), context)
    finally:
        distributed.barrier(context)
    return context.is_main


def _run(cfg: dict, phase: Phase, paths: StagePaths, dev: torch.device, context: distributed.Context) -> None:
    out_checkpoint, out_log, out_config = (paths.checkpoint(phase.name), paths.train_log(phase.name),
                                           paths.stage_config(phase.name))
    t = cfg["train"]
    check_batch_split(t["batch_size"], context.world_size)
    devices.limit_cpu_threads(dev, reserved=t["workers"], processes=distributed.processes_on_node(context))
    checkpoint.seed_everything(t["seed"])  # the same initial weights on every rank
    check_plugins(cfg)  # a bad plug-in setting stops the run before anything else happens
    if phase.init_checkpoint is None and cfg["model"]["pretrained"]:
        if context.is_main:
            fetch_weights(cfg["model"]["backbone"], cfg["data"]["downloads"], cfg["model"]["weights"])
        distributed.barrier(context)
    # ImageNet weights only when starting from scratch; otherwise the checkpoint brings them.
    model = distributed.sync_batchnorms(build_model(cfg, load_weights=phase.init_checkpoint is None), context, dev)
    model = model.to(dev)
    # plug-in heads are made after the network, so that its initialisation does not depend on them
    plugins = distributed.sync_batchnorms(build_plugins(cfg, model), context, dev).to(dev)
    step_model, memory_format = speed_settings(model, cfg, dev)
    optimizer = build_optimizer(model, cfg, extra=plugins)  # without plug-ins: the model's groups, unchanged
    loss_fn = build_loss(cfg, supervised=phase.supervised)
    rows: list[dict] = []
    val_rows: list[dict] = []
    best: dict = {"epoch": None, "score": None}  # the best validation so far (train.select: best)
    best_weights: dict | None = None  # its network (and plug-in) weights, on the CPU
    start, step = phase.first_epoch, 0  # step counts optimiser steps over the whole schedule

    if phase.init_checkpoint is not None:
        init = checkpoint.load(phase.init_checkpoint)
        checkpoint.check_made_by(init, cfg, phase.init_checkpoint, "pretrain")
        checkpoint.check_signature(init, cfg, phase.init_checkpoint)
        model.load_state_dict(init["model"])
        optimizer.load_state_dict(init["optimizer"])
        if plugins:  # pretrain ran with the same plug-ins (check_made_by): their heads and state go on
            plugins.load_state_dict(init["plugins"])
        if init["epoch"] != phase.first_epoch:
            raise WsssError(f"checkpoint {phase.init_checkpoint} ends at epoch {init['epoch']}, but train.cls_epochs is "
                            f"{phase.first_epoch}; re-run pretrain")
        rows, step = list(init["log"]), init["step"]

    state_path = _state_path(cfg, phase, paths)
    if state_path.is_file():
        state = checkpoint.load(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if plugins:
            plugins.load_state_dict(state["plugins"])
        start, rows, step = state["epoch"], state["log"], state["step"]
        val_rows, best, best_weights = state["val_log"], state["best"], state["best_weights"]
        if context.is_main:
            print(f"resuming {phase.name} from {state_path} at epoch {start}")

    dataset = _dataset(cfg)
    val_epochs = [e for e in params.validation_epochs(t) if phase.first_epoch <= e < phase.end_epoch]
    val_data = validation.val_dataset(cfg) if val_epochs else None
    use_amp = t["amp"] and dev.type == "cuda"
    for epoch in range(start, phase.end_epoch):
        if epoch in val_epochs:  # before the epoch's training, as the public code does
            losses = validation.validation_loss(model, loss_fn, val_data, cfg, dev, phase.supervised, context)
            score = validation.score(losses)
            val_rows.append({"stage": phase.name, "epoch": epoch, "step": step,
                             **{k: round(v, 5) for k, v in losses.items()}, "score": round(score, 5)})
            if context.is_main:
                print(f"{phase.name}: validation loss {losses['val_loss']:.4f} after {epoch} epochs")
            if t["select"] == "best" and (best["score"] is None or score > best["score"]):
                best_weights = {"model": _cpu_copy(model.state_dict()), **_plugin_state(plugins, copy=True)}
                best = {"epoch": epoch, "score": score}
        model.train()
        checkpoint.seed_everything(epoch_seed(t["seed"], epoch, context.rank))
        seg_on = epoch >= t["cls_epochs"]
        loader = _loader(dataset, cfg, epoch, context, pin_memory=dev.type == "cuda")
        bar = tqdm(loader, desc=f"{phase.name} epoch {epoch + 1}/{t['epochs']}", unit="batch", dynamic_ncols=True,
                   disable=not context.is_main)
        tick, seen = time.perf_counter(), 0
        for batch in bar:
            images = batch["image"].to(dev, non_blocking=True).contiguous(memory_format=memory_format)
            labels = batch["labels"].to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                out = step_model(images)
            extra = {"mask": batch["mask"].to(dev)} if phase.supervised else {}
            if plugins:
                losses = _with_plugins(plugins, step_model, out, images, batch["raw"].to(dev), labels, epoch, seg_on,
                                       loss_fn, extra, use_amp)
            else:
                losses = loss_fn(out, batch["raw"].to(dev), labels, seg_on=seg_on, **extra)
            value = _log_values(losses, context)
            if not math.isfinite(value["total"]):
                raise WsssError(f"{phase.name}: the loss became {value['total']} at epoch {epoch}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            distributed.average_gradients([*model.parameters(), *plugins.parameters()], context)
            optimizer.step()
            if plugins:
                plugins.after_step(model)
            step += 1
            seen += images.shape[0] * context.world_size
            if step % t["log_every"] == 0:
                now = time.perf_counter()
                rows.append({
                    "stage": phase.name, "epoch": epoch, "step": step,
                    "loss": round(value["total"], 5), "cls": round(value["cls"], 5), "seg": round(value["seg"], 5),
                    "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(seen / max(now - tick, 1e-9), 2),
                    "pseudo_valid": round(value.get("pseudo_valid", float("nan")), 4),
                    **{column: round(value[column], 5) for column in plugins.columns},
                })
                tick, seen = now, 0
                bar.set_postfix(loss=f"{value['total']:.3f}", seg=f"{value['seg']:.3f}")
        if context.is_main:
            checkpoint.save(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "epoch": epoch + 1, "step": step, "rng": checkpoint.rng_state(), "log": rows,
                                         "val_log": val_rows, "best": best, "best_weights": best_weights,
                                         "signature": checkpoint.model_signature(cfg), **_plugin_state(plugins)})

    selected = {"rule": "last", "epoch": phase.end_epoch, "score": None}
    if best["epoch"] is not None:  # train.select: best, and a validation ran in this phase
        model.load_state_dict(best_weights["model"])
        if plugins:
            plugins.load_state_dict(best_weights["plugins"])
        selected = {"rule": "best", **best}
    if not context.is_main:
        return
    checkpoint.save(out_checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "epoch": phase.end_epoch, "step": step, "rng": checkpoint.rng_state(), "log": rows,
                                     "signature": checkpoint.model_signature(cfg), "config": cfg,
                                     "stage": phase.name, "supervised": phase.supervised, "val_log": val_rows,
                                     "selected": selected, **_plugin_state(plugins)})
    curve = [r for r in rows if r["stage"] == phase.name]
    write_text(out_log, curve_tsv(curve, LOG_COLUMNS + plugins.columns))
    if phase.name != "pretrain":
        write_text(paths.val_log(phase.name), curve_tsv(val_rows, validation.VAL_COLUMNS))
        training_curve(curve, val_rows, selected, f"{phase.name} ({cfg['data']['name']})",
                       paths.curve_figure(phase.name))
    write_yaml(out_config, cfg)
    state_path.unlink(missing_ok=True)


def run_stage(stage: str, cfg: dict, results: str | Path | None = None, argv: list[str] | None = None) -> None:
    """The `pretrain` / `train` / `supervise` CLI: check the dataset is prepared, run the phase, say what it wrote.

    With ``train.processes`` > 1 and no launcher around, ``argv`` (the command's arguments) is re-run
    under torchrun with that many processes.
    """
    paths = for_config(cfg, results)
    provenance.check_dataset(paths.data, cfg)
    phase = phase_for(stage, cfg, paths)
    processes = cfg["train"]["processes"]
    if distributed.needs_launch(processes):
        check_batch_split(cfg["train"]["batch_size"], processes)
        if argv is None:
            raise WsssError(f"key 'train.processes' is {processes}: run `wsss {stage}` from the command line, "
                            "or under torchrun")
        status = distributed.launch(processes, argv)
        if status:
            raise WsssError(f"{stage}: the run on {processes} processes failed (exit status {status}); "
                            "the ranks' messages are above")
        return
    if run(cfg, phase, paths):
        print(f"{stage}: wrote {paths.checkpoint(stage)} (epochs {phase.first_epoch}-{phase.end_epoch})")
