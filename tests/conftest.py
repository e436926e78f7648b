"""Shared fixtures: tiny local datasets with the same schemas and layouts as the hub repos.

No test touches the network. Builders are plain functions (reuse them for variants); the fixtures are
session-scoped, read-only directories:

===================  ==============================================================================
``idx_dir``          Fashion-MNIST-like IDX files (gz, ``train-images-idx3-ubyte.gz``...): 10 classes,
                     30 train + 10 test per class, 28x28; the directory name contains "fashion"
``cifar_parquet_dir``  like ``uoft-cs/cifar10``: ``plain_text/{train,test}-00000-of-00001.parquet``,
                     columns ``img`` (PNG RGB 32x32), ``label``; 402 train + 5 test per class
``stl_parquet_dir``  like ``jxie/stl10``: ``data/{train,test,unlabeled}-00000-of-00001.parquet``, column
                     ``image`` (+ ``label``, absent in ``unlabeled``); 5 train + 3 test per class, 40 unlabeled
``mnist_parquet_dir``  like ``ylecun/mnist``: ``mnist/{train,test}-00000-of-00001.parquet``, ``image`` (PNG L
                     28x28), ``label``; 12 train + 4 test per class
``imagefolder_dir``  ``{train,test}/{cat,dog,frog}/*.png|jpg`` mixing L, RGB, RGBA, LA, P and JPEG images
===================  ==============================================================================

Images carry a class-dependent bar (position and orientation encode the class) over noise, so a small
model can learn them.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
FOLDER_CLASSES = ["cat", "dog", "frog"]


def pattern_images(labels, *, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Learnable uint8 images, (N, H, W) or (N, H, W, 3): class c is a bright bar over dim noise.

    Classes 0-4 get a horizontal bar, 5-9 a vertical one, at a position set by ``c % 5`` (jittered
    by one pixel); in RGB the bar's colour also depends on the class.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    imgs = rng.integers(0, 40, (len(labels), size, size), dtype=np.uint8)  # (N, H, W)
    band = max(2, size // 7)
    for i, c in enumerate(labels):
        pos = int(np.clip((c % 5) * (size - band) // 4 + rng.integers(-1, 2), 0, size - band))
        value = rng.integers(180, 256)
        if c % 10 < 5:
            imgs[i, pos : pos + band, :] = value
        else:
            imgs[i, :, pos : pos + band] = value
    if channels == 1:
        return imgs
    tint = np.stack([1.0 - 0.08 * (labels % 10), 0.4 + 0.06 * (labels % 10), np.full(len(labels), 0.8)], 1)
    return (imgs[..., None] * tint[:, None, None, :]).astype(np.uint8)  # (N, H, W, 3)


def balanced_labels(per_class: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """``per_class`` of each class, shuffled (as real datasets are)."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def png_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """One IDX file (unsigned bytes), gzip-compressed when ``path`` ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def write_idx_dir(root: Path, *, train_per_class: int = 30, test_per_class: int = 10, size: int = 28,
                  gz: bool = True, sep: str = "-", seed: int = 0) -> Path:
    """The four MNIST-style files: ``{train,t10k}-{images,labels}{sep}idx{3,1}-ubyte[.gz]``."""
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, per_class, s in (("train", train_per_class, seed), ("t10k", test_per_class, seed + 1)):
        labels = balanced_labels(per_class, seed=s)
        write_idx(root / f"{prefix}-images{sep}idx3-ubyte{ext}", pattern_images(labels, size=size, seed=s))
        write_idx(root / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels)
    return root


def write_hub_parquet(path: Path, images: list[bytes], labels=None, *, image_column: str = "image",
                      class_names: list[str] | None = None) -> Path:
    """A parquet file as the hub's parquet conversion writes it (with the ``datasets`` features metadata)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    columns = {image_column: [{"bytes": b, "path": None} for b in images]}
    features = {image_column: ImageFeature()}
    if labels is not None:
        columns["label"] = [int(y) for y in labels]
        features["label"] = ClassLabel(names=class_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=Features(features)).to_parquet(str(path))
    return path


def write_split_parquet(path: Path, per_class: int, *, size: int, channels: int, seed: int,
                        image_column: str = "image", class_names=None, labelled: bool = True) -> Path:
    labels = balanced_labels(per_class, seed=seed)
    images = [png_bytes(a) for a in pattern_images(labels, size=size, channels=channels, seed=seed)]
    return write_hub_parquet(path, images, labels if labelled else None, image_column=image_column,
                             class_names=class_names)


def write_imagefolder(root: Path, *, train_per_class: int = 6, test_per_class: int = 2, size: int = 16) -> Path:
    """``root/{train,test}/<class>/<i>.<ext>``, cycling through modes L, RGB, RGBA, LA, P and JPEG files."""
    kinds = [("L", "png"), ("RGB", "png"), ("RGBA", "png"), ("LA", "png"), ("P", "png"), ("RGB", "jpg")]
    for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        for c, name in enumerate(FOLDER_CLASSES):
            arrays = pattern_images(np.full(per_class, c), size=size, channels=3, seed=seed + 10 * c)
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, arr in enumerate(arrays):
                mode, ext = kinds[(i + c) % len(kinds)]
                img = Image.fromarray(arr).convert(mode)
                if mode == "P":
                    img.info["transparency"] = 0  # palette with transparency: PIL warns unless converted via RGBA
                img.save(root / split / name / f"{i:03d}.{ext}", format="JPEG" if ext == "jpg" else "PNG")
    return root


@pytest.fixture(scope="session", autouse=True)
def _data_caches(tmp_path_factory):
    """Keep the tests' arrow caches (sclearn's IDX cache, datasets') out of the home directory."""
    import datasets

    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCLEARN_CACHE", str(root / "sclearn"))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets")
        yield root


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture(scope="session")
def cifar_parquet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    for split, per_class, seed in (("train", 402, 0), ("test", 5, 1)):
        write_split_parquet(root / "plain_text" / f"{split}-00000-of-00001.parquet", per_class, size=32, channels=3,
                            seed=seed, image_column="img", class_names=CIFAR10_CLASSES)
    return root


@pytest.fixture(scope="session")
def stl_parquet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stl10")
    for split, per_class, seed in (("train", 5, 0), ("test", 3, 1), ("unlabeled", 4, 2)):
        write_split_parquet(root / "data" / f"{split}-00000-of-00001.parquet", per_class, size=32, channels=3,
                            seed=seed, class_names=STL10_CLASSES, labelled=split != "unlabeled")
    return root


@pytest.fixture(scope="session")
def mnist_parquet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    for split, per_class, seed in (("train", 12, 0), ("test", 4, 1)):
        write_split_parquet(root / "mnist" / f"{split}-00000-of-00001.parquet", per_class, size=28, channels=1,
                            seed=seed, class_names=[str(i) for i in range(10)])
    return root


@pytest.fixture(scope="session")
def imagefolder_dir(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("folder"))
