"""sclearn: Spatial Contrasting (Hoffer et al., 2016) for timm and torchvision backbones."""

from . import models  # noqa: F401  registers the Table-4 nets (sc_stl10, sc_cifar10, sc_mnist) with timm
from .evaluation import evaluate_accuracy, extract_features, knn_probe, linear_probe, probe_representation
from .losses import (
    PatchProjector,
    SpatialContrastiveLoss,
    multi_patch_contrastive_loss,
    pairwise_distance,
    paper_loss,
    spatial_contrastive_loss,
)
from .presets import SC_PRESETS, sc_preset
from .sampling import resolve_patch_size, sample_patch_positions, sample_patches
from .wrapper import MultiLayerSC, SCOutput

__version__ = "0.1.0"

# The trainer pulls in accelerate and datasets; load it on first use so `import sclearn` stays light.
_LAZY = {"Trainer": ("train", "Trainer"), "TrainConfig": ("config", "TrainConfig"),
         "NonFiniteLossError": ("train", "NonFiniteLossError"), "probe_checkpoint": ("probe", "probe_checkpoint"),
         "probe_run": ("probe", "probe_run")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'sclearn' has no attribute {name!r}")

__all__ = [
    "SC_PRESETS",
    "MultiLayerSC",
    "NonFiniteLossError",
    "PatchProjector",
    "SCOutput",
    "SpatialContrastiveLoss",
    "TrainConfig",
    "Trainer",
    "evaluate_accuracy",
    "extract_features",
    "knn_probe",
    "linear_probe",
    "multi_patch_contrastive_loss",
    "pairwise_distance",
    "paper_loss",
    "probe_checkpoint",
    "probe_representation",
    "probe_run",
    "resolve_patch_size",
    "sample_patch_positions",
    "sample_patches",
    "sc_preset",
    "spatial_contrastive_loss",
]
