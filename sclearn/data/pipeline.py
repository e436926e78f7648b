"""The input pipeline of a run: choose the data path, build every loader, augment batches on the device.

    loaders = build_loaders(config, splits, device="cuda")
    for images, labels in loaders.train["labeled"]:  # float32 (B, C, H, W) on the device, augmented
        ...

Two paths give the same tensors; they differ only in where a batch's uint8 pixels come from:

- ``memory``: every split decoded once into a uint8 ``(N, C, H, W)`` stack (:mod:`sclearn.data.memory`,
  cached on disk and memory-mapped); a batch is an index into it. No workers are needed.
- ``stream``: every image decoded at every step (:func:`decode_transform`, in ``num_workers`` processes).
  For data that does not fit the memory budget.

On both, a batch goes to the device as uint8 and :class:`BatchAugment` translates, flips, expands grayscale
to RGB and normalises it there in one call, drawing its random parameters from torch's global RNG. The
Trainer seeds that RNG at every step, so the augmentation of a step depends on the step alone: a resumed run
(with or without workers, on either path) computes exactly what the uninterrupted one did.

Training loaders are batched by :class:`sclearn.batching.EpochBatchSampler` (resumable, sharded by rank);
eval loaders go through ``prepare_eval`` (e.g. ``Accelerator.prepare_data_loader``, so that
``gather_for_metrics`` drops the padding of uneven shards); probe loaders cover whole sets on one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor
from torch.utils.data import DataLoader

from ..batching import resumable_loader
from .augment import BatchAugment
from .loaders import Batch, make_loader, with_image_transform
from .memory import ImageStack, MemoryRows, decode_split, decoded_shape, labels_of
from .splits import SemiSupervisedSplits
from .transforms import decode_transform, normalization_stats

__all__ = ["DATA_PATHS", "DeviceLoader", "Loaders", "build_loaders", "default_memory_budget"]

_logger = logging.getLogger(__name__)

DATA_PATHS = ("auto", "memory", "stream")
_CE_STAGES = {"supervised", "finetune", "joint"}
_SC_STAGES = {"pretrain", "joint"}
_FALLBACK_RAM = 16 * 2**30  # where the OS does not say how much RAM there is


def default_memory_budget() -> int:
    """A quarter of this machine's RAM, in bytes: room for the decoded data next to the model, the optimizer
    and the other processes. STL-10 (113k images, 3 x 96 x 96: 3.1 GB) fits on a 16 GiB machine."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        ram = _FALLBACK_RAM
    return ram // 4


class DeviceLoader:
    """Batches of a uint8 loader, moved to ``device`` and run through ``augment`` there.

    Yields ``Batch(images, labels)``: float32 ``(B, C, H, W)`` and int64 ``(B,)`` on ``device``. Exposes the
    inner loader's ``batch_sampler`` (to resume mid-epoch) and ``dataset``.
    """

    def __init__(self, loader: Any, augment: BatchAugment, device: torch.device | str = "cpu") -> None:
        self.loader, self.augment, self.device = loader, augment, torch.device(device)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield Batch(self.augment(images), labels.to(self.device, non_blocking=True))

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset


@dataclass
class Loaders:
    """Everything :func:`build_loaders` made.

    Attributes:
        train: ``"labeled"`` (CE stages) and/or ``"unlabeled"`` (SC stages): resumable, sharded, augmented.
        eval: ``"test"`` (and ``"val"``): deterministic, through ``prepare_eval``.
        probe: ``"bank"`` (labelled), ``"test"`` (and ``"val"``) over whole sets, for the kNN probe of SC
            pre-training; empty without a pretrain stage.
        example: The first test batch (or, without a test split, of another part), normalised, on the CPU:
            ``(B, C, H, W)`` float32.
        path: ``"memory"`` or ``"stream"``.
        reason: One line: why that path.
        mean, std: The normalisation used.
    """

    train: dict[str, DeviceLoader]
    eval: dict[str, DeviceLoader]
    probe: dict[str, DeviceLoader]
    example: Tensor
    path: str
    reason: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_loaders(config: Any, splits: SemiSupervisedSplits, *, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = "cpu",
                  prepare_eval: Callable[[DataLoader], Any] | None = None) -> Loaders:
    """Every loader of a run of ``config`` on ``splits``, on the path ``config.data_path`` asks for.

    Args:
        config: A :class:`sclearn.TrainConfig` (its data, batch, augmentation and stage fields are read).
        splits: From :func:`sclearn.data.semi_supervised_splits`.
        rank, world_size: This process and the number of processes; training batches are sharded by rank.
        device: Where batches are augmented and yielded.
        prepare_eval: Applied to each eval ``DataLoader`` (``Accelerator.prepare_data_loader`` under DDP).

    Returns:
        A :class:`Loaders`.

    Raises:
        ValueError: the unlabelled set cannot fill one SC batch per process.
        DataError: an image cannot be decoded, or images differ in size without ``image_size``.
    """
    cfg, stages = config, set(config.stages)
    parts = {"labeled": splits.labeled, "unlabeled": splits.unlabeled, "test": splits.test, "val": splits.val}
    used = {"test"} | ({"val"} if splits.val is not None and len(splits.val) else set())
    used |= {"labeled"} if stages & _CE_STAGES or "pretrain" in stages else set()
    used |= {"unlabeled"} if stages & _SC_STAGES else set()
    origins = {name: splits.origins.get(name) or [(parts[name], None)] for name in used if parts[name] is not None}
    path, reason = _choose_path(cfg, origins)
    _logger.info("data path: %s (%s)", path, reason)

    if path == "memory":
        rows = _memory_rows(origins, parts, image_size=cfg.image_size, channels=cfg.channels)
        workers = 0  # a batch is one index operation: workers would only add inter-process copies
    else:
        decode = decode_transform(image_size=cfg.image_size, channels=cfg.channels)
        rows = {name: with_image_transform(parts[name], decode) for name in origins}
        workers = cfg.num_workers

    mean, std = normalization_stats(splits, channels=cfg.channels)
    common = dict(mean=mean, std=std, channels=cfg.channels)
    train_aug = BatchAugment(translate=cfg.translate, hflip=cfg.hflip, **common)
    eval_aug = BatchAugment(**common)
    shard = dict(seed=cfg.seed, rank=rank, world_size=world_size)

    def train_loader(name: str, batch_size: int, drop_last: bool) -> DeviceLoader:
        base = make_loader(rows[name], batch_size, shuffle=True, num_workers=workers, seed=cfg.seed)
        return DeviceLoader(resumable_loader(base, drop_last=drop_last, **shard), train_aug, device)

    def eval_loader(name: str) -> DataLoader:
        return make_loader(rows[name], max(cfg.batch_size, 256), shuffle=False, num_workers=workers, seed=cfg.seed)

    train: dict[str, DeviceLoader] = {}
    if stages & _CE_STAGES:
        # Joint steps concatenate with an unlabelled batch, so keep labelled batches full (DDP: equal).
        drop_last = "joint" in stages if cfg.labeled_drop_last is None else cfg.labeled_drop_last
        full = len(splits.labeled) // world_size >= cfg.batch_size  # else one ragged batch is all there is
        train["labeled"] = train_loader("labeled", cfg.batch_size, drop_last=drop_last and full)
    if stages & _SC_STAGES:
        bs = cfg.unlabeled_batch_size if "joint" in stages else cfg.sc_batch_size
        if len(splits.unlabeled) // world_size < bs:
            raise ValueError(f"{len(splits.unlabeled)} unlabelled images cannot fill one SC batch of {bs} per process")
        train["unlabeled"] = train_loader("unlabeled", bs, drop_last=True)  # SC needs N >= 2: no ragged batch
    evals = {name: eval_loader(name) for name in ("test", "val") if name in rows}
    first = evals["test"] if "test" in evals else eval_loader(next(iter(rows)))  # test_split=None: any part
    example = next(iter(DeviceLoader(first, eval_aug, "cpu"))).images  # also the head-size check's input
    prepare = prepare_eval or (lambda loader: loader)
    eval_loaders = {name: DeviceLoader(prepare(loader), eval_aug, device) for name, loader in evals.items()}
    probe: dict[str, DeviceLoader] = {}
    if "pretrain" in stages:  # the kNN probe runs on the main process over whole (unsharded) sets
        probe = {name: DeviceLoader(eval_loader(name), eval_aug, device) for name in ("labeled", *evals)}
        probe["bank"] = probe.pop("labeled")
    return Loaders(train=train, eval=eval_loaders, probe=probe, example=example, path=path, reason=reason,
                   mean=tuple(mean), std=tuple(std))


Origins = dict[str, list[tuple[Dataset, list[int] | None]]]


def _bases(origins: Origins) -> dict[int, Dataset]:
    """The distinct source splits behind the parts, by identity: each is decoded once."""
    return {id(ds): ds for segments in origins.values() for ds, _ in segments}


def _choose_path(cfg: Any, origins: Origins) -> tuple[str, str]:
    if cfg.data_path == "stream":
        return "stream", "data_path='stream'"
    budget = int(cfg.memory_budget_gb * 2**30) if cfg.memory_budget_gb is not None else default_memory_budget()
    need = sum(len(ds) * int(np.prod(decoded_shape(ds, image_size=cfg.image_size, channels=cfg.channels)))
               for ds in _bases(origins).values())
    within = f"{_gib(need)} of decoded images, memory budget {_gib(budget)}"
    if cfg.data_path == "memory":
        return "memory", f"data_path='memory'; {within}"
    if need <= budget:
        return "memory", f"auto: {within}"
    return "stream", (f"auto: {within} (memory_budget_gb, --memory-budget-gb): too large, so every image is "
                      "decoded at every step")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _memory_rows(origins: Origins, parts_by_name: dict[str, Dataset], *, image_size: int | None,
                 channels: int) -> dict[str, MemoryRows]:
    """Each part as rows of the decoded source splits (a part spanning two splits indexes both)."""
    stacks = {key: decode_split(ds, image_size=image_size, channels=channels,
                                desc=f"decoding {len(ds)} images once (memory path)")
              for key, ds in _bases(origins).items()}
    out = {}
    for name, segments in origins.items():
        if len(segments) == 1 and segments[0][1] is None:  # a whole split: no row map
            stack, rows = stacks[id(segments[0][0])], None
        else:
            parts = [stacks[id(ds)] for ds, _ in segments]
            stack = parts[0] if len(parts) == 1 else ImageStack.concat(parts)
            starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
            rows = torch.cat([torch.as_tensor(np.arange(len(p)) if r is None else np.asarray(r, np.int64)) + int(s)
                              for (_, r), p, s in zip(segments, parts, starts)])
        out[name] = MemoryRows(stack, labels_of(parts_by_name[name]), rows)
    return out
