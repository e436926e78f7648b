"""Semi-supervised splits after the paper's protocols: class-balanced, seeded, reproducible from JSON."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from .errors import DataError
from .sources import UNLABELED_SPLITS, _column_numpy

_INDICES_FORMAT = "sclearn.semi_supervised_splits/1"

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
        origins: where each part's rows come from: ``{"labeled" | "unlabeled" | "val" | "test": [(split,
            rows), ...]}``, concatenated in order, with ``split`` a split of the loaded ``DatasetDict`` and
            ``rows`` its row indices (None: all rows). The memory path decodes each split once from it. Empty
            for hand-made splits (each part is then decoded on its own).
    """

    labeled: Dataset
    unlabeled: Dataset
    test: Dataset | None
    val: Dataset | None
    num_classes: int
    class_names: list[str]
    indices: dict
    origins: dict[str, list[tuple[Dataset, list[int] | None]]] = field(default_factory=dict)

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
            cause = _why_so_small(labels, names, c) or "Fix: lower labels_per_class/num_labels/val_per_class."
            raise DataError(f"Class {c} ({name!r}) has only {len(rows)} labelled images in split {split!r}, fewer "
                            f"than {want}. {cause}")
        labeled.append(rows[:k])
        val.append(rows[k : k + val_per_class])
    return np.sort(np.concatenate(labeled)), np.sort(np.concatenate(val))


def _why_so_small(labels: np.ndarray, names: list[str], c: int) -> str | None:
    """The likely cause and fix when class ``c`` is too small because the labels are off, else None."""
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    if c == 0 and counts[0] == 0 and len(names) > 1 and np.all(counts[1:] > 0):
        return (f"No image has label 0, and the labels run 1..{len(names) - 1}: they look 1-based, which adds an "
                "empty class 0. Fix: make the labels 0-based (subtract 1 from the label column).")
    twins = [o for o in range(len(names)) if o != c and names[o].casefold() == names[c].casefold()]
    if twins:
        spelled = ", ".join(f"{names[o]!r} ({counts[o]} images)" for o in twins)
        return (f"Its name differs only in case from {spelled}: one class spelled two ways? Fix: spell each class "
                "one way in the label column; if they are distinct classes, lower labels_per_class.")
    return None


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


def _unlabeled_origins(dsd: DatasetDict, unlabeled_split: str | None, train: Dataset, from_train: list[int]
                       ) -> list[tuple[Dataset, list[int] | None]]:
    """The unlabelled pool's sources: all of ``unlabeled_split``, then the chosen train rows."""
    origins: list[tuple[Dataset, list[int] | None]] = [(dsd[unlabeled_split], None)] if unlabeled_split else []
    if len(from_train) or not origins:
        origins.append((train, list(from_train)))
    return origins


def _unlabeled_pool(origins: list[tuple[Dataset, list[int] | None]]) -> Dataset:
    """The images of ``origins``, concatenated, image column only (SC must never see a label)."""
    parts = [(ds if rows is None else ds.select(rows)).select_columns(["image"]) for ds, rows in origins]
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
    unlabeled_origins = _unlabeled_origins(dsd, unlabeled_split, train, indices["unlabeled_from_train"])
    origins = {"labeled": [(train, indices["labeled"])], "unlabeled": unlabeled_origins}
    if test_split is not None:
        origins["test"] = [(dsd[test_split], None)]
    if indices["val"]:
        origins["val"] = [(train, indices["val"])]
    out = SemiSupervisedSplits(
        labeled=train.select(indices["labeled"]).select_columns(["image", "label"]),
        unlabeled=_unlabeled_pool(unlabeled_origins),
        test=dsd[test_split] if test_split is not None else None,
        val=train.select(indices["val"]).select_columns(["image", "label"]) if indices["val"] else None,
        num_classes=len(names),
        class_names=names,
        indices=indices,
        origins=origins,
    )
    if save_indices_to is not None:
        out.save(save_indices_to)
    return out
