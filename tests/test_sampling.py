"""Patch sampling: shapes, content, reachability, sizes, overlap control and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sclearn import SpatialContrastiveLoss, resolve_patch_size, sample_patch_positions, sample_patches
from sclearn.sampling import gather_patches


def position_map(b: int, h: int, w: int) -> torch.Tensor:
    """A (B, 2, H, W) map whose cells hold their own (row, col): patch content reveals its position."""
    rows = torch.arange(h).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.arange(w).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([rows, cols], dim=1).float()


def test_output_shapes():
    fmap = torch.randn(6, 16, 7, 9)
    assert sample_patches(fmap, 3).shape == (6, 2, 3 * 3 * 16)
    assert sample_patches(fmap, (2, 4), num_patches=4).shape == (6, 4, 2 * 4 * 16)
    assert sample_patches(fmap, 3, pool="mean").shape == (6, 2, 16)


def test_gathered_content_equals_slices():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(5, 3, 6, 8, generator=g)
    tops, lefts = sample_patch_positions(5, 3, (6, 8), (2, 3), generator=g)
    cells = gather_patches(fmap, tops, lefts, (2, 3))
    for b in range(5):
        for p in range(3):
            t, l = tops[b, p].item(), lefts[b, p].item()
            want = fmap[b, :, t : t + 2, l : l + 3].permute(1, 2, 0)  # (ph, pw, C)
            assert torch.equal(cells[b, p], want)


def test_every_position_reachable_for_every_image_and_patch():
    # The known Keras port only ever sampled the diagonal: check all (row, col) corners appear, per patch
    # index and per image slot, through the full sample_patches path.
    b, h, w, p = 4, 5, 6, 2
    g = torch.Generator().manual_seed(1)
    seen = torch.zeros(b, p, h - 1, w - 2, dtype=torch.bool)  # corners for a 2x3 patch
    for _ in range(400):
        out = sample_patches(position_map(b, h, w), (2, 3), num_patches=p, pool="flatten", generator=g)
        # flatten order is (h, w, c): the first cell's (row, col) is the patch's top-left corner.
        corner = out[:, :, :2].long()  # (B, P, 2)
        for i in range(b):
            for j in range(p):
                seen[i, j, corner[i, j, 0], corner[i, j, 1]] = True
    assert seen.all()


def test_positions_uniform_chi_square():
    g = torch.Generator().manual_seed(2)
    tops, lefts = sample_patch_positions(20000, 2, (5, 5), (2, 2), generator=g)
    counts = torch.bincount((tops * 4 + lefts).flatten(), minlength=16).float()
    expected = counts.sum() / 16
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 50  # 15 dof: p ~ 1e-5 at 50


def test_positions_independent_between_patches():
    g = torch.Generator().manual_seed(3)
    tops, _ = sample_patch_positions(20000, 2, (6, 6), (3, 3), generator=g)
    same = (tops[:, 0] == tops[:, 1]).float().mean().item()
    assert same == pytest.approx(1 / 4, abs=0.02)  # 4 possible rows, independent draws


def test_int_and_fraction_patch_sizes():
    assert resolve_patch_size(3, 7, 7) == (3, 3)
    assert resolve_patch_size(0.55, 7, 7) == (4, 4)  # round(3.85)
    assert resolve_patch_size(0.55, 8, 8) == (4, 4)  # 0.55^2 ~ 30% of the area, as in the paper
    assert resolve_patch_size(1.0, 4, 6) == (4, 6)
    assert resolve_patch_size((2, 0.5), 7, 8) == (2, 4)
    assert resolve_patch_size(0.01, 7, 7) == (1, 1)  # never 0 cells


def test_patch_errors():
    with pytest.raises(ValueError, match=r"8 cells is larger than the feature map's height of 7"):
        resolve_patch_size(8, 7, 7)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        resolve_patch_size(1.5, 7, 7)
    with pytest.raises(ValueError, match="at least 1 cell"):
        resolve_patch_size(0, 7, 7)
    with pytest.raises(TypeError):
        resolve_patch_size("big", 7, 7)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sample_patches(torch.randn(3, 4, 5), 2)
    with pytest.raises(ValueError, match="larger than the feature map"):
        SpatialContrastiveLoss(patch_size=9)(torch.randn(4, 2, 7, 7))


def test_min_offset_and_disjoint():
    g = torch.Generator().manual_seed(4)
    tops, lefts = sample_patch_positions(2000, 2, (7, 7), (3, 3), min_offset=3, generator=g)
    cheb = torch.maximum((tops[:, 0] - tops[:, 1]).abs(), (lefts[:, 0] - lefts[:, 1]).abs())
    assert (cheb >= 3).all()
    tops, lefts = sample_patch_positions(2000, 3, (8, 8), (3, 3), min_offset="disjoint", generator=g)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        overlap = ((tops[:, a] - tops[:, b]).abs() < 3) & ((lefts[:, a] - lefts[:, b]).abs() < 3)
        assert not overlap.any()
    with pytest.raises(ValueError, match="cannot be placed"):
        sample_patch_positions(4, 2, (5, 5), (3, 3), min_offset="disjoint")
    with pytest.raises(ValueError, match="min_offset"):
        sample_patch_positions(4, 2, (5, 5), (2, 2), min_offset=-1)


def test_generator_makes_sampling_reproducible():
    fmap = torch.randn(8, 4, 7, 7)
    a = sample_patches(fmap, 3, generator=torch.Generator().manual_seed(7))
    b = sample_patches(fmap, 3, generator=torch.Generator().manual_seed(7))
    c = sample_patches(fmap, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradient_reaches_only_sampled_cells():
    fmap = torch.randn(3, 2, 6, 6, requires_grad=True)
    out = sample_patches(fmap, 2, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    touched = (fmap.grad != 0).any(dim=1)  # (B, H, W)
    assert touched.flatten(1).sum(1).le(8).all() and touched.flatten(1).sum(1).ge(4).all()


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 5), st.integers(1, 9), st.integers(1, 9), st.integers(2, 4), st.integers(0, 2**31 - 1),
    st.floats(0.05, 1.0),
)
def test_property_patches_inside_map(b, h, w, p, seed, frac):
    ph, pw = resolve_patch_size(frac, h, w)
    tops, lefts = sample_patch_positions(b, p, (h, w), (ph, pw), generator=torch.Generator().manual_seed(seed))
    assert (tops >= 0).all() and (lefts >= 0).all()
    assert (tops + ph <= h).all() and (lefts + pw <= w).all()
