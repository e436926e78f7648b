"""Vectorised patch sampling from feature maps.

The paper samples patches "directly from feature space": each patch is a p x p window of cells of a
(C, H, W) map, at a uniformly random position. Here every image of a batch gets ``P`` windows at once,
gathered with one advanced-indexing call (no Python loop over the batch).

Axis legend: B = batch, P = patches per image, C = channels, (H, W) = map size, (ph, pw) = patch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from einops import rearrange, reduce
from torch import Tensor

Side = int | float
PatchSize = Side | tuple[Side, Side]
MinOffset = int | Literal["disjoint"]
Pool = Literal["flatten", "mean"]
POOLS: tuple[str, ...] = get_args(Pool)

_MAX_REJECTION_ROUNDS = 1000


def check_pool(pool: str) -> None:
    """Raise ``ValueError`` unless ``pool`` is one of :data:`POOLS`."""
    if pool not in POOLS:
        raise ValueError(f"pool must be {' or '.join(map(repr, POOLS))}, got {pool!r}")


def _resolve_side(side: Side, map_side: int, axis: str) -> int:
    if isinstance(side, bool) or not isinstance(side, (int, float)):
        raise TypeError(f"patch {axis} must be an int (cells) or a float in (0, 1], got {side!r}")
    if isinstance(side, float):
        if not 0.0 < side <= 1.0:
            raise ValueError(
                f"a fractional patch {axis} must lie in (0, 1] (a fraction of the map side), got {side}"
            )
        cells = max(1, round(side * map_side))
    else:
        cells = side
        if cells < 1:
            raise ValueError(f"patch {axis} must be at least 1 cell, got {cells}")
    if cells > map_side:
        raise ValueError(
            f"patch {axis} of {cells} cells is larger than the feature map's {axis} of {map_side} cells. "
            f"Use a smaller patch_size (e.g. a fraction such as 0.5) or hook an earlier, larger layer."
        )
    return cells


def resolve_patch_size(patch_size: PatchSize, height: int, width: int) -> tuple[int, int]:
    """Patch size in cells for a (height, width) map.

    Args:
        patch_size: An int (cells), a float in (0, 1] (a fraction of the map side, rounded, at least 1
            cell), or a (height, width) pair of those.
        height: Map height in cells.
        width: Map width in cells.

    Returns:
        ``(ph, pw)``.

    Raises:
        ValueError: When the patch is larger than the map, naming both sizes.
    """
    ph, pw = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    return _resolve_side(ph, height, "height"), _resolve_side(pw, width, "width")


def _violates_offset(tops: Tensor, lefts: Tensor, patch_hw: tuple[int, int], min_offset: MinOffset) -> Tensor:
    """(B,) True where two patches of an image are closer than ``min_offset`` allows."""
    dy = (tops[:, :, None] - tops[:, None, :]).abs()  # (B, P, P)
    dx = (lefts[:, :, None] - lefts[:, None, :]).abs()  # (B, P, P)
    if min_offset == "disjoint":
        close = (dy < patch_hw[0]) & (dx < patch_hw[1])  # windows overlap
    else:
        close = torch.maximum(dy, dx) < min_offset
    num_patches = tops.shape[1]
    off_diagonal = ~torch.eye(num_patches, dtype=torch.bool, device=tops.device)
    return (close & off_diagonal).flatten(1).any(dim=1)


def _check_offset_feasible(
    map_hw: tuple[int, int], patch_hw: tuple[int, int], min_offset: MinOffset
) -> None:
    span_h, span_w = map_hw[0] - patch_hw[0], map_hw[1] - patch_hw[1]  # largest possible offsets
    if min_offset == "disjoint":
        feasible = span_h >= patch_hw[0] or span_w >= patch_hw[1]
    elif isinstance(min_offset, int) and not isinstance(min_offset, bool) and min_offset >= 0:
        feasible = max(span_h, span_w) >= min_offset
    else:
        raise ValueError(f"min_offset must be an int >= 0 or 'disjoint', got {min_offset!r}")
    if not feasible:
        raise ValueError(
            f"two {patch_hw[0]}x{patch_hw[1]} patches cannot be placed min_offset={min_offset!r} apart on a "
            f"{map_hw[0]}x{map_hw[1]} map. Use smaller patches, a smaller min_offset, or a larger map."
        )


def sample_patch_positions(
    batch_size: int,
    num_patches: int,
    map_hw: tuple[int, int],
    patch_hw: tuple[int, int],
    *,
    min_offset: MinOffset = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-left corners of ``num_patches`` windows per image.

    With ``min_offset=0`` the positions are uniform and independent over all ``(H - ph + 1) x (W - pw + 1)``
    corners. Otherwise an image's whole set of positions is redrawn until it satisfies the constraint,
    which keeps the draw uniform over the allowed sets.

    Returns:
        ``(tops, lefts)``, each (B, P) int64 on ``device``.
    """
    if min_offset != 0:
        _check_offset_feasible(map_hw, patch_hw, min_offset)
    # Draw on the generator's device (a CPU generator cannot drive CUDA sampling), then move. Rejection looks
    # at every round's result on the host, so without a generator it draws on the CPU: no device syncs.
    if generator is not None:
        draw_device = generator.device
    else:
        draw_device = "cpu" if min_offset != 0 else device
    n_top, n_left = map_hw[0] - patch_hw[0] + 1, map_hw[1] - patch_hw[1] + 1

    def draw(n: int) -> tuple[Tensor, Tensor]:
        shape = (n, num_patches)
        top = torch.randint(0, n_top, shape, generator=generator, device=draw_device)
        left = torch.randint(0, n_left, shape, generator=generator, device=draw_device)
        return top, left

    tops, lefts = draw(batch_size)
    if min_offset != 0:
        for _ in range(_MAX_REJECTION_ROUNDS):
            bad = _violates_offset(tops, lefts, patch_hw, min_offset)
            if not bad.any():
                break
            tops[bad], lefts[bad] = draw(int(bad.sum()))
        else:
            raise ValueError(
                f"could not place {num_patches} patches of {patch_hw} with min_offset={min_offset!r} on a "
                f"{map_hw} map after {_MAX_REJECTION_ROUNDS} rounds; lower num_patches or min_offset."
            )
    return tops.to(device), lefts.to(device)


def gather_patches(feature_map: Tensor, tops: Tensor, lefts: Tensor, patch_hw: tuple[int, int]) -> Tensor:
    """Cut windows out of a feature map in one advanced-indexing call.

    Args:
        feature_map: Shape (B, C, H, W).
        tops: Shape (B, P), window rows.
        lefts: Shape (B, P), window columns.
        patch_hw: ``(ph, pw)``.

    Returns:
        Shape (B, P, ph, pw, C). A copy, so later in-place ops on the map cannot change it.
    """
    b, _, _, _ = feature_map.shape
    ph, pw = patch_hw
    cells = feature_map.permute(0, 2, 3, 1)  # (B, H, W, C), a view
    dev = feature_map.device
    rows = tops[:, :, None] + torch.arange(ph, device=dev)  # (B, P, ph)
    cols = lefts[:, :, None] + torch.arange(pw, device=dev)  # (B, P, pw)
    batch = torch.arange(b, device=dev)[:, None, None, None]  # (B, 1, 1, 1)
    return cells[batch, rows[:, :, :, None], cols[:, :, None, :]]  # (B, P, ph, pw, C)


def sample_patches(
    feature_map: Tensor,
    patch_size: PatchSize,
    *,
    num_patches: int = 2,
    pool: Pool = "flatten",
    min_offset: MinOffset = 0,
    cell_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``num_patches`` windows per image and turn each into a vector.

    Args:
        feature_map: Shape (B, C, H, W).
        patch_size: See :func:`resolve_patch_size`.
        num_patches: Windows per image.
        pool: ``"flatten"`` gives D = ph * pw * C (the paper's); ``"mean"`` averages the cells, D = C.
        min_offset: See :func:`sample_patch_positions`.
        cell_fn: Optional per-cell map (..., C) -> (..., C'), e.g. a projector, applied before pooling.
        generator: Optional ``torch.Generator``.

    Returns:
        Shape (B, P, D).
    """
    if feature_map.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(feature_map.shape)}")
    check_pool(pool)
    b, _, h, w = feature_map.shape
    patch_hw = resolve_patch_size(patch_size, h, w)
    tops, lefts = sample_patch_positions(
        b, num_patches, (h, w), patch_hw, min_offset=min_offset, generator=generator, device=feature_map.device
    )
    cells = gather_patches(feature_map, tops, lefts, patch_hw)  # (B, P, ph, pw, C)
    if cell_fn is not None:
        cells = cell_fn(cells)  # (B, P, ph, pw, C')
    if pool == "mean":
        return reduce(cells, "b p h w c -> b p c", "mean")
    return rearrange(cells, "b p h w c -> b p (h w c)")
