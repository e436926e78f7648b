"""sclearn.data: sources and their schemas, semi-supervised splits, transforms, loaders, error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from sclearn import data as D
from sclearn.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    build_transform,
    cycle,
    dataset_stats,
    load_image_dataset,
    make_loader,
    read_idx,
    semi_supervised_splits,
    with_image_transform,
)
from tests.conftest import (
    CIFAR10_CLASSES,
    FOLDER_CLASSES,
    STL10_CLASSES,
    balanced_labels,
    pattern_images,
    png_bytes,
    write_hub_parquet,
    write_idx_dir,
    write_split_parquet,
)

REAL_FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="module")
def fashion(idx_dir, tmp_path_factory) -> datasets.DatasetDict:
    return load_image_dataset(f"idx:{idx_dir}", cache_dir=str(tmp_path_factory.mktemp("idx_cache")))


@pytest.fixture(scope="module")
def cifar(cifar_parquet_dir) -> datasets.DatasetDict:
    return load_image_dataset(f"parquet:{cifar_parquet_dir}")


@pytest.fixture(scope="module")
def stl(stl_parquet_dir) -> datasets.DatasetDict:
    return load_image_dataset(f"parquet:{stl_parquet_dir}")


def labels_of(ds) -> np.ndarray:
    return np.asarray(ds.with_format("numpy", columns=["label"])[:]["label"])


def image_only_dsd(n: int = 8) -> datasets.DatasetDict:
    feats = datasets.Features({"image": datasets.Image()})
    rows = {"image": [{"bytes": png_bytes(a), "path": None} for a in pattern_images(np.arange(n) % 10)]}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=feats)})


# ---------------------------------------------------------------------------------------------- sources


def test_idx_schema_names_and_pixels(fashion, idx_dir):
    assert {k: len(v) for k, v in fashion.items()} == {"train": 300, "test": 100}
    feats = fashion["train"].features
    assert isinstance(feats["image"], datasets.Image) and feats["label"].names == list(FASHION_MNIST_CLASSES)
    want = read_idx(idx_dir / "t10k-images-idx3-ubyte.gz")
    row = fashion["test"][7]
    assert row["image"].mode == "L" and row["image"].size == (28, 28)
    np.testing.assert_array_equal(np.asarray(row["image"]), want[7])
    np.testing.assert_array_equal(labels_of(fashion["test"]), read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize("gz,sep,layout", [(False, ".", "package/data"), (True, ".", ""), (False, "-", "data")])
def test_idx_naming_styles_raw_and_gz(tmp_path, gz, sep, layout):
    root = tmp_path / "mnist-data"
    write_idx_dir(root / layout if layout else root, train_per_class=2, test_per_class=1, gz=gz, sep=sep)
    dsd = load_image_dataset(f"idx:{root}", cache_dir=str(tmp_path / "c"))
    assert dsd["train"].features["label"].names == [str(i) for i in range(10)]  # no "fashion" in the path
    assert sorted(labels_of(dsd["train"])) == sorted(np.repeat(np.arange(10), 2))
    assert len(dsd["test"]) == 10


def test_idx_class_names_override(idx_dir, tmp_path):
    names = [f"c{i}" for i in range(10)]
    dsd = load_image_dataset(f"idx:{idx_dir}", class_names=names, cache_dir=str(tmp_path))
    assert dsd["test"].features["label"].names == names


def test_idx_cache_is_reused_then_invalidated(tmp_path, monkeypatch):
    root = write_idx_dir(tmp_path / "digits", train_per_class=2, test_per_class=1)
    cache = tmp_path / "cache"
    first = load_image_dataset(f"idx:{root}", cache_dir=str(cache))

    def no_parse(*a, **k):
        raise AssertionError("parsed again despite a valid cache")

    monkeypatch.setattr(D.idx, "_idx_split", no_parse)
    again = load_image_dataset(f"idx:{root}", cache_dir=str(cache))
    assert labels_of(again["train"]).tolist() == labels_of(first["train"]).tolist()
    monkeypatch.undo()
    f = root / "train-labels-idx1-ubyte.gz"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # replaced file -> new key
    load_image_dataset(f"idx:{root}", cache_dir=str(cache))
    assert len([p for p in (cache / "idx").iterdir() if not p.name.startswith(".")]) == 2


def test_idx_missing_file_names_expected_files(tmp_path):
    root = write_idx_dir(tmp_path / "d", train_per_class=1, test_per_class=1)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"Missing IDX files.*test labels.*t10k-labels-idx1-ubyte"):
        load_image_dataset(f"idx:{root}", cache_dir=str(tmp_path))


def test_idx_truncated_file_is_a_clear_error(tmp_path):
    root = write_idx_dir(tmp_path / "d", train_per_class=1, test_per_class=1, gz=False)
    f = root / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_image_dataset(f"idx:{root}", cache_dir=str(tmp_path))


def test_cifar_parquet_img_column_becomes_image(cifar):
    assert set(cifar) == {"train", "test"} and len(cifar["train"]) == 4020
    for split in cifar.values():
        assert split.column_names == ["image", "label"]
        assert split.features["label"].names == CIFAR10_CLASSES
    img = cifar["test"][0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_stl_unlabeled_split_stays_unlabeled(stl):
    assert {k: len(v) for k, v in stl.items()} == {"train": 50, "test": 30, "unlabeled": 40}
    assert stl["unlabeled"].features == stl["train"].features  # concatenable
    assert set(labels_of(stl["unlabeled"])) == {-1}
    assert set(labels_of(stl["train"])) == set(range(10))
    assert stl["train"].features["label"].names == STL10_CLASSES


def test_unlabeled_split_with_dummy_labels_becomes_minus_one(tmp_path):
    for split, labelled in (("train", True), ("unlabeled", True)):  # hub artefact: labels 0.. in unlabeled
        write_split_parquet(tmp_path / "data" / f"{split}.parquet", 2, size=8, channels=3, seed=0,
                            class_names=STL10_CLASSES, labelled=labelled)
    dsd = load_image_dataset(f"parquet:{tmp_path}")
    assert set(labels_of(dsd["unlabeled"])) == {-1} and set(labels_of(dsd["train"])) == set(range(10))


def test_mnist_parquet(mnist_parquet_dir):
    dsd = load_image_dataset(f"parquet:{mnist_parquet_dir}")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 120, "test": 40}
    assert dsd["train"][0]["image"].mode == "L"
    assert dsd["train"].features["label"].names == [str(i) for i in range(10)]


def test_plain_parquet_struct_pixel_values_labels(tmp_path):
    # Written by pyarrow alone (no datasets metadata): {bytes, path} struct named pixel_values, int "labels".
    labels = balanced_labels(2, num_classes=3)
    images = [png_bytes(a) for a in pattern_images(labels, size=8)]
    struct = pa.StructArray.from_arrays([pa.array(images, pa.binary()), pa.nulls(len(images), pa.string())],
                                        ["bytes", "path"])
    pq.write_table(pa.table({"pixel_values": struct, "labels": pa.array(labels), "id": pa.array(range(6))}),
                   tmp_path / "train.parquet")
    dsd = load_image_dataset(f"parquet:{tmp_path}")
    assert dsd["train"].column_names == ["image", "label"]
    assert dsd["train"].features["label"].names == ["0", "1", "2"]
    assert labels_of(dsd["train"]).tolist() == labels.tolist()
    assert isinstance(dsd["train"][0]["image"], Image.Image)


def test_string_labels_are_encoded_with_class_names(tmp_path):
    images = [png_bytes(a) for a in pattern_images(np.arange(4), size=8)]
    struct = pa.StructArray.from_arrays([pa.array(images, pa.binary()), pa.nulls(4, pa.string())], ["bytes", "path"])
    pq.write_table(pa.table({"img": struct, "category": ["dog", "cat", "dog", "bird"]}), tmp_path / "train.parquet")
    dsd = load_image_dataset(f"parquet:{tmp_path}")
    assert dsd["train"].features["label"].names == ["bird", "cat", "dog"]
    assert labels_of(dsd["train"]).tolist() == [2, 1, 2, 0]
    dsd = load_image_dataset(f"parquet:{tmp_path}", class_names=["dog", "cat", "bird"])
    assert labels_of(dsd["train"]).tolist() == [0, 1, 0, 2]
    with pytest.raises(DataError, match=r"not class names.*class_names="):
        load_image_dataset(f"parquet:{tmp_path}", class_names=["dog", "cat"])


def test_column_overrides_and_missing_column(cifar_parquet_dir):
    dsd = load_image_dataset(f"parquet:{cifar_parquet_dir}/plain_text/test-*.parquet", image_column="img",
                             label_column="label")
    assert list(dsd) == ["test"] and dsd["test"].column_names == ["image", "label"]
    with pytest.raises(DataError, match=r"no column 'picture'.*image_column="):
        load_image_dataset(f"parquet:{cifar_parquet_dir}", image_column="picture")
    with pytest.raises(DataError, match=r"label column 'fine_label'.*label_column="):
        load_image_dataset(f"parquet:{cifar_parquet_dir}", label_column="fine_label")


def test_bare_directory_is_sniffed(idx_dir, mnist_parquet_dir, imagefolder_dir):
    assert D.sources._parse_source(str(idx_dir)) == ("idx", str(idx_dir))
    assert D.sources._parse_source(str(mnist_parquet_dir))[0] == "parquet"
    assert D.sources._parse_source(str(imagefolder_dir))[0] == "imagefolder"
    assert D.sources._parse_source("uoft-cs/cifar10") == ("hub", "uoft-cs/cifar10")


def test_imagefolder_mixed_modes_load_and_transform(imagefolder_dir):
    dsd = load_image_dataset(f"imagefolder:{imagefolder_dir}")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 18, "test": 6}
    assert dsd["train"].features["label"].names == FOLDER_CLASSES
    modes = {dsd["train"][i]["image"].mode for i in range(len(dsd["train"]))}
    assert {"L", "RGB", "RGBA", "LA", "P"} <= modes
    for channels in (3, 1):
        x, y = next(iter(make_loader(with_image_transform(dsd["train"], build_transform(train=True, channels=channels)),
                                     18, shuffle=False)))
        assert x.shape == (18, channels, 16, 16) and x.dtype == torch.float32
        assert y.tolist() == labels_of(dsd["train"]).tolist()


def test_hub_unreachable_error_names_source_and_fixes(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"'uoft-cs/cifar10'.*unreachable") as info:
        load_image_dataset("uoft-cs/cifar10")
    for fix in ("parquet:", "imagefolder:", "idx:", "HF_DATASETS_OFFLINE=1"):
        assert fix in str(info.value)


def test_offline_mode_error_is_fast_and_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"'nobody/no-such-dataset'.*offline mode.*parquet:.*HF_DATASETS_OFFLINE"):
        load_image_dataset("nobody/no-such-dataset", cache_dir=str(tmp_path))


def test_empty_split_is_an_error(tmp_path):
    write_split_parquet(tmp_path / "train.parquet", 1, size=8, channels=1, seed=0, class_names=list("0123456789"))
    write_hub_parquet(tmp_path / "test.parquet", [], [], class_names=list("0123456789"))
    with pytest.raises(DataError, match=r"Split 'test'.*empty"):
        load_image_dataset(f"parquet:{tmp_path}")


def test_label_outside_class_range_is_an_error(tmp_path):
    images = [png_bytes(a) for a in pattern_images(np.arange(3), size=8)]
    write_hub_parquet(tmp_path / "train.parquet", images, [0, 1, 12], class_names=[str(i) for i in range(13)])
    with pytest.raises(DataError, match=r"label 12 at row 2.*outside the 10 classes.*class_names="):
        load_image_dataset(f"parquet:{tmp_path}", class_names=[str(i) for i in range(10)])


def test_refs_convert_parquet_layout(tmp_path):
    # The hub's auto-converted branch: <config>/<split>/0000.parquet.
    for split, per_class in (("train", 2), ("test", 1)):
        write_split_parquet(tmp_path / "default" / split / "0000.parquet", per_class, size=8, channels=1, seed=0,
                            class_names=[str(i) for i in range(10)])
    dsd = load_image_dataset(f"parquet:{tmp_path}")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 20, "test": 10}


def test_empty_imagefolder_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="empty: no image files"):
        load_image_dataset(f"imagefolder:{tmp_path}")


def test_hub_dataset_not_found_error(monkeypatch):
    def missing(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'me/typo' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError, match=r"'me/typo' was not found.*check the id.*parquet:"):
        load_image_dataset("me/typo")


def test_no_parquet_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"No parquet files.*<split>-\*\.parquet"):
        load_image_dataset(f"parquet:{tmp_path}")


def test_corrupt_image_names_the_row_and_file(tmp_path):
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(pattern_images([i], size=8)[0]).save(root / c / f"{i}.png")
    (root / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    dsd = load_image_dataset(f"imagefolder:{root}")
    ds = with_image_transform(dsd["train"], build_transform(train=False))
    paths = [r["path"] for r in dsd["train"].cast_column("image", datasets.Image(decode=False))["image"]]
    bad = next(i for i, p in enumerate(paths) if p.endswith("b/1.png"))
    with pytest.raises(DataError, match=rf"Row {bad}: .*1\.png.*corrupt"):
        list(make_loader(ds, 2, shuffle=False))


# ---------------------------------------------------------------------------------------------- splits


def test_splits_are_class_balanced_disjoint_and_seeded(fashion):
    s = semi_supervised_splits(fashion, labels_per_class=3, val_per_class=2, seed=0)
    assert np.bincount(labels_of(s.labeled), minlength=10).tolist() == [3] * 10
    assert np.bincount(labels_of(s.val), minlength=10).tolist() == [2] * 10
    assert not set(s.indices["labeled"]) & set(s.indices["val"])
    assert len(s.unlabeled) == 300 and s.unlabeled.column_names == ["image"]  # paper: SC on all of train
    assert s.num_classes == 10 and s.class_names == list(FASHION_MNIST_CLASSES) and len(s.test) == 100
    same = semi_supervised_splits(fashion, labels_per_class=3, val_per_class=2, seed=0)
    other = semi_supervised_splits(fashion, labels_per_class=3, val_per_class=2, seed=1)
    assert same.indices["labeled"] == s.indices["labeled"] and same.indices["val"] == s.indices["val"]
    assert other.indices["labeled"] != s.indices["labeled"]
    # The labelled draw for a seed does not depend on how much val is held out.
    assert semi_supervised_splits(fashion, labels_per_class=3, seed=0).indices["labeled"] == s.indices["labeled"]


def test_labeled_rows_carry_their_train_labels(fashion):
    s = semi_supervised_splits(fashion, labels_per_class=2, seed=3)
    train_labels = labels_of(fashion["train"])
    assert labels_of(s.labeled).tolist() == train_labels[s.indices["labeled"]].tolist()


def test_num_labels_remainder_goes_to_first_classes(fashion):
    s = semi_supervised_splits(fashion, num_labels=23)
    assert np.bincount(labels_of(s.labeled), minlength=10).tolist() == [3, 3, 3] + [2] * 7
    with pytest.raises(DataError, match="not both"):
        semi_supervised_splits(fashion, num_labels=20, labels_per_class=2)
    with pytest.raises(DataError, match="at least one per class"):
        semi_supervised_splits(fashion, num_labels=5)


def test_all_labelled_by_default_minus_val(fashion):
    s = semi_supervised_splits(fashion, val_per_class=4, include_labeled_in_unlabeled=False)
    assert len(s.labeled) == 260 and len(s.val) == 40
    assert set(s.indices["unlabeled_from_train"]) == set(s.indices["val"])  # only the non-labelled rows


def test_class_too_small_names_class_and_count(fashion):
    with pytest.raises(DataError, match=r"Class 0 \('T-shirt/top'\) has only 30 labelled images.*lower"):
        semi_supervised_splits(fashion, labels_per_class=25, val_per_class=10)


def test_splits_need_labels():
    with pytest.raises(DataError, match=r"Labels are needed.*no label column.*label_column="):
        semi_supervised_splits(image_only_dsd(), labels_per_class=1, test_split=None)


def test_unknown_split_and_protocol_errors(fashion):
    with pytest.raises(DataError, match=r"No split 'validation'.*\['train', 'test'\]"):
        semi_supervised_splits(fashion, test_split="validation")
    with pytest.raises(DataError, match="Unknown protocol 'imagenet'"):
        semi_supervised_splits(fashion, protocol="imagenet")
    with pytest.raises(DataError, match=r"protocol='stl10'.*'unlabeled' split"):
        semi_supervised_splits(fashion, protocol="stl10")


def test_indices_json_round_trip_reproduces_exactly(fashion, tmp_path):
    path = tmp_path / "split.json"
    s = semi_supervised_splits(fashion, labels_per_class=4, val_per_class=1, seed=7,
                               include_labeled_in_unlabeled=False, save_indices_to=str(path))
    record = json.loads(path.read_text())
    assert record["labeled"] == s.indices["labeled"] and record["seed"] == 7
    back = semi_supervised_splits(fashion, indices_file=str(path), seed=123)  # the file wins over the seed
    for key in ("labeled", "val", "unlabeled_from_train"):
        assert back.indices[key] == s.indices[key]
    assert labels_of(back.labeled).tolist() == labels_of(s.labeled).tolist()
    assert len(back.unlabeled) == len(s.unlabeled) == 260


def test_indices_file_for_another_dataset_is_refused(fashion, tmp_path):
    path = tmp_path / "split.json"
    semi_supervised_splits(fashion, labels_per_class=2, save_indices_to=str(path))
    smaller = datasets.DatasetDict({"train": fashion["train"].select(range(200)), "test": fashion["test"]})
    with pytest.raises(DataError, match=r"split of 300 rows, but this one has 200"):
        semi_supervised_splits(smaller, indices_file=str(path))
    shuffled = datasets.DatasetDict({"train": fashion["train"].shuffle(seed=0), "test": fashion["test"]})
    with pytest.raises(DataError, match="labels differ"):
        semi_supervised_splits(shuffled, indices_file=str(path))
    with pytest.raises(DataError, match="conflicts"):
        semi_supervised_splits(fashion, indices_file=str(path), labels_per_class=5)


def test_foreign_indices_file_is_refused(fashion, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"labeled": [1, 2]}))
    with pytest.raises(DataError, match="not an sclearn indices file"):
        semi_supervised_splits(fashion, indices_file=str(path))


def test_protocol_cifar10(cifar):
    s = semi_supervised_splits(cifar, protocol="cifar10")
    assert len(s.labeled) == 4000 and len(s.unlabeled) == 4020 and len(s.test) == 50 and s.val is None
    assert np.bincount(labels_of(s.labeled)).tolist() == [400] * 10
    assert s.summary().startswith("labeled 4000 (400/class) | unlabeled 4020")


def test_protocol_stl10(stl):
    s = semi_supervised_splits(stl, protocol="stl10")
    assert len(s.labeled) == 50 and len(s.unlabeled) == 40 + 50 and len(s.test) == 30
    assert s.indices["unlabeled_split"] == "unlabeled"
    only_extra = semi_supervised_splits(stl, protocol="stl10", include_labeled_in_unlabeled=False)
    assert len(only_extra.unlabeled) == 40


def test_protocol_mnist(mnist_parquet_dir):
    dsd = load_image_dataset(f"parquet:{mnist_parquet_dir}")
    s = semi_supervised_splits(dsd, protocol="fashion_mnist")
    assert len(s.labeled) == 120 and len(s.unlabeled) == 120 and s.indices["protocol"] == "mnist"


# ---------------------------------------------------------------------------------------------- transforms


def gray_image(seed: int = 0, size: int = 28) -> Image.Image:
    return Image.fromarray(pattern_images([seed % 10], size=size, seed=seed)[0])


def test_eval_transform_gray_to_rgb_and_resize():
    img = gray_image()
    x = build_transform(train=False)(img)
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(np.array(img)).float() / 255)
    assert build_transform(train=False, image_size=32)(img).shape == (3, 32, 32)
    assert build_transform(train=False, channels=1)(img.convert("RGB")).shape == (1, 28, 28)


def test_eval_is_deterministic_and_train_augments():
    img = gray_image()
    ev = build_transform(train=False, channels=1)
    assert torch.equal(ev(img), ev(img))
    tr = build_transform(train=True, channels=1)
    outs = [tr(img) for _ in range(20)]
    assert any(not torch.equal(o, ev(img)) for o in outs)
    assert all(o.shape == (1, 28, 28) for o in outs)
    plain = build_transform(train=True, channels=1, translate=0, hflip=False)
    assert torch.equal(plain(img), ev(img))


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge", "symmetric"])
def test_random_translate_shifts_content_and_reaches_every_offset(mode):
    img = torch.arange(1, 1 + 8 * 8, dtype=torch.uint8).reshape(1, 8, 8)
    t = D.RandomTranslate(2, mode)
    seen = set()
    torch.manual_seed(0)
    for _ in range(300):
        out = t(img)
        assert out.shape == img.shape
        # The centre 4x4 of the output is the input shifted by (sy, sx): find it.
        hits = [(sy, sx) for sy in range(-2, 3) for sx in range(-2, 3)
                if torch.equal(out[0, 2:6, 2:6], img[0, 2 + sy : 6 + sy, 2 + sx : 6 + sx])]
        assert len(hits) == 1
        seen.add(hits[0])
        if mode == "constant" and hits[0][0] > 0:
            assert out[0, -1].eq(0).all()  # rows shifted in from outside are zeros
    assert len(seen) == 25


def test_normalisation_from_model_and_explicit():
    img = gray_image()
    model = nn.Sequential(nn.Conv2d(1, 4, 3))  # 1 input channel; timm falls back to ImageNet stats
    x = build_transform(train=False, model=model)(img)
    mean = float(np.mean((0.485, 0.456, 0.406)))
    std = float(np.mean((0.229, 0.224, 0.225)))
    raw = torch.from_numpy(np.array(img)).float() / 255
    assert x.shape == (1, 28, 28) and torch.allclose(x[0], (raw - mean) / std, atol=1e-5)
    y = build_transform(train=False, mean=(0.5,), std=(0.5,))(img)
    assert y.shape == (3, 28, 28) and y.min() >= -1 and y.max() <= 1 and torch.allclose(y[0], raw * 2 - 1)
    with pytest.raises(DataError, match="both mean= and std="):
        build_transform(train=False, mean=(0.5,))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "1", "CMYK"])
def test_any_mode_converts(mode):
    rgb = Image.fromarray(pattern_images([3], size=12, channels=3)[0])
    img = rgb.convert("I;16") if mode == "I;16" else rgb.convert(mode)
    for channels in (1, 3):
        x = build_transform(train=False, channels=channels)(img)
        assert x.shape == (channels, 12, 12) and 0 <= x.min() and x.max() <= 1


def test_sixteen_bit_images_are_scaled_not_clipped():
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    x = build_transform(train=False, channels=1)(Image.fromarray(arr))
    assert torch.allclose(x, torch.full_like(x, round(40000 / 257) / 255))


def test_dataset_stats_exact_on_constant_images():
    feats = datasets.Features({"image": datasets.Image()})
    gray = [np.full((4, 4), v, np.uint8) for v in (0, 255, 0, 255)]
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(a), "path": None} for a in gray]}, features=feats)
    mean, std = dataset_stats(ds)
    assert mean == pytest.approx((0.5,)) and std == pytest.approx((0.5,))
    rgb = [np.broadcast_to(np.array([255, 0, 51], np.uint8), (4, 4, 3)).copy()] * 3
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(a), "path": None} for a in rgb]}, features=feats)
    mean, std = dataset_stats(ds, max_images=2)
    assert mean == pytest.approx((1.0, 0.0, 0.2)) and std == pytest.approx((0, 0, 0), abs=1e-6)



def test_normalization_stats_follow_the_unlabelled_images_and_the_channel_count():
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def gray_ds(values):
        imgs = [{"bytes": png_bytes(np.full((4, 4), v, np.uint8)), "path": None} for v in values]
        return datasets.Dataset.from_dict({"image": imgs, "label": [0] * len(values)}, features=feats)

    labeled, unlabeled = gray_ds([255, 255]), gray_ds([0, 255, 0, 255])  # mean 1.0 vs mean 0.5, std 0.5
    splits = D.SemiSupervisedSplits(labeled=labeled, unlabeled=unlabeled, test=labeled, val=None, num_classes=2,
                                    class_names=["a", "b"], indices={})
    def stats(channels: int) -> list[float]:  # (mean, std) flattened, for pytest.approx
        mean, std = D.normalization_stats(splits, channels=channels)
        return [*mean, *std]

    assert stats(1) == pytest.approx([0.5, 0.5])
    assert stats(3) == pytest.approx([0.5] * 6)
    splits.unlabeled = None  # supervised on everything: the labelled images decide
    assert stats(1) == pytest.approx([1.0, 0.0], abs=1e-6)


# ---------------------------------------------------------------------------------------------- loaders


def test_with_image_transform_rows(fashion, stl):
    ds = with_image_transform(fashion["train"], build_transform(train=False, channels=1))
    row = ds[3]
    assert row["image"].shape == (1, 28, 28) and row["label"] == int(labels_of(fashion["train"])[3])
    un = with_image_transform(semi_supervised_splits(stl, protocol="stl10").unlabeled, build_transform(train=False))
    assert un[0]["label"] == -1 and un[0]["image"].shape == (3, 32, 32)
    assert isinstance(fashion["train"][0]["image"], Image.Image)  # the original is untouched


def test_loader_shapes_labels_and_drop_last(fashion):
    ds = with_image_transform(fashion["test"], build_transform(train=False, channels=1))
    batches = list(make_loader(ds, 32, shuffle=False))
    assert [len(b.labels) for b in batches] == [32, 32, 32, 4]
    x, y = batches[0]
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.cat([b.labels for b in batches]).tolist() == labels_of(fashion["test"]).tolist()
    dropped = list(make_loader(ds, 32, shuffle=True, drop_last=True))
    assert [len(b.labels) for b in dropped] == [32, 32, 32]
    with pytest.raises(DataError, match="gives no batches"):
        make_loader(ds, 200, shuffle=True, drop_last=True)


def test_unlabelled_loader_yields_minus_one(fashion):
    s = semi_supervised_splits(fashion, labels_per_class=2)
    x, y = next(iter(make_loader(with_image_transform(s.unlabeled, build_transform(train=True)), 16, shuffle=True)))
    assert x.shape == (16, 3, 28, 28) and y.tolist() == [-1] * 16


def test_shuffling_is_seeded_and_changes_each_epoch(fashion):
    ds = with_image_transform(fashion["test"], build_transform(train=False, channels=1))

    def order(loader):
        return torch.cat([b.labels for b in loader]).tolist()

    a, b, c = (make_loader(ds, 25, shuffle=True, seed=s) for s in (0, 0, 1))
    first = order(a)
    assert first == order(b) and first != order(c)
    assert order(a) != first  # a second epoch reshuffles
    assert sorted(first) == sorted(labels_of(fashion["test"]).tolist())


def test_workers_give_the_same_order(fashion):
    ds = with_image_transform(fashion["test"], build_transform(train=False, channels=1))
    main = [b for b in make_loader(ds, 25, shuffle=True, seed=5)]
    loader = make_loader(ds, 25, shuffle=True, seed=5, num_workers=2)
    assert loader.persistent_workers
    work = list(loader)
    assert all(torch.equal(m.images, w.images) and torch.equal(m.labels, w.labels) for m, w in zip(main, work))


def test_cycle_goes_past_one_epoch_and_reshuffles(fashion):
    ds = with_image_transform(fashion["test"], build_transform(train=False, channels=1))
    loader = make_loader(ds, 25, shuffle=True, drop_last=True)
    it = cycle(loader)
    epochs = [torch.cat([next(it).labels for _ in range(4)]).tolist() for _ in range(3)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs) and epochs[0] != epochs[1]
    with pytest.raises(DataError, match="no batches"):
        next(cycle([]))


def test_loader_errors_say_what_to_do(fashion, imagefolder_dir):
    with pytest.raises(DataError, match=r"yields .*Image.* not tensors.*with_image_transform"):
        next(iter(make_loader(fashion["test"], 4, shuffle=False)))
    root = imagefolder_dir.parent / "sizes"
    for i, size in enumerate((8, 12)):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern_images([i], size=size)[0]).save(root / "a" / f"{i}.png")
    dsd = load_image_dataset(f"imagefolder:{root}")
    ds = with_image_transform(dsd["train"], build_transform(train=False))
    with pytest.raises(DataError, match="image_size="):
        next(iter(make_loader(ds, 2, shuffle=False)))
    sized = with_image_transform(dsd["train"], build_transform(train=False, image_size=10))
    assert next(iter(make_loader(sized, 2, shuffle=False))).images.shape == (2, 3, 10, 10)


def test_plain_torch_dataset_and_accelerate_prepare(fashion):
    from accelerate import Accelerator

    tensors = torch.utils.data.TensorDataset(torch.rand(10, 1, 4, 4), torch.arange(10))
    x, y = next(iter(make_loader(tensors, 4, shuffle=False)))
    assert x.shape == (4, 1, 4, 4) and y.tolist() == [0, 1, 2, 3]
    ds = with_image_transform(fashion["test"], build_transform(train=False, channels=1))
    prepared = Accelerator(cpu=True).prepare(make_loader(ds, 32, shuffle=True, drop_last=True))
    batches = list(prepared)
    assert len(batches) == 3 and batches[0][0].shape == (32, 1, 28, 28) and batches[0][1].dtype == torch.int64


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_real_fashion_mnist(tmp_path):
    dsd = load_image_dataset(f"idx:{REAL_FASHION}", cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in dsd.items()} == {"train": 60000, "test": 10000}
    s = semi_supervised_splits(dsd, labels_per_class=100, val_per_class=50)
    assert len(s.labeled) == 1000 and len(s.val) == 500
    mean, std = dataset_stats(dsd["train"], max_images=5000)
    assert mean[0] == pytest.approx(0.286, abs=0.01) and std[0] == pytest.approx(0.353, abs=0.01)
