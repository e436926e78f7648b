"""The memory path: each split decoded once into uint8 ``(N, C, H, W)``, kept by ``datasets``, memory-mapped.

``decode_split`` runs :func:`sclearn.data.decode_transform` over a split once, with ``Dataset.map``, into an
``Array3D`` column. ``datasets`` fingerprints the result (source split + the decoder's settings) and keeps it
in an arrow file next to the split's cache, so a second run skips the decoding. The arrow file is memory-mapped
and read without a copy (``ImageStack`` holds views of it), so the processes of one machine share one copy
through the page cache.

Grayscale data is stored with one channel and repeated to RGB on the device (``BatchAugment``); resizing to
``image_size`` is done here, once. A batch is then an index into the stack: no decoding, no Python per image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Array3D, Dataset, Features
from torch import Tensor

from .decode import _decode, _raw_images
from .errors import DataError, _DecodeError
from .loaders import Batch
from .sources import _column_numpy
from .transforms import decode_transform, is_grayscale

__all__ = ["ImageStack", "MemoryRows", "decode_split", "decoded_shape", "labels_of"]

_DECODE_VERSION = 1  # part of the cache key: bump when the decoded pixels would change
# Rows per arrow chunk: about 256 MiB of pixels, so a batch touches few chunks (MNIST-sized sets: one).
_CHUNK_BYTES = 256 * 2**20


class _NotGrayscale(Exception):
    """A colour image in a split whose first image was grayscale: decode it again as RGB."""


class _DecodeToPixels:
    """The ``Dataset.map`` function: stored images -> ``{"pixels": uint8 (n, C, H, W)}``.

    ``datasets`` hashes this object (its attributes) into the cache key, so everything that changes the
    pixels is an attribute.
    """

    def __init__(self, image_size: int | None, mode: str, shape: tuple[int, int, int], strict_gray: bool) -> None:
        self.image_size, self.mode, self.shape, self.strict_gray = image_size, mode, shape, strict_gray
        self.version = _DECODE_VERSION

    def __call__(self, images: list[Any], rows: list[int]) -> dict[str, np.ndarray]:
        transform = decode_transform(image_size=self.image_size, channels=1 if self.mode == "L" else 3)
        out = np.empty((len(images), *self.shape), np.uint8)
        for j, (item, row) in enumerate(zip(images, rows)):
            try:
                img = _decode(item, j)
            except _DecodeError as e:
                raise DataError(f"Row {row}: {e}") from e
            if self.strict_gray and not is_grayscale(img):
                raise _NotGrayscale
            x = transform(img)
            if tuple(x.shape) != self.shape:
                raise DataError(f"Row {row}: the image is {tuple(x.shape)[1:]} but the first one is {self.shape[1:]}; "
                                "the memory path needs one size. Fix: pass image_size= (--image-size).")
            out[j] = x.numpy()
        return {"pixels": out}


def _plan(raw: Dataset, image_size: int | None, channels: int) -> tuple[str, tuple[int, int, int]]:
    """(stored mode, decoded shape) from the first image: "L" when the model takes 1 channel or the data look
    grayscale (repeated to 3 channels on the device), else "RGB"."""
    first = _decode(raw[0]["image"], 0)
    mode = "L" if channels == 1 or is_grayscale(first) else "RGB"
    return mode, tuple(decode_transform(image_size=image_size, channels=1 if mode == "L" else 3)(first).shape)


def decoded_shape(ds: Dataset, *, image_size: int | None, channels: int) -> tuple[int, int, int]:
    """``(C, H, W)`` that :func:`decode_split` will store for ``ds``, from its first image."""
    return _plan(_raw_images(ds), image_size, channels)[1]


def decode_split(ds: Dataset, *, image_size: int | None, channels: int, desc: str = "decoding") -> ImageStack:
    """Decode every image of ``ds`` once (or reuse the cached result): an :class:`ImageStack` of its rows.

    Args:
        ds: A split with an ``image`` column (from :func:`sclearn.data.load_image_dataset`).
        image_size: Resize + centre-crop to this side, as ``build_transform`` does; None: keep the size.
        channels: The model's input channels. 1: stored as "L"; 3: stored as RGB, or as one channel when every
            image is grayscale.
        desc: The progress bar's label.

    Raises:
        DataError: an image cannot be decoded (naming its row), or the images differ in size and
            ``image_size`` is None.
    """
    raw = _raw_images(ds).select_columns(["image"])
    mode, shape = _plan(raw, image_size, channels)
    try:
        pixels = _map(raw, _DecodeToPixels(image_size, mode, shape, strict_gray=channels == 3 and mode == "L"), desc)
    except _NotGrayscale:  # mixed grayscale and colour images: RGB for all, as the streaming path does
        shape = (3, *shape[1:])
        pixels = _map(raw, _DecodeToPixels(image_size, "RGB", shape, strict_gray=False), desc)
    return ImageStack.from_arrow(pixels.with_format("arrow")[:].column("pixels"), shape)


def _map(raw: Dataset, decoder: _DecodeToPixels, desc: str) -> Dataset:
    rows_per_chunk = max(1, min(len(raw), _CHUNK_BYTES // int(np.prod(decoder.shape))))
    features = Features({"pixels": Array3D(shape=decoder.shape, dtype="uint8")})
    return raw.map(decoder, input_columns="image", with_indices=True, batched=True, batch_size=rows_per_chunk,
                   writer_batch_size=rows_per_chunk, features=features, remove_columns=["image"], desc=desc)


class ImageStack:
    """uint8 images ``(N, C, H, W)`` held as a few chunks (views of a memory-mapped arrow file, or tensors).

    Args:
        chunks: ``(n_k, C, H, W)`` uint8 tensors, in row order.
    """

    def __init__(self, chunks: Sequence[Tensor]) -> None:
        if not chunks:
            raise ValueError("an ImageStack needs at least one chunk")
        self.chunks = list(chunks)
        self.shape = tuple(self.chunks[0].shape[1:])
        sizes = torch.tensor([len(c) for c in self.chunks], dtype=torch.int64)
        self.starts = torch.cumsum(sizes, 0) - sizes  # (K,) first row of each chunk

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray, shape: tuple[int, int, int]) -> ImageStack:
        """Zero-copy views of an ``Array3D`` column's chunks (a copy only if arrow cannot give a view)."""
        chunks = []
        for chunk in column.chunks:
            values = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
                values = values.flatten()  # respects the chunk's offset: still a view
            flat = values.to_numpy(zero_copy_only=False)  # a view of the buffer: uint8, no nulls
            with warnings.catch_warnings():  # a read-only mmap: torch warns that writing would be undefined;
                warnings.simplefilter("ignore", UserWarning)  # nothing ever writes to it
                chunks.append(torch.from_numpy(flat).view(len(chunk), *shape))
        return cls(chunks)

    @classmethod
    def concat(cls, stacks: Sequence[ImageStack]) -> ImageStack:
        return cls([c for s in stacks for c in s.chunks])

    def __len__(self) -> int:
        return int(self.starts[-1]) + len(self.chunks[-1])

    @property
    def nbytes(self) -> int:
        return sum(c.numel() for c in self.chunks)

    def gather(self, rows: Tensor) -> Tensor:
        """``rows`` ``(B,)`` int64 -> uint8 ``(B, C, H, W)``, a new tensor."""
        if len(self.chunks) == 1:
            return self.chunks[0][rows]
        which = torch.searchsorted(self.starts, rows, right=True) - 1  # (B,) chunk of each row
        out = torch.empty((len(rows), *self.shape), dtype=torch.uint8)
        for k in which.unique().tolist():
            hit = which == k
            out[hit] = self.chunks[k][rows[hit] - self.starts[k]]
        return out


class MemoryRows(torch.utils.data.Dataset):
    """Rows of an :class:`ImageStack` with their labels; a batch is one index operation.

    Args:
        images: The decoded images.
        labels: ``(N,)`` int64, -1 for unlabelled rows.
        rows: ``(N,)`` int64 rows of ``images`` that make up this dataset; None: all, in order.
    """

    def __init__(self, images: ImageStack, labels: Tensor, rows: Tensor | None = None) -> None:
        if len(labels) != (len(rows) if rows is not None else len(images)):
            raise ValueError(f"{len(labels)} labels for {len(rows) if rows is not None else len(images)} rows")
        self.images, self.labels, self.rows = images, labels, rows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, idx: list[int]) -> Batch:  # torch's fetcher calls this with a batch's indices
        i = torch.as_tensor(idx, dtype=torch.int64)
        return Batch(self.images.gather(self.rows[i] if self.rows is not None else i), self.labels[i])

    def __getitem__(self, idx: int) -> tuple[Tensor, int]:
        images, labels = self.__getitems__([idx])
        return images[0], int(labels[0])


def labels_of(ds: Dataset) -> Tensor:
    """``(N,)`` int64 labels of ``ds``, -1 where it has none (no label column, or a null)."""
    if "label" not in ds.column_names:
        return torch.full((len(ds),), -1, dtype=torch.int64)
    return torch.from_numpy(_column_numpy(ds, "label").astype(np.int64))
