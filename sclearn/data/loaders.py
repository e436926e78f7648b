"""Transformed datasets and DataLoaders of ``Batch(images, labels)``."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import Dataset
from PIL import Image as PILImage
from torch import Tensor
from torch.utils.data import DataLoader

from .decode import _decode, _raw_images
from .errors import DataError, _DecodeError


class _BatchTransform:
    """The ``with_transform`` function: a batch dict of lists -> {"image": [Tensor], "label": [int]}."""

    def __init__(self, transform: Callable[[PILImage.Image], Tensor], has_label: bool):
        self.transform, self.has_label = transform, has_label

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        # Per-image ops on tiny tensors gain nothing from intra-op threads, and waking them can cost
        # more than the op (ms on a busy machine); DataLoader workers already run single-threaded.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            images = [self.transform(_decode(item, j)) for j, item in enumerate(batch["image"])]
        finally:
            torch.set_num_threads(threads)
        labels = batch["label"] if self.has_label else [-1] * len(images)
        return {"image": images, "label": [-1 if y is None else int(y) for y in labels]}


def with_image_transform(ds: Dataset, transform: Callable[[PILImage.Image], Tensor]) -> Dataset:
    """Apply ``transform`` lazily on access; rows become ``{"image": Tensor (C, H, W), "label": int}``.

    Rows without labels (no label column) get -1. Images are decoded here rather than by ``datasets``,
    so a corrupt file raises a ``DataError`` that names it (and ``make_loader`` names its row).

    Args:
        ds: a Dataset with an ``image`` column (and optionally ``label``).
        transform: e.g. ``build_transform(train=True)``.

    Returns:
        The dataset with the transform set (``ds`` itself is unchanged).
    """
    if "image" not in ds.column_names:
        raise DataError(f"with_image_transform needs an 'image' column; got {ds.column_names}. Fix: load it with "
                        "load_image_dataset (which normalises column names).")
    has_label = "label" in ds.column_names
    columns = ["image", "label"] if has_label else ["image"]
    return _raw_images(ds).with_transform(_BatchTransform(transform, has_label), columns=columns)


class Batch(NamedTuple):
    """One loader batch; a tuple, so ``images, labels = batch`` works."""

    images: Tensor  # (B, C, H, W) float32
    labels: Tensor  # (B,) int64, -1 = unlabelled


def _stack(images: Sequence[Any], labels: Sequence[Any]) -> Batch:
    if not all(isinstance(x, Tensor) for x in images):
        kind = type(next(x for x in images if not isinstance(x, Tensor))).__name__
        raise DataError(f"The dataset yields {kind} images, not tensors. Fix: wrap it first: "
                        "with_image_transform(ds, build_transform(train=...)).")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise DataError(f"Images in one batch have different shapes {sorted(shapes)[:4]}. Fix: pass image_size= "
                        "to build_transform.")
    labels_t = torch.as_tensor([-1 if y is None else int(y) for y in labels], dtype=torch.int64)
    return Batch(torch.stack(list(images)), labels_t)


def _collate(data: Any) -> Batch:
    """A ready ``Batch`` (from ``_TensorRows.__getitems__``) or a list of samples -> ``Batch``."""
    if isinstance(data, Batch):
        return data
    if isinstance(data[0], dict):
        return _stack([d["image"] for d in data], [d.get("label", -1) for d in data])
    return _stack([d[0] for d in data], [d[1] if len(d) > 1 else -1 for d in data])


class _TensorRows(torch.utils.data.Dataset):
    """A transformed HF Dataset seen by torch: one arrow read per batch, corrupt images named by row."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, rows: list[int]) -> Batch:  # torch's fetcher calls this with a batch's indices
        try:
            batch = self.ds[list(rows)]
        except _DecodeError as e:
            raise DataError(f"Row {rows[e.position]}: {e}") from e
        return _stack(batch["image"], batch.get("label", [-1] * len(batch["image"])))

    def __getitem__(self, row: int) -> tuple[Tensor, int]:
        images, labels = self.__getitems__([row])
        return images[0], int(labels[0])


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it, so any
    # augmentation that uses them is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    ds: Dataset | torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader of ``(images, labels)`` batches: images (B, C, H, W) float32, labels (B,) int64.

    Args:
        ds: a Dataset from ``with_image_transform`` (read one arrow batch at a time), or any torch
            dataset of ``(image, label)`` tuples or ``{"image", "label"}`` dicts.
        batch_size: B.
        shuffle: reshuffle every epoch, from a ``torch.Generator`` seeded with ``seed``.
        drop_last: drop the last incomplete batch (use it for SC, whose loss needs full batches).
        num_workers: worker processes (persistent between epochs).
        seed: seeds shuffling and the workers' augmentation RNGs, so a run is reproducible. With
            ``num_workers=0`` augmentation draws from the global torch RNG: seed it (``set_seed``).
        pin_memory: default: when CUDA is available.

    Returns:
        The DataLoader; its batches are ``Batch(images, labels)`` named tuples, -1 for unlabelled rows.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1.")
    if len(ds) == 0:
        raise DataError("make_loader got an empty dataset.")
    if drop_last and len(ds) < batch_size:
        raise DataError(f"drop_last=True with {len(ds)} rows < batch_size={batch_size} gives no batches. Fix: "
                        "lower batch_size or set drop_last=False.")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        _TensorRows(ds) if isinstance(ds, Dataset) else ds,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
    )


def cycle(loader: Iterable, start: int = 0) -> Iterator:
    """Iterate ``loader`` forever, re-iterating it (and so reshuffling) on every pass.

    For the smaller loader in joint training. Unlike ``itertools.cycle`` it caches nothing, so each
    pass gets fresh shuffling and augmentation.

    Batch ``k`` (counting from 0) is batch ``k % len(loader)`` of pass ``k // len(loader)``. With a resumable
    loader (its ``batch_sampler`` has ``set_position(epoch, start)``, as the Trainer's training loaders do),
    ``start`` resumes at batch ``start`` exactly: the position is one integer, saved with a checkpoint. Other
    loaders get ``set_epoch(pass)`` where they have it, and take only ``start=0``.
    """
    sampler = getattr(loader, "batch_sampler", None)
    resumable = hasattr(sampler, "set_position")
    if start and not resumable:
        raise ValueError(f"cycle(start={start}) needs a resumable loader (its batch_sampler has set_position); "
                         "this one can only start at 0")
    if resumable and len(loader) == 0:
        raise DataError("cycle() got a loader that yields no batches. Fix: check its dataset and drop_last.")
    epoch, skip = divmod(start, len(loader)) if resumable else (0, 0)
    while True:
        if resumable:
            sampler.set_position(epoch, skip)
        elif hasattr(loader, "set_epoch"):  # accelerate's / distributed loaders reshuffle per epoch
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError("cycle() got a loader that yields no batches. Fix: check its dataset and drop_last.")
        epoch, skip = epoch + 1, 0
