"""Bad data inputs that used to end in a misleading error (issue 12): each now names its real cause."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sclearn.data import DataError, load_image_dataset, semi_supervised_splits
from tests.conftest import balanced_labels, pattern_images, png_bytes, write_idx_dir


def write_raw_parquet(path, labels) -> None:
    """A plain parquet file (no datasets metadata): PNG structs in ``image`` and raw ``label`` values."""
    images = [png_bytes(a) for a in pattern_images(np.arange(len(labels)) % 10, size=8)]
    image_col = pa.array([{"bytes": b, "path": None} for b in images])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": image_col, "label": pa.array(labels)}), path)


def test_one_based_labels_are_named_as_such(tmp_path):
    labels = (balanced_labels(6, num_classes=10) + 1).tolist()  # 1..10, as some exports write them
    write_raw_parquet(tmp_path / "d" / "train.parquet", labels)
    write_raw_parquet(tmp_path / "d" / "test.parquet", labels[:20])
    dsd = load_image_dataset(f"parquet:{tmp_path / 'd'}")
    with pytest.raises(DataError, match=r"Class 0 \('0'\) has only 0 .* labels run 1\.\.10: they look 1-based.*"
                                        r"subtract 1"):
        semi_supervised_splits(dsd, labels_per_class=2)


def test_class_names_that_differ_only_in_case_are_named(tmp_path):
    labels = ["cat"] * 8 + ["dog"] * 8 + ["Cat"]  # one stray spelling
    write_raw_parquet(tmp_path / "d" / "train.parquet", labels)
    write_raw_parquet(tmp_path / "d" / "test.parquet", labels)
    dsd = load_image_dataset(f"parquet:{tmp_path / 'd'}")
    assert dsd["train"].features["label"].names == ["Cat", "cat", "dog"]
    with pytest.raises(DataError, match=r"Class 0 \('Cat'\) has only 1 .* differs only in case from 'cat' "
                                        r"\(8 images\).*spell each class one way"):
        semi_supervised_splits(dsd, labels_per_class=2)


def test_a_class_that_is_merely_small_keeps_the_old_advice(tmp_path):
    write_raw_parquet(tmp_path / "d" / "train.parquet", ["cat"] * 8 + ["dog"] * 1)
    dsd = load_image_dataset(f"parquet:{tmp_path / 'd'}")
    with pytest.raises(DataError, match=r"Class 1 \('dog'\) has only 1 .*Fix: lower labels_per_class"):
        semi_supervised_splits(dsd, labels_per_class=2, test_split=None)


@pytest.mark.parametrize("source, hint", [("parquett:/x", "did you mean 'parquet:'"), ("idxx:/x", "did you mean 'idx:'"),
                                          ("s3:bucket/data", "")])
def test_unknown_source_prefix_lists_the_valid_ones(source, hint):
    with pytest.raises(DataError, match="Unknown data source prefix") as e:
        load_image_dataset(source)
    message = str(e.value)
    assert hint in message
    for valid in ("'parquet:", "'imagefolder:", "'idx:", "'hub:"):
        assert valid in message


def test_idx_given_a_file_names_it_as_a_file_and_its_directory(tmp_path):
    root = write_idx_dir(tmp_path / "digits", train_per_class=1, test_per_class=1)
    file = root / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match=r"is a file\. Fix: pass its directory: " + re.escape(f"'idx:{root}'")):
        load_image_dataset(f"idx:{file}")
