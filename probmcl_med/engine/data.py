"""Data order and augmentation randomness that survive a crash, a resume and any number of workers or ranks.

Each epoch's order is a permutation drawn from ``(seed, epoch)`` alone (:class:`ResumableSampler`), sharded across
DDP ranks like ``DistributedSampler``. Each sample's augmentation seed is drawn from ``(seed, epoch, position)``
and travels with its index, so :class:`SeededItems` reseeds the MONAI transforms right before that sample is
transformed. A run resumed mid-epoch therefore sees exactly the batches (order and augmentations) the interrupted run
would have seen, whatever the number of DataLoader workers: the sampler just skips the batches already done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

MAX_SEED = 2**32 - 1


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (one replica by default) that yields ``(index, sample_seed)`` and can skip ahead.

    MONAI's workflow calls :meth:`set_epoch` at every epoch start (as for any DistributedSampler).

    Args:
        dataset: the dataset (only its length is used).
        seed: run seed; the epoch-``e`` order is ``torch.randperm(n)`` from a generator seeded with ``seed + e``.
        shuffle: shuffle (training) or keep the dataset order (validation).
        num_replicas: DDP world size (1 without DDP).
        rank: this process's rank.
        drop_last: drop the tail that does not divide evenly across ranks (otherwise pad by repetition).
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def skip_next(self, samples: int) -> None:
        """Make the next iteration start after its first ``samples`` samples (of this rank): a mid-epoch resume."""
        self.skip = int(samples)

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, before any skip (the DistributedSampler rule)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if not self.drop_last:
            padding = self.total_size - len(order)
            if padding > 0:
                order += (order * math.ceil(padding / len(order)))[:padding]
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def sample_seeds(self) -> list[int]:
        """One augmentation seed per position of the global epoch order, this rank's share."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 7919 + 17) % MAX_SEED)
        seeds = torch.randint(0, MAX_SEED, (self.total_size,), generator=g, dtype=torch.int64).tolist()
        return seeds[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        pairs = list(zip(self.indices(), self.sample_seeds(), strict=True))
        start, self.skip = self.skip, 0
        return iter(pairs[start:])

    def __len__(self) -> int:
        return self.num_samples


def reseed(transform: Any, seed: int) -> None:
    """Reseed a MONAI ``Randomizable`` transform (Compose, TwoViews, ...) and its members."""
    setter = getattr(transform, "set_random_state", None)
    if callable(setter):
        setter(seed=int(seed) % MAX_SEED)


class SeededItems(Dataset):
    """Wraps a dataset: ``ds[(index, seed)]`` reseeds its transform with ``seed``, then returns ``dataset[index]``.

    Args:
        dataset: a MultiLabelDataset (with a settable ``transform``).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple | list):
            index, seed = key
            reseed(self.dataset.transform, seed)
            return self.dataset[int(index)]
        return self.dataset[int(key)]

    def __getattr__(self, name: str) -> Any:  # class_names, labels, mean, std, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
