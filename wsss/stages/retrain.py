"""`wsss retrain`: the second stage, a fully supervised network trained on the training split's pseudo-masks.

Reads ``results/<dataset>/<train_split>/pseudo/masks/`` (``wsss pseudo``), checks every pseudo-mask
before any training (one per training image, the image's size, class values of the dataset or
255), then trains ``retrain.network`` (``wsss.model.segmenter``) with
``wsss.engine.supervised``. Writes ``results/<dataset>/retrain.pt``, ``retrain_log.tsv`` and
``retrain.yaml``; ``wsss infer --stage2``, ``wsss crf --stage2`` and ``wsss evaluate --stage2`` then
score it as the first stage is scored.

With ``--ground-truth`` the same trainer, network and schedule learn from the training split's
ground-truth masks instead (the folder ``wsss.data.voc.training_mask_dir`` names, as the weak
training reads its image labels from): the fully supervised ceiling of the second stage, which the
ablation benchmark's two-stage report measures WS-FCN against. It writes ``retrain_gt.pt``,
``retrain_gt_log.tsv`` and ``retrain_gt.yaml`` beside, never over, the second stage's files;
``wsss infer --stage2 --checkpoint results/<dataset>/retrain_gt.pt`` scores it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.dataset import check_mask, read_split
from wsss.data.palette import load_mask
from wsss.data.voc import training_mask_dir
from wsss.engine import supervised
from wsss.errors import WsssError
from wsss.paths import for_config


GROUND_TRUTH = "retrain_gt"  # the ceiling's files: results/<dataset>/retrain_gt.pt, _log.tsv, .yaml


def check_pseudo_masks(data_dir: Path, split: str, masks: Path, num_classes: int) -> None:
    """Refuse a pseudo-mask folder that lacks a training image's mask, or holds one of another size than its
    image or with values outside ``0..num_classes-1`` and 255, naming the file (WsssError)."""
    names = read_split(data_dir, split)
    missing = [name for name in names if not (masks / f"{name}.png").is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WsssError(f"pseudo-mask {masks / missing[0]}.png is missing{more}: the folder does not cover split "
                        f"'{split}'; re-run `wsss pseudo`")
    for name in tqdm(names, desc="check pseudo-masks", unit="mask", dynamic_ncols=True):
        with Image.open(data_dir / "JPEGImages" / f"{name}.jpg") as image:  # the header only
            size = image.size
        check_mask(load_mask(masks / f"{name}.png"), size, num_classes, masks / f"{name}.png")


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    provenance.check_dataset(paths.data, cfg)
    if getattr(args, "ground_truth", False):
        masks = paths.data / training_mask_dir(cfg, paths.data)
        supervised.run(cfg, paths, "retrain", masks.resolve(), output=GROUND_TRUTH)
        print(f"retrain: wrote {paths.checkpoint(GROUND_TRUTH)} ({cfg['retrain']['iterations']} iterations on the "
              f"ground-truth masks {masks})")
        return
    masks = paths.pseudo / "masks"
    if not masks.is_dir():
        raise WsssError(f"pseudo-masks missing: {masks}; run `wsss pseudo` first")
    provenance.check_stage_dir(paths.pseudo, cfg, "pseudo")
    check_pseudo_masks(paths.data, cfg["data"]["train_split"], masks, params.num_classes(cfg))
    supervised.run(cfg, paths, "retrain", masks.resolve())
    print(f"retrain: wrote {paths.checkpoint('retrain')} ({cfg['retrain']['iterations']} iterations)")
