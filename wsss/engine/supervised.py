"""The second stage's trainer: a segmentation network on a folder of masks, by iterations with poly decay.

As the field's DeepLab retraining on pseudo-masks (deeplab-pytorch's VOC configuration, used by the
two-stage WSSS methods): SGD with momentum ``retrain.momentum`` over four parameter groups (backbone
weights and biases, head weights and biases; ``retrain.lr_mults``, weight decay on the weights
only), the learning rate of each group ``lr * mult * (1 - step / iterations) ** poly_power`` before
every step, pixel cross-entropy with ``eval.ignore_index`` ignored, ``ScaleCropTransform``
augmentation. Epochs are passes over the training split in an order fixed by ``retrain.seed`` and
the epoch (the last incomplete batch dropped), each image augmented under a seed of its own
(`wsss.data.sampling`), so the result does not depend on ``retrain.workers``; the run stops after ``retrain.iterations`` steps,
mid-epoch if so. The whole state (network, optimiser, random generators, curve) is saved at the end
of every epoch under ``results/<dataset>/state/``: a killed run, re-run, resumes from there to the
same weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss import config as params
from wsss.data.dataset import VOCSegmentation
from wsss.data.sampling import EpochBatches, SeededSamples
from wsss.data.transforms import ScaleCropTransform
from wsss.engine import checkpoint, device as devices
from wsss.engine.trainer import curve_tsv
from wsss.errors import WsssError
from wsss.model.optim import build_optimizer
from wsss.model.segmenter import build_segmenter
from wsss.paths import StagePaths
from wsss.utils.atomic import write_text, write_yaml

LOG_COLUMNS = ["stage", "epoch", "step", "loss", "lr", "img_per_s"]


def poly_lr(base: float, step: int, iterations: int, power: float) -> float:
    """``base * (1 - step / iterations) ** power``: the poly schedule at ``step`` (0-based) of ``iterations``."""
    return base * (1.0 - step / iterations) ** power


def signature(cfg: dict) -> dict:
    """What a second-stage checkpoint's weights fit: the dataset, its classes and the network."""
    return {"dataset": cfg["data"]["name"], "num_classes": params.num_classes(cfg),
            "model": {"network": cfg["retrain"]["network"]}}


def run(cfg: dict, paths: StagePaths, name: str, masks: Path, output: str | None = None) -> None:
    """Train ``retrain.network`` on the training split's images with the masks in ``masks``; write
    ``results/<dataset>/<output>.pt`` (the checkpoint of stage ``name``: its ``config``, curve and the
    ``masks`` folder's path), ``<output>_log.tsv`` and ``<output>.yaml``; ``output`` defaults to
    ``name``. The resumable state is kept per configuration, mask folder path and output."""
    output = output or name
    r = cfg["retrain"]
    dev = devices.resolve(r["device"])
    devices.limit_cpu_threads(dev, reserved=r["workers"])
    checkpoint.seed_everything(r["seed"])
    dataset = VOCSegmentation(paths.data, cfg["data"]["train_split"], params.num_classes(cfg),
                              transform=ScaleCropTransform.from_config(cfg), mask_dir=masks)
    if len(dataset) < r["batch_size"]:
        raise WsssError(f"split '{cfg['data']['train_split']}' of {paths.data} has {len(dataset)} images, fewer than "
                        f"retrain.batch_size={r['batch_size']}")
    state_path = paths.state / f"{output}-{params.fingerprint({'cfg': cfg, 'phase': name, 'masks': str(masks)})}.pt"
    resume = checkpoint.load(state_path) if state_path.is_file() else None
    model = build_segmenter(cfg, load_weights=resume is None).to(dev)  # on resume the state brings the weights
    optimizer = build_optimizer(model, cfg, section="retrain")
    epoch, step, rows = 0, 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        checkpoint.set_rng_state(resume["rng"])
        epoch, step, rows = resume["epoch"], resume["step"], resume["log"]
        print(f"resuming {name} from {state_path} at step {step} (epoch {epoch})")
    iterations, ignore = r["iterations"], cfg["eval"]["ignore_index"]
    bar = tqdm(total=iterations, initial=step, desc=name, unit="step", dynamic_ncols=True)
    while step < iterations:
        model.train()
        # the order and each image's augmentation fixed by the seed, epoch and image (wsss.data.sampling)
        loader = DataLoader(SeededSamples(dataset, r["seed"]), num_workers=r["workers"],
                            batch_sampler=EpochBatches(len(dataset), r["batch_size"], r["seed"], epoch))
        tick, seen = time.perf_counter(), 0
        for batch in loader:
            if step >= iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(r["lr"] * group["lr_mult"], step, iterations, r["poly_power"])
            images, masks_ = batch["image"].to(dev, non_blocking=True), batch["mask"].to(dev)
            loss = F.cross_entropy(model(images)["logits"].float(), masks_, ignore_index=ignore)
            if not torch.isfinite(loss):
                raise WsssError(f"{name}: the loss became {loss.item()} at step {step}; lower retrain.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += images.shape[0]
            bar.update()
            if step % r["log_every"] == 0:
                now = time.perf_counter()
                rows.append({"stage": name, "epoch": epoch, "step": step, "loss": round(float(loss.detach()), 5),
                             "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(seen / max(now - tick, 1e-9), 2)})
                tick, seen = now, 0
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        epoch += 1
        checkpoint.save(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                                     "step": step, "rng": checkpoint.rng_state(), "log": rows, "signature": signature(cfg)})
    bar.close()
    checkpoint.save(paths.checkpoint(output), {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                             "epoch": epoch, "step": step, "rng": checkpoint.rng_state(), "log": rows,
                                             "signature": signature(cfg), "config": cfg, "stage": name,
                                             "supervised": True, "masks": str(masks)})
    write_text(paths.train_log(output), curve_tsv(rows, LOG_COLUMNS))
    write_yaml(paths.stage_config(output), cfg)
    state_path.unlink(missing_ok=True)
