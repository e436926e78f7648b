"""sclearn: Spatial Contrasting (Hoffer et al., 2016) for timm and torchvision backbones."""

from . import models  # registers the Table-4 nets (sc_stl10, sc_cifar10, sc_mnist) with timm
from .evaluation import evaluate_accuracy, extract_features, knn_probe, linear_probe, probe_representation
from .losses import (
    PatchProjector,
    SpatialContrastiveLoss,
    multi_patch_contrastive_loss,
    pairwise_distance,
    paper_loss,
    spatial_contrastive_loss,
)
from .sampling import resolve_patch_size, sample_patch_positions, sample_patches
from .wrapper import MultiLayerSC, SCOutput

__version__ = "0.1.0"

__all__ = [
    "MultiLayerSC",
    "evaluate_accuracy",
    "extract_features",
    "knn_probe",
    "linear_probe",
    "probe_representation",
    "PatchProjector",
    "SCOutput",
    "SpatialContrastiveLoss",
    "multi_patch_contrastive_loss",
    "pairwise_distance",
    "paper_loss",
    "resolve_patch_size",
    "sample_patch_positions",
    "sample_patches",
    "spatial_contrastive_loss",
]
