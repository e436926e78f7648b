"""Sources: hub ids, parquet files, image folders and IDX files, normalised to ``image`` + ``label``."""

from __future__ import annotations

import difflib
import glob as globlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image

from .errors import DataError
from .idx import _find_idx_files, _load_idx

UNLABELED_SPLITS = ("unlabeled", "unlabelled")
# Column names seen on the hub, in order of preference.
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "images", "picture", "photo", "jpg", "png", "webp")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "targets", "y", "category")
# Split names recognised as a file-name prefix ("train-00000-of-00001.parquet", "test.parquet").
_KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "unlabeled", "unlabelled", "extra")
_LOCAL_KINDS = ("parquet", "imagefolder", "idx")


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
    unknown = re.match(r"^([A-Za-z][\w.-]+):", source)  # hub ids have no ':'; one letter is a Windows drive
    if unknown:
        close = difflib.get_close_matches(unknown.group(1).lower(), [*_LOCAL_KINDS, "hub"], n=1)
        hint = f" (did you mean '{close[0]}:'?)" if close else ""
        raise DataError(f"Unknown data source prefix '{unknown.group(1)}:' in {source!r}{hint}. Fix: use one of "
                        "'parquet:<dir|glob>', 'imagefolder:<dir>', 'idx:<dir>', 'hub:<id>', a hub id such as "
                        "'uoft-cs/cifar10', or an existing directory.")
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
