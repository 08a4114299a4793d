"""A user's own VOC-format dataset with its own classes (``data.name: custom``).

``data.source`` is a folder holding ``JPEGImages/<name>.jpg``, ``SegmentationClass/<name>.png``
(class indices, palette or greyscale; 255 = ignore) and ``ImageSets/Segmentation/<split>.txt``;
``data.classes`` names the classes, background first: the name at index ``k`` is mask value ``k``.
prepare verifies every listed image and mask (a mask value without a name is an error naming the
file) and links (or copies) them into ``data/custom``. Every later stage takes the number of classes
from ``data.classes``; the evaluator's table and figures take the names from ``prepared.json``.
``docs/custom-data.md`` walks through it.
"""

from __future__ import annotations

from pathlib import Path

from wsss.data.dataset import verify_root
from wsss.data.voc import is_voc_root, link_tree, read_list, write_lists
from wsss.errors import WsssError

LAYOUT = "JPEGImages/<name>.jpg, SegmentationClass/<name>.png and ImageSets/Segmentation/<split>.txt"


def _source(data_cfg: dict) -> Path:
    source = data_cfg.get("source")
    if not source:
        raise WsssError(f"key 'data.source': data.name 'custom' reads your VOC-format folder ({LAYOUT}); "
                        "set data.source to it")
    folder = Path(source)
    if not folder.is_dir():
        raise WsssError(f"key 'data.source': {folder} is not a folder")
    if not is_voc_root(folder):
        raise WsssError(f"key 'data.source': {folder} is not a VOC-format folder (it needs {LAYOUT})")
    return folder


def _lists(folder: Path, data_cfg: dict) -> dict[str, list[str]]:
    """Every split list of ``folder``; ``train_aug`` repeats ``train`` where the folder has none (the
    default ``data.train_split``, as for COCO). The training and evaluation splits must be there."""
    seg = folder / "ImageSets" / "Segmentation"
    lists = {p.stem: read_list(p) for p in sorted(seg.glob("*.txt"))}
    if "train_aug" not in lists and "train" in lists:
        lists["train_aug"] = lists["train"]
    for key in ("train_split", "eval_split"):
        if data_cfg[key] not in lists:
            raise WsssError(f"key 'data.{key}': {seg / (data_cfg[key] + '.txt')} not found "
                            f"(splits there: {', '.join(sorted(lists)) or 'none'})")
    empty = [split for split, names in lists.items() if not names]
    if empty:
        raise WsssError(f"{seg / (empty[0] + '.txt')}: split '{empty[0]}' lists no image")
    return lists


def prepare_custom(data_cfg: dict, out_dir: Path, progress: bool = True) -> dict:
    """Verify ``data.source`` against ``data.classes`` and link it into ``out_dir``; return
    ``num_classes``, ``class_names`` and ``splits`` ({split: images}) as the other preparers do.

    Raises a WsssError naming the key (no source, not VOC-format, a missing split) or the file (an
    unreadable image, a mask of another size, a mask value with no name in ``data.classes``).
    """
    names = list(data_cfg["classes"] or [])
    folder = _source(data_cfg)
    lists = _lists(folder, data_cfg)
    on_disk = [split for split in lists if (folder / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()]
    try:
        verify_root(folder, on_disk, len(names), progress=progress)
    except WsssError as exc:
        raise WsssError(f"{exc} (key 'data.classes' names {len(names)} classes, mask values 0..{len(names) - 1}: "
                        f"{', '.join(f'{k} {n}' for k, n in enumerate(names))}; 255 is ignore)") from None
    out_dir = Path(out_dir)
    link_tree(folder, out_dir, sorted(set().union(*lists.values())), progress, "link custom dataset")
    write_lists(out_dir, lists)
    return {"num_classes": len(names), "class_names": names,
            "splits": {split: len(listed) for split, listed in sorted(lists.items())}}
