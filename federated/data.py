"""Datasets for the task: a site's records, split by patient, preprocessed and cached in memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from federated.preprocess import to_model_input
from federated.sources import Record, SourceError, SourceOptions, open_source
from federated.task import FINDINGS

SPLITS = ("train", "val", "test", "all")


class ChestXrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Items are (float32 tensor 1 x S x S, float32 tensor 9 with NaN = unknown).

    Images are decoded and preprocessed on first access and kept in memory (``cache=True``), so
    every round after the first costs no decoding; the memory cache holds model-size arrays only.
    """

    def __init__(self, records: Sequence[Record], image_size: int, cache: bool = True):
        self.records = list(records)
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def keys(self) -> list[str]:
        """Image keys (file name or SOP Instance UID) in item order."""
        return [r.key for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        """All labels as an (N, 9) float32 array, NaN = unknown."""
        if not self.records:
            return np.zeros((0, len(FINDINGS)), dtype=np.float32)
        return np.stack([r.labels for r in self.records]).astype(np.float32)

    def image(self, index: int) -> np.ndarray:
        """The preprocessed (S, S) model input of one item."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arr = to_model_input(self.records[index].load(), self.image_size)
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.image(index)).unsqueeze(0)
        return image, torch.from_numpy(self.records[index].labels.astype(np.float32))


def split_records(
    records: Sequence[Record],
    split: str,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
) -> list[Record]:
    """The records of one split; patients (groups) are shuffled by ``seed`` and never cut.

    Groups are ordered train | val | test after a seeded shuffle, so the same seed always gives
    the same split and a larger val_fraction only moves patients from train to val.
    """
    if split not in SPLITS:
        raise SourceError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise SourceError("val_fraction and test_fraction must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise SourceError("val_fraction + test_fraction must leave some training data")
    if split == "all":
        return list(records)
    groups = sorted({r.group for r in records})
    order = np.random.default_rng(seed).permutation(len(groups))
    n = len(groups)
    n_test = _portion(n, test_fraction)
    n_val = min(_portion(n, val_fraction), max(0, n - n_test - 1))
    shuffled = [groups[i] for i in order]
    test = set(shuffled[n - n_test :])
    val = set(shuffled[n - n_test - n_val : n - n_test])
    pick = {"val": val, "test": test}.get(split)
    if pick is None:
        return [r for r in records if r.group not in val and r.group not in test]
    return [r for r in records if r.group in pick]


def _portion(n: int, fraction: float) -> int:
    if fraction <= 0.0 or n == 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def load_site(
    source: str,
    image_size: int,
    split: str = "train",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    *,
    token: str | None = None,
    cache_dir: Path | str | None = None,
    labels: Path | str | None = None,
    uncertainty: str = "ignore",
) -> ChestXrayDataset:
    """One site's dataset for a split: folder/synth, ``nih:``, ``chexpert:`` or ``dicomweb:``.

    ``token``, ``cache_dir`` and ``labels`` apply to DICOMweb (bearer token, the hospital's
    cache dir, labels CSV keyed by SOP Instance UID); ``uncertainty`` to CheXpert.
    """
    if image_size < 16:
        raise SourceError(f"image_size must be at least 16, got {image_size}")
    options = SourceOptions(
        token=token,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        labels=Path(labels) if labels is not None else None,
        uncertainty=uncertainty,
    )
    records = open_source(source, options)
    return ChestXrayDataset(
        split_records(records, split, seed, val_fraction, test_fraction), image_size
    )


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A single-process DataLoader; shuffling is seeded so a run is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
