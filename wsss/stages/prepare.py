"""The prepare stage: build ``data/<name>`` (toy, voc, coco, custom) as one VOC-format root.

The dataset is built in a temporary folder beside its target and renamed into place only when
complete; ``prepared.json`` (dataset, classes, split sizes, the resolved ``data`` config) is
written last inside it, so a folder without it was never finished.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from wsss.config import dataset_dir
from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path, write_json

MARKER = "prepared.json"


def _toy(data_cfg: dict, out_dir: Path, progress: bool) -> dict:
    from wsss.data.toy import generate

    return generate(data_cfg["toy"], out_dir, progress=progress)


def _voc(data_cfg: dict, out_dir: Path, progress: bool) -> dict:
    from wsss.data.voc import prepare_voc

    return prepare_voc(data_cfg, out_dir, progress=progress)


def _coco(data_cfg: dict, out_dir: Path, progress: bool) -> dict:
    from wsss.data.coco import prepare_coco

    return prepare_coco(data_cfg, out_dir, progress=progress)


def _custom(data_cfg: dict, out_dir: Path, progress: bool) -> dict:
    from wsss.data.custom import prepare_custom

    return prepare_custom(data_cfg, out_dir, progress=progress)


# data.name -> builder(data_cfg, out_dir, progress) -> {num_classes, class_names, splits}
PREPARERS: dict[str, Callable[[dict, Path, bool], dict]] = {"toy": _toy, "voc": _voc, "coco": _coco,
                                                                  "custom": _custom}


def _check_target(data_cfg: dict, target: Path) -> None:
    source = data_cfg.get("source")
    if source and data_cfg["name"] != "toy":
        src, dst = Path(source).resolve(), target.resolve()
        if src == dst or dst in src.parents:
            raise WsssError(f"key 'data.source': {source} lies inside the output folder {target}, which prepare "
                            "replaces; move the copy elsewhere and point data.source there")
    if target.exists() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise WsssError(f"{target} exists but was not made by `wsss prepare` (no {MARKER}); it is left untouched: "
                        "move it away, or point the key 'data.source' at it")


def prepare_dataset(data_cfg: dict, target: str | Path, progress: bool = True) -> dict:
    """Build the dataset named by ``data_cfg["name"]`` at ``target``; return what prepared.json holds."""
    name = data_cfg["name"]
    if name not in PREPARERS:
        raise WsssError(f"key 'data.name': {name!r} is not a dataset (allowed: {', '.join(PREPARERS)})")
    target = Path(target)
    _check_target(data_cfg, target)
    with atomic_path(target, directory=True) as tmp:
        built = PREPARERS[name](data_cfg, tmp, progress)
        for key in ("train_split", "eval_split"):
            if data_cfg[key] not in built["splits"]:
                raise WsssError(f"key 'data.{key}': {data_cfg[key]!r} is not a split of {name} "
                                f"(splits: {', '.join(built['splits'])})")
        info = {
            "dataset": name,
            "num_classes": built["num_classes"],
            "class_names": built["class_names"],
            "splits": built["splits"],
            "data": data_cfg,
        }
        write_json(tmp / MARKER, info)
    return info


def summary(info: dict, target: Path, seconds: float) -> str:
    splits = ", ".join(f"{split} {count}" for split, count in info["splits"].items())
    return (f"prepared {info['dataset']}: {info['num_classes']} classes (incl. background), "
            f"images per split: {splits} -> {target} in {seconds:.1f} s")


def run(cfg: dict, args=None) -> dict:
    start = time.perf_counter()
    target = dataset_dir(cfg)
    info = prepare_dataset(cfg["data"], target, progress=sys.stderr.isatty())
    print(summary(info, target, time.perf_counter() - start))
    return info
