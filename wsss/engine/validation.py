"""The validation loss during training and the choice of the checkpoint it scores best.

The public SSSS and WS-FCN code (``train.py``, ``validation``; the spec's section 4) computes, at the
start of every even epoch, the training loss of the network in evaluation mode on the validation
list, loaded as the training images are (the random resized crop, flip and colour jitter, batches
of the training batch size, in list order) and averaged over batches; from the segmentation epochs
on it keeps the weights whose ``1 - mean loss`` is strictly higher than every earlier one. Here:

- ``train.val_every`` sets the epochs (`wsss.config.validation_epochs`), ``train.val_split`` the list,
  ``train.select`` whether the final checkpoint holds the best weights (``best``) or the last (``last``);
- the loss is the method's own (``cls`` + ``seg_weight`` x ``seg``, or the supervised loss of
  `wsss supervise`), without the plug-ins' terms, so that variants are selected by one criterion;
- each image's augmentation draws from a generator seeded by ``train.seed`` and the image alone
  (`wsss.data.sampling`, the validation stream), so every validation sees the same crops and the
  training's own random stream is left as it was (the public code draws from the training's global
  stream);
- in a data-parallel run batch ``b`` is computed by rank ``b mod W`` and the sums are all-reduced,
  so the mean is that of one process.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from wsss import config as params
from wsss.data.dataset import VOCSegmentation, split_path
from wsss.data.sampling import VALIDATION, SeededSamples
from wsss.data.transforms import TrainTransform
from wsss.engine import distributed
from wsss.errors import WsssError
from wsss.paths import for_config

VAL_COLUMNS = ["stage", "epoch", "step", "val_loss", "val_cls", "val_seg", "score"]


def val_dataset(cfg: dict) -> VOCSegmentation:
    """The validation list ``train.val_split`` with the training transform; every listed file checked.

    WsssError naming the key when the list is not in the dataset.
    """
    root = for_config(cfg).data
    split = cfg["train"]["val_split"]
    listed = split_path(root, split)
    if not listed.is_file():
        raise WsssError(f"{listed}: the validation list of key 'train.val_split' ({split!r}) is not "
                        "in the dataset; name another list, or set train.val_every=0 and train.select=last")
    return VOCSegmentation(root, split, params.num_classes(cfg), transform=TrainTransform.from_config(cfg))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, loss_fn, dataset: VOCSegmentation, cfg: dict, device: torch.device,
                    supervised: bool = False, context: distributed.Context = distributed.SINGLE) -> dict:
    """The mean over batches of the loss terms on ``dataset``, the network in evaluation mode.

    Batches of ``train.batch_size`` in list order, the last one shorter; with ``context`` a rank of W,
    this rank computes every W-th batch and the sums are shared. Returns ``{"val_loss", "val_cls",
    "val_seg"}`` (floats; ``val_loss`` is the total). The network is left in evaluation mode; the
    global random generators are restored to their state on entry.
    """
    t = cfg["train"]
    model.eval()
    size = t["batch_size"]
    batches = [[(0, i) for i in range(start, min(start + size, len(dataset)))]
               for start in range(0, len(dataset), size)]
    sums = torch.zeros(3, dtype=torch.float64)  # total, cls, seg
    # every generator the loss might touch (the CPU's and each GPU's) is restored afterwards
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())), distributed.per_rank():
        loader = DataLoader(SeededSamples(dataset, t["seed"], VALIDATION), num_workers=t["workers"],
                            batch_sampler=batches[context.rank::context.world_size])
        for batch in loader:
            images = batch["image"].to(device)
            out = model(images)
            extra = {"mask": batch["mask"].to(device)} if supervised else {}
            losses = loss_fn(out, batch["raw"].to(device), batch["labels"].to(device), seg_on=True, **extra)
            sums += torch.tensor([float(losses[key]) for key in ("total", "cls", "seg")], dtype=torch.float64)
    mean = distributed.mean_over_ranks(sums, context) * context.world_size / len(batches)
    total, cls, seg = mean.tolist()
    return {"val_loss": total, "val_cls": cls, "val_seg": seg}


def score(row: dict) -> float:
    """The public code's checkpoint score: ``1 - mean validation loss`` (higher is better)."""
    return 1.0 - row["val_loss"]
