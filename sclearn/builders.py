"""From a :class:`~sclearn.config.TrainConfig` to the data splits and SC parts a run trains on, for scripts and
benchmarks.

    splits = build_splits(cfg)                       # cfg.data split as cfg.protocol / labels_per_class say
    losses = build_sc_losses(cfg, ["layer3"])        # {"layer3": SpatialContrastiveLoss(...)}
    model = build_sc_model(cfg, timm.create_model("resnet18", num_classes=10))

The Trainer builds its splits and wrapper with these, so a benchmark that uses them gets exactly the data and
the loss a training run with the same config gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from .config import TrainConfig
from .losses import PatchProjector, SpatialContrastiveLoss
from .sampling import PatchSize
from .wrapper import MultiLayerSC

if TYPE_CHECKING:
    from .data import SemiSupervisedSplits


def build_splits(config: TrainConfig, *, data: str | None = None, indices_file: str | None = None,
                 save_indices_to: str | None = None) -> SemiSupervisedSplits:
    """The labelled / unlabelled / val / test splits of ``config.data`` (or ``data``), drawn as ``config`` says
    (``protocol``, ``labels_per_class``, ``val_per_class``, ``split_seed``, ``train_split``, ``test_split``).

    Args:
        indices_file: A run's ``split_indices.json``: its split again, exactly.
        save_indices_to: Where to write the indices drawn.
    """
    from .data import load_image_dataset, semi_supervised_splits  # datasets loads only when data is

    source = data or config.data
    if not source:
        raise ValueError("no data: set TrainConfig.data (e.g. 'idx:/path/to/fashion-mnist') or pass splits=")
    return semi_supervised_splits(
        load_image_dataset(source), protocol=config.protocol, labels_per_class=config.labels_per_class,
        val_per_class=config.val_per_class, seed=config.split_seed, train_split=config.train_split,
        test_split=config.test_split, indices_file=indices_file, save_indices_to=save_indices_to,
    )


def sc_layers(config: TrainConfig, backbone: nn.Module) -> list[str]:
    """The layers SC attaches to: ``config.layers``, else the Table-4 net's own ``sc_layer``."""
    if config.layers:
        return list(config.layers)
    sc_layer = getattr(backbone, "sc_layer", None)
    if sc_layer is None:
        raise ValueError(f"layers is empty and {type(backbone).__name__} names no sc_layer; set layers=")
    return [sc_layer]


def build_sc_losses(config: TrainConfig, layers: Sequence[str]) -> dict[str, SpatialContrastiveLoss]:
    """One :class:`SpatialContrastiveLoss` per layer, set up as ``config`` says.

    Args:
        config: Reads ``patch_size`` (or ``layer_patch_sizes``, one per layer), ``distance``,
            ``temperature``, ``pool``, ``num_patches``, ``min_offset`` and ``projector_dim``.
        layers: The hooked layers, in the order of ``config.layer_patch_sizes``.

    Returns:
        Layer name -> a fresh loss module (each with its own projector when ``projector_dim`` is set).
    """
    layers = list(layers)
    sizes = config.layer_patch_sizes or (config.patch_size,) * len(layers)
    if len(sizes) != len(layers):
        raise ValueError(f"{len(sizes)} layer_patch_sizes for {len(layers)} layers {layers}")

    def make_loss(patch_size: PatchSize) -> SpatialContrastiveLoss:
        projector = PatchProjector(out_dim=config.projector_dim) if config.projector_dim else None
        return SpatialContrastiveLoss(
            patch_size, distance=config.distance, temperature=config.temperature, pool=config.pool,
            num_patches=config.num_patches, min_offset=config.min_offset, projector=projector,
        )

    return {name: make_loss(size) for name, size in zip(layers, sizes)}


def build_sc_model(config: TrainConfig, backbone: nn.Module) -> MultiLayerSC:
    """``backbone`` wrapped with the SC losses of ``config`` at :func:`sc_layers`, weighted by ``layer_weights``."""
    layers = sc_layers(config, backbone)
    return MultiLayerSC(backbone, layers, weights=config.layer_weights, loss=build_sc_losses(config, layers))


__all__ = ["build_sc_losses", "build_sc_model", "build_splits", "sc_layers"]
