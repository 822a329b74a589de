"""Which images a run certifies, in what order, and how they are loaded.

:func:`select_indices` turns ``limit`` / explicit indices into the list of data set
indices of a run (checked against the data set's size); :func:`certframe.run.distributed.shard`
splits that list between processes; :func:`samples` loads the images, ahead of use in a
background thread when prefetching is on (:func:`certframe.run.accelerate.prefetch`).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from certframe.interfaces import Sample, SegmentationDataset


def run_size(dataset: SegmentationDataset, limit: int | None) -> int:
    """How many images the run covers: the data set's size, or the first ``limit``."""
    total = len(dataset)
    if total == 0:
        raise ValueError(f"the data set {dataset.identity()} holds no image")
    return total if limit is None else min(int(limit), total)


def select_indices(total: int, indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (default ``0..total-1``), each checked to lie in ``0..total-1``."""
    wanted = list(range(total)) if indices is None else [int(i) for i in indices]
    bad = [i for i in wanted if not 0 <= i < total]
    if bad:
        raise ValueError(f"indices {bad[:5]} are outside the data set's range 0..{total - 1}")
    return wanted


def samples(dataset: SegmentationDataset, indices: Iterable[int], prefetch_depth: int = 0,
            device: str | torch.device = "cpu") -> Iterator[tuple[int, Sample]]:
    """``(index, sample)`` for each index in order; loaded ``prefetch_depth`` images ahead in a thread."""
    from certframe.run.accelerate import prefetch

    return prefetch(dataset, indices, int(prefetch_depth), device)


__all__ = ["run_size", "select_indices", "samples"]
