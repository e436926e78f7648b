"""The Spatial Contrasting loss (Hoffer, Hubara & Ailon, 2016, Eq. 4).

Two patches are sampled from the feature map of every image. Row ``i`` of ``anchors`` and row ``i`` of
``positives`` come from the same image; every other row of ``positives`` is a contrasting sample:

    L = -(1/N) sum_i log( exp(-Dist(i, i) / T) / sum_k exp(-Dist(i, k) / T) )

which is cross-entropy over the rows of ``-Dist / T`` with targets on the diagonal. The paper uses
``T = 1`` and un-squared L2. ``symmetric=True`` also scores the columns (positives as anchors), the batch
form of the paper's symmetrised pair loss L^SC.

Axis legend: N = images in the batch, P = patches per image, D = patch-vector size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sampling import PatchSize, Pool, check_pool, sample_patches

Distance = Literal["l2", "sqeuclidean", "cosine"]
DISTANCES: tuple[str, ...] = get_args(Distance)
# Every image's patches are contrasted against the other images' patches, so a batch needs a second image.
MIN_SC_BATCH = 2

# sqrt(x + eps) keeps d/dx finite at x = 0, and moves a distance of 1 by less than 1e-12.
_SQRT_EPS = 1e-12


def check_distance(distance: str) -> None:
    """Raise ``ValueError`` unless ``distance`` is one of :data:`DISTANCES`."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")


def check_sc_batch(batch_size: int, fix: str) -> None:
    """Raise ``ValueError`` for a batch too small to contrast; ``fix`` says what to change, in the caller's terms."""
    if batch_size < MIN_SC_BATCH:
        raise ValueError(
            f"spatial contrasting needs at least {MIN_SC_BATCH} images per batch (the other images are the "
            f"contrasting samples), got {batch_size}. {fix}"
        )


def pairwise_distance(a: Tensor, b: Tensor, distance: Distance = "l2") -> Tensor:
    """All-pairs distances between the rows of ``a`` and ``b``, in float32 (or float64 for fp64 inputs).

    Uses the Gram-matrix form ``|a|^2 + |b|^2 - 2 a.b``, so no (N, M, D) tensor is built.

    Args:
        a: Shape (N, D).
        b: Shape (M, D).
        distance: ``"l2"`` (un-squared Euclidean, the paper's), ``"sqeuclidean"`` or ``"cosine"``
            (1 - cosine similarity).

    Returns:
        Shape (N, M), float32 or float64.
    """
    check_distance(distance)
    # At least fp32: half-precision distances of large vectors overflow and lose the small differences
    # that decide the softmax. fp64 inputs stay fp64.
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    if distance == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # (N, M)
    # Distances are translation invariant. Centring first removes the shared offset of post-ReLU
    # features, which would otherwise dominate |a|^2 and cancel catastrophically in fp32.
    center = torch.cat([a, b]).mean(dim=0, keepdim=True).detach()  # (1, D)
    a, b = a - center, b - center
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)  # (N, M)
    sq = sq.clamp_min(0.0)
    if distance == "sqeuclidean":
        return sq
    return torch.sqrt(sq + _SQRT_EPS)


def spatial_contrastive_loss(
    anchors: Tensor,
    positives: Tensor,
    *,
    distance: Distance = "l2",
    temperature: float = 1.0,
    symmetric: bool = True,
) -> Tensor:
    """The paper's Eq. 4 on a batch of patch vectors.

    Computed in float32 whatever the input dtype or autocast state (float64 inputs stay float64).

    Args:
        anchors: Shape (N, D), the first patch of each image.
        positives: Shape (N, D), the second patch of each image, row-aligned with ``anchors``.
        distance: See :func:`pairwise_distance`.
        temperature: Divides the distances before the softmax. The paper uses 1.
        symmetric: Average the row (anchor -> positives) and column (positive -> anchors) directions.

    Returns:
        A scalar tensor, >= 0. It is log N when all distances are equal.
    """
    if anchors.ndim != 2 or anchors.shape != positives.shape:
        raise ValueError(
            f"anchors and positives must both be (N, D) with the same shape, got {tuple(anchors.shape)} "
            f"and {tuple(positives.shape)}"
        )
    n = anchors.shape[0]
    check_sc_batch(n, "Use a batch size >= 2 and drop_last=True in the DataLoader.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        logits = -pairwise_distance(anchors, positives, distance) / temperature  # (N, N)
        target = torch.arange(n, device=anchors.device)
        loss = F.cross_entropy(logits, target)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def multi_patch_contrastive_loss(patches: Tensor, **kwargs) -> Tensor:
    """Eq. 4 averaged over every pair of patch indices, for P >= 2 patches per image.

    With P = 2 this is exactly :func:`spatial_contrastive_loss`. With more, each pair (p, q), p < q,
    is one Eq. 4 problem: every pair of patches from the same image is a positive.

    Args:
        patches: Shape (N, P, D).
        **kwargs: Passed to :func:`spatial_contrastive_loss`.

    Returns:
        A scalar tensor.
    """
    num_patches = patches.shape[1]
    if num_patches < 2:
        raise ValueError(f"need at least 2 patches per image, got {num_patches}")
    pairs = [(p, q) for p in range(num_patches) for q in range(p + 1, num_patches)]
    losses = [spatial_contrastive_loss(patches[:, p], patches[:, q], **kwargs) for p, q in pairs]
    return torch.stack(losses).mean()


class PatchProjector(nn.Module):
    """A small MLP applied to every feature-map cell: a 1x1-conv MLP, run on sampled cells only.

    A 1x1 conv on the whole map followed by sampling equals sampling then a per-cell Linear, and the
    latter touches only the sampled cells. Used by the loss only; never part of an exported backbone.

    Args:
        out_dim: Output channels per cell.
        hidden_dim: Hidden channels. ``in_channels`` is inferred at the first call (lazy), unless given.
    """

    def __init__(self, out_dim: int = 128, hidden_dim: int = 256, in_channels: int | None = None) -> None:
        super().__init__()
        first = nn.Linear(in_channels, hidden_dim) if in_channels else nn.LazyLinear(hidden_dim)
        self.mlp = nn.Sequential(first, nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, cells: Tensor) -> Tensor:
        """(..., C) -> (..., out_dim)."""
        return self.mlp(cells)


GatherFn = Callable[[Tensor], Tensor]


class SpatialContrastiveLoss(nn.Module):
    """Samples patches from a feature map and scores them with Eq. 4.

    Args:
        patch_size: Patch side, as an int (cells) or a float in (0, 1] (a fraction of the map side),
            or a (height, width) pair of either. The default, 0.55 of each side, covers about 30% of the
            map area, as on the paper's STL-10 and CIFAR-10.
        distance: ``"l2"`` (paper), ``"sqeuclidean"`` or ``"cosine"``.
        temperature: Divides distances before the softmax (paper: 1).
        symmetric: Average both softmax directions (paper: yes).
        pool: ``"flatten"`` (paper: the whole C x p x p block is the vector) or ``"mean"`` (average over the
            patch's cells, a C-vector).
        num_patches: Patches per image (paper: 2). Every pair from one image is a positive.
        min_offset: Minimum Chebyshev distance, in cells, between the top-left corners of two patches of
            the same image. 0 (paper) samples independently; ``"disjoint"`` forbids any overlap.
        projector: An optional :class:`PatchProjector` applied per cell before pooling.
        generator: An optional ``torch.Generator`` for the patch positions.
        gather_fn: Optional ``(N_local, P, D) -> (N_global, P, D)`` that gathers patch vectors from all
            processes (with gradient) so that every process contrasts against the global batch. The
            trainer sets it; see :func:`sclearn.distributed.all_gather_with_grad`.

    Shape:
        - Input: (B, C, H, W), B >= 2.
        - Output: scalar.
    """

    def __init__(
        self,
        patch_size: PatchSize = 0.55,
        *,
        distance: Distance = "l2",
        temperature: float = 1.0,
        symmetric: bool = True,
        pool: Pool = "flatten",
        num_patches: int = 2,
        min_offset: int | Literal["disjoint"] = 0,
        projector: PatchProjector | None = None,
        generator: torch.Generator | None = None,
        gather_fn: GatherFn | None = None,
    ) -> None:
        super().__init__()
        check_distance(distance)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_pool(pool)
        if num_patches < 2:
            raise ValueError(f"num_patches must be >= 2 (a positive pair), got {num_patches}")
        self.patch_size = patch_size
        self.distance = distance
        self.temperature = temperature
        self.symmetric = symmetric
        self.pool = pool
        self.num_patches = num_patches
        self.min_offset = min_offset
        self.projector = projector
        self.generator = generator
        self.gather_fn = gather_fn

    def sample(self, feature_map: Tensor) -> Tensor:
        """Patch vectors of a feature map: (B, C, H, W) -> (B, P, D)."""
        return sample_patches(
            feature_map,
            self.patch_size,
            num_patches=self.num_patches,
            pool=self.pool,
            min_offset=self.min_offset,
            cell_fn=self.projector,
            generator=self.generator,
        )

    def score(self, patches: Tensor) -> Tensor:
        """Eq. 4 on patch vectors (B, P, D), gathered across processes when ``gather_fn`` is set."""
        if self.gather_fn is not None:
            patches = self.gather_fn(patches)
        return multi_patch_contrastive_loss(
            patches, distance=self.distance, temperature=self.temperature, symmetric=self.symmetric
        )

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.score(self.sample(feature_map))

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, distance={self.distance!r}, temperature={self.temperature}, "
            f"symmetric={self.symmetric}, pool={self.pool!r}, num_patches={self.num_patches}, "
            f"min_offset={self.min_offset!r}"
        )


def paper_loss(patch_size: PatchSize = 0.55) -> SpatialContrastiveLoss:
    """The paper's exact choices: un-squared L2, T = 1, symmetric, two flattened patches, no projector."""
    return SpatialContrastiveLoss(patch_size, distance="l2", temperature=1.0, symmetric=True, pool="flatten")


__all__: Sequence[str] = (
    "DISTANCES",
    "MIN_SC_BATCH",
    "PatchProjector",
    "SpatialContrastiveLoss",
    "check_distance",
    "check_sc_batch",
    "multi_patch_contrastive_loss",
    "pairwise_distance",
    "paper_loss",
    "spatial_contrastive_loss",
)
