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

The Trainer's input pipeline (``build_loaders``, usable on its own) decodes each split once into a cached
uint8 tensor when it fits a memory budget (``memory``), else every image at every step (``stream``), and
augments whole batches on the device (``BatchAugment``).

Modules, one job each: ``sources`` (hub, parquet, image folders, column normalising), ``idx``, ``splits``,
``transforms`` (per image), ``augment`` (per batch, on the device), ``decode``, ``loaders``, ``memory`` (the
decoded cache) and ``pipeline`` (``build_loaders``).
"""

from .augment import BatchAugment, translate_flip
from .errors import DataError
from .idx import DIGIT_CLASSES, FASHION_MNIST_CLASSES, read_idx
from .loaders import Batch, cycle, make_loader, with_image_transform
from .memory import ImageStack, MemoryRows, decode_split
from .pipeline import DATA_PATHS, DeviceLoader, Loaders, build_loaders, default_memory_budget
from .sources import UNLABELED_SPLITS, load_image_dataset
from .splits import SemiSupervisedSplits, semi_supervised_splits
from .transforms import (
    ConvertMode,
    RandomTranslate,
    build_transform,
    dataset_stats,
    decode_transform,
    normalization_stats,
)

__all__ = [
    "DATA_PATHS",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "UNLABELED_SPLITS",
    "Batch",
    "BatchAugment",
    "ConvertMode",
    "DataError",
    "DeviceLoader",
    "ImageStack",
    "Loaders",
    "MemoryRows",
    "RandomTranslate",
    "SemiSupervisedSplits",
    "build_loaders",
    "build_transform",
    "cycle",
    "dataset_stats",
    "decode_split",
    "decode_transform",
    "default_memory_budget",
    "load_image_dataset",
    "make_loader",
    "normalization_stats",
    "read_idx",
    "semi_supervised_splits",
    "translate_flip",
    "with_image_transform",
]
