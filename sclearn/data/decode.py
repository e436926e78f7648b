"""Stored images ({bytes, path}) -> PIL, through datasets' own decoder, naming a file that fails."""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage

from .errors import _DecodeError

_DECODER = Image()


def _decode(item: Any, position: int) -> PILImage.Image:
    """Decode one stored image ({bytes, path}) with datasets' own decoder, naming it if it fails."""
    if isinstance(item, PILImage.Image):
        return item
    try:
        return _DECODER.decode_example(item)
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        path = item.get("path") if isinstance(item, dict) else None
        raise _DecodeError(f"Cannot decode the image at position {position} of the requested rows"
                           f"{f' (file {path!r})' if path else ''}: {type(e).__name__}: {e}. Fix: replace or "
                           "remove the corrupt image file.", position) from e


def _raw_images(ds: Dataset) -> Dataset:
    """``ds`` with the image column left undecoded ({bytes, path}) and no transform."""
    ds = ds.with_format(None)
    feature = ds.features.get("image")
    if isinstance(feature, Image) and feature.decode:
        ds = ds.cast_column("image", Image(decode=False))
    return ds
