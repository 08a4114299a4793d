"""`wsss pseudo`: pseudo-masks of the training split, the input of a second, fully supervised stage.

Most WSSS results are two-stage: the weakly supervised network labels its own training images, and a
standard segmentation network is then trained on those labels. For every image of
``data.train_split`` this stage does what ``wsss infer`` then ``wsss crf`` do on an evaluation
split, with one difference:

- the trained network as infer runs it (``wsss.stages.infer.inference_network``: ``infer.channels_last``,
  ``infer.localisation``) and its multi-scale + flip masks (``infer.scales``, ``flip``, ``chunk``,
  ``pad_size``, ``amp``; ``wsss.stages.infer.infer_views``), the background by ``infer.background``;
- class presence from the image-level labels, not from the classifier: they are the weak labels the
  network was trained with (the classes of the training masks, ``SegmentationClassAug`` for VOC's
  ``train_aug``, as training reads them), so using them adds no supervision;
- the scores rounded to float16, as ``infer`` stores them (``wsss.stages.crf.as_stored``), then the dense CRF (``crf.*``;
  ``wsss.stages.crf.refine``), one image per job in a pool of ``crf.workers`` processes while the
  network labels the next images. The masks are therefore the ones ``wsss infer -S
  infer.presence=gt`` and ``wsss crf`` would write for this split, without the probability files
  (a few MB per image at VOC sizes) ever reaching the disk.

Writes, atomically, ``results/<dataset>/<train_split>/pseudo/``: ``masks/<name>.png`` (the
pseudo-masks, after the CRF, VOC palette), ``masks_raw/<name>.png`` (before it), ``config.yaml`` and
``checkpoint.yaml`` (as infer's). ``wsss evaluate --pseudo`` scores them.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wsss import config as params, provenance
from wsss.data.dataset import VOCSegmentation, labels_from_mask
from wsss.data.palette import save_mask
from wsss.data.voc import training_mask_dir
from wsss.engine import device as devices
from wsss.paths import for_config
from wsss.stages.crf import as_stored, refine
from wsss.stages.infer import check_canvas, combine, infer_views, inference_network
from wsss.utils.atomic import atomic_path, write_yaml
from wsss.utils.cores import available_cores


def refine_to_file(image: np.ndarray, ids: np.ndarray, probs: np.ndarray, crf: dict, num_classes: int, out: Path) -> None:
    """``refine`` of one image's scores, saved as a palette PNG at ``out`` (a pool job)."""
    save_mask(refine(image, ids, probs, crf, num_classes), out)


def run(cfg: dict, args) -> None:
    paths = for_config(cfg, args.results)
    icfg, n = cfg["infer"], params.num_classes(cfg)
    provenance.check_dataset(paths.data, cfg)
    dataset = VOCSegmentation(paths.data, cfg["data"]["train_split"], n, mask_dir=training_mask_dir(cfg, paths.data))
    check_canvas(dataset, icfg)
    workers = cfg["crf"]["workers"] or available_cores()
    dev = devices.resolve(icfg["device"])
    devices.limit_cpu_threads(dev, reserved=workers if workers > 1 else 0)
    model, source = inference_network(cfg, dev, Path(args.checkpoint) if args.checkpoint else paths.checkpoint("train"))
    with atomic_path(paths.pseudo, directory=True) as tmp:
        (tmp / "masks").mkdir()
        (tmp / "masks_raw").mkdir()
        # the platform's default start method, as the crf stage: the workers run NumPy and pydensecrf
        # only (no OpenMP), so forking after the network's threads ran is safe
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        pending: deque[Future] = deque()
        try:
            for i in tqdm(range(len(dataset)), desc=f"pseudo {dataset.split}", unit="img", dynamic_ncols=True):
                name = dataset.names[i]
                image, mask = dataset.load(i)
                masks, _ = infer_views(model, image, icfg, dev)
                present = torch.from_numpy(labels_from_mask(mask, n)).to(dev) > 0
                ids, probs = combine(masks, present, icfg)
                save_mask(ids[probs.argmax(0)], tmp / "masks_raw" / f"{name}.png")
                job = (np.asarray(image), ids, as_stored(probs), cfg["crf"], n,
                       tmp / "masks" / f"{name}.png")
                if pool is None:
                    refine_to_file(*job)
                    continue
                pending.append(pool.submit(refine_to_file, *job))
                while len(pending) > 2 * workers:  # a bounded backlog: memory does not grow with the split
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        write_yaml(tmp / "config.yaml", cfg)
        write_yaml(tmp / "checkpoint.yaml", source)
    print(f"pseudo: wrote {len(dataset)} pseudo-masks to {paths.pseudo}")
