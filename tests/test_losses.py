"""The SC loss against an independent loop version of Eq. 4, hand-computed values and its properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sclearn import SpatialContrastiveLoss, multi_patch_contrastive_loss, spatial_contrastive_loss
from tests.reference import naive_eq4

DISTANCES = ["l2", "sqeuclidean", "cosine"]


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_matches_naive_eq4(distance, symmetric, temperature):
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = spatial_contrastive_loss(f1, f2, distance=distance, temperature=temperature, symmetric=symmetric)
    want = naive_eq4(f1.double(), f2.double(), distance, temperature, symmetric)
    assert got.item() == pytest.approx(want, abs=1e-5, rel=1e-5)


def test_hand_computed_two_images():
    # f1 = [(0,0), (3,4)], f2 = [(0,0), (0,0)]: Dist = [[0, 0], [5, 5]].
    f1 = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    f2 = torch.zeros(2, 2)
    rows = 0.5 * (math.log(2) + math.log(2))  # both rows have equal distances
    col0 = -math.log(math.exp(0) / (math.exp(0) + math.exp(-5)))  # column 0: [0, 5], target 0
    col1 = -math.log(math.exp(-5) / (math.exp(0) + math.exp(-5)))  # column 1: [0, 5], target 1
    want = 0.5 * (rows + 0.5 * (col0 + col1))
    assert spatial_contrastive_loss(f1, f2).item() == pytest.approx(want, abs=1e-6)


def test_large_offset_features_keep_precision():
    # Post-ReLU features share a large offset; the Gram form must not lose the small differences.
    g = torch.Generator().manual_seed(1)
    base = 100.0 + torch.rand(1, 64, generator=g)
    f1 = base + 0.01 * torch.randn(6, 64, generator=g)
    f2 = base + 0.01 * torch.randn(6, 64, generator=g)
    want = naive_eq4(f1.double(), f2.double())
    assert spatial_contrastive_loss(f1, f2).item() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradcheck_float64(distance):
    g = torch.Generator().manual_seed(2)
    f1 = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    f2 = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)


    def fn(a, b):
        return spatial_contrastive_loss(a, b, distance=distance)

    assert fn(f1, f2).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (f1, f2))


def test_grad_finite_at_zero_distance():
    f = torch.randn(5, 8, requires_grad=True)
    for distance in DISTANCES:
        loss = spatial_contrastive_loss(f, f, distance=distance)  # every positive distance is exactly 0
        (grad,) = torch.autograd.grad(loss, f)
        assert torch.isfinite(grad).all(), distance
    same = torch.ones(4, 3, requires_grad=True)  # all distances exactly 0
    (grad,) = torch.autograd.grad(spatial_contrastive_loss(same, same), same)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("n", [2, 5, 16])
def test_log_n_when_all_features_equal(n):
    f = torch.full((n, 10), 0.3)
    for distance in ["l2", "sqeuclidean"]:
        assert spatial_contrastive_loss(f, f.clone(), distance=distance).item() == pytest.approx(math.log(n), abs=1e-5)


def test_near_zero_when_well_separated():
    f1 = 100.0 * torch.eye(6)  # images far apart, positives identical
    assert spatial_contrastive_loss(f1, f1.clone()).item() < 1e-6


def test_permutation_invariance():
    g = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    perm = torch.randperm(9, generator=g)
    a = spatial_contrastive_loss(f1, f2)
    b = spatial_contrastive_loss(f1[perm], f2[perm])
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_symmetric_is_average_of_directions():
    g = torch.Generator().manual_seed(4)
    f1, f2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    fwd = spatial_contrastive_loss(f1, f2, symmetric=False)
    bwd = spatial_contrastive_loss(f2, f1, symmetric=False)
    sym = spatial_contrastive_loss(f1, f2, symmetric=True)
    assert sym.item() == pytest.approx(0.5 * (fwd + bwd).item(), abs=1e-6)


def test_fp32_under_autocast():
    f1, f2 = torch.randn(6, 4).bfloat16(), torch.randn(6, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = spatial_contrastive_loss(f1, f2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_eq4(f1.double(), f2.double()), abs=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 images"):
        spatial_contrastive_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        spatial_contrastive_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="unknown distance"):
        spatial_contrastive_loss(torch.randn(3, 4), torch.randn(3, 4), distance="manhattan")
    with pytest.raises(ValueError, match="temperature"):
        SpatialContrastiveLoss(temperature=0.0)


def test_multi_patch_reduces_to_pair_and_averages_pairs():
    g = torch.Generator().manual_seed(5)
    p = torch.randn(6, 3, 4, generator=g)
    pair = multi_patch_contrastive_loss(p[:, :2])
    assert pair.item() == pytest.approx(spatial_contrastive_loss(p[:, 0], p[:, 1]).item(), abs=1e-6)
    want = sum(naive_eq4(p[:, a].double(), p[:, b].double()) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3
    assert multi_patch_contrastive_loss(p).item() == pytest.approx(want, abs=1e-5)


def test_module_on_feature_map_end_to_end():
    # A whole-map patch (patch_size=1.0) makes both patches identical: the loss is that of f vs f.
    fmap = torch.randn(4, 3, 5, 5)
    loss = SpatialContrastiveLoss(patch_size=1.0)(fmap)
    want = naive_eq4(fmap.flatten(1).double(), fmap.flatten(1).double())
    assert loss.item() == pytest.approx(want, abs=1e-4)


# --- property-based -----------------------------------------------------------------------------------
features = st.integers(min_value=2, max_value=8).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=1, max_value=6), st.integers(0, 2**31 - 1))
)


@settings(max_examples=40, deadline=None)
@given(features, st.sampled_from(DISTANCES))
def test_property_nonnegative_and_permutation_invariant(spec, distance):
    n, d, seed = spec
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    loss = spatial_contrastive_loss(f1, f2, distance=distance)
    assert loss.item() >= -1e-6
    perm = torch.randperm(n, generator=g)
    assert spatial_contrastive_loss(f1[perm], f2[perm], distance=distance).item() == pytest.approx(
        loss.item(), abs=1e-4
    )


@settings(max_examples=30, deadline=None)
@given(features, st.floats(min_value=0.1, max_value=10.0))
def test_property_l2_scaling_equals_temperature(spec, scale):
    # Dist(s f1, s f2) = s Dist(f1, f2), so scaling features by s equals temperature 1/s.
    n, d, seed = spec
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    scaled = spatial_contrastive_loss(scale * f1, scale * f2)
    tempered = spatial_contrastive_loss(f1, f2, temperature=1.0 / scale)
    assert scaled.item() == pytest.approx(tempered.item(), rel=1e-3, abs=1e-3)


@settings(max_examples=30, deadline=None)
@given(features)
def test_property_cosine_scale_invariant(spec):
    n, d, seed = spec
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a = spatial_contrastive_loss(f1, f2, distance="cosine")
    b = spatial_contrastive_loss(3.7 * f1, 0.2 * f2, distance="cosine")
    assert a.item() == pytest.approx(b.item(), abs=1e-4)
