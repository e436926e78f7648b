"""sclearn: Spatial Contrasting (Hoffer et al., 2016) for timm and torchvision backbones."""

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
