"""The order of the training images and the random draws of their augmentation, fixed by the seed alone.

Two rules make a training run independent of how it is spread over processes and data-loader workers:

- `EpochBatches`: epoch ``e`` visits the images in the order ``torch.randperm`` gives with a
  generator seeded ``seed * 1000 + e``, cut into global batches of ``train.batch_size`` (the last
  incomplete one dropped); rank ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of each batch.
- `SeededSamples`: image ``i`` in epoch ``e`` is augmented with the global torch generator seeded
  from ``(seed, stream, e, i)`` (numpy's ``SeedSequence``), inside ``torch.random.fork_rng`` so that
  the process's own stream is left as it was. Its crop, flip and colour jitter are then the same
  whichever process or worker loads it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from wsss.errors import WsssError

TRAIN, VALIDATION = 0, 1  # the two augmentation streams


def sample_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """The 63-bit seed of one image's augmentation."""
    return int(np.random.SeedSequence([seed, stream, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` keys, each item drawn under its own seed (see the module)."""

    def __init__(self, dataset: Dataset, seed: int, stream: int = TRAIN):
        self.dataset, self.seed, self.stream = dataset, int(seed), int(stream)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.stream, epoch, index))
            return self.dataset[index]


def check_batch_split(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that does not split evenly over ``world_size`` processes (WsssError
    naming ``train.batch_size``)."""
    if batch_size % world_size:
        raise WsssError(f"key 'train.batch_size': the global batch {batch_size} does not split evenly over "
                        f"{world_size} processes (train.processes); use a multiple of {world_size}")


class EpochBatches(Sampler):
    """The batches of ``(epoch, index)`` keys one rank loads in one epoch (see the module).

    Raises WsssError when ``batch_size`` is not a multiple of ``world_size`` (key ``train.batch_size``).
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1):
        check_batch_split(batch_size, world_size)
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size

    def global_batches(self) -> list[list[int]]:
        """Every rank's images of each global batch, in order."""
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        order = order.tolist()
        count = self.size // self.batch_size
        return [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(count)]

    def __iter__(self):
        share = self.batch_size // self.world_size
        for batch in self.global_batches():
            yield [(self.epoch, i) for i in batch[self.rank * share:(self.rank + 1) * share]]

    def __len__(self) -> int:
        return self.size // self.batch_size
