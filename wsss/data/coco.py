"""The seam for MS COCO 2014 (81 classes with background); not implemented yet."""

from __future__ import annotations

from pathlib import Path

from wsss.errors import WsssError

NUM_CLASSES = 81


def prepare_coco(data_cfg: dict, out_dir: Path, *, progress: bool = True) -> dict:
    """Would build a VOC-format root for COCO 2014; raises until it is written.

    What it needs: train2014/val2014 images and the 2014 instance annotations (downloaded into
    ``data.downloads`` or found in ``data.source``, MD5-checked as for VOC), the 80 category ids
    mapped to classes 1..80, per-image semantic masks rasterised from the instance polygons/RLE
    (overlaps and crowd regions -> 255), the WS-FCN split lists (82,081 train / 40,137 val), and the
    same return value as ``prepare_voc`` (num_classes, class_names, splits).
    """
    raise WsssError(
        "data.name 'coco' is not implemented yet: preparing COCO 2014 needs the train2014/val2014 images "
        "and instance annotations converted to VOC-format class masks (81 classes) with the WS-FCN split "
        "lists; use data.name=voc or data.name=toy for now"
    )
