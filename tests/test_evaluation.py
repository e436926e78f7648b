"""Probes and accuracy against hand-made answers and naive references."""

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sclearn.models  # noqa: F401  (registers the Table-4 nets)
from sclearn import evaluation
from sclearn.evaluation import (
    evaluate_accuracy,
    extract_features,
    knn_probe,
    linear_probe,
    probe_representation,
)


def _loader(n: int = 12, shape=(3, 32, 32), batch_size: int = 4, num_classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *shape, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def _blobs(n: int, d: int, classes: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 10
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, d, generator=g), y


# ----------------------------------------------------------------------------- kNN


def test_knn_toy_answer():
    # train points on the unit circle at angles 0, 10, 20 deg (class 0) and 180, 190 deg (class 1)
    ang = torch.tensor([0.0, 10.0, 20.0, 180.0, 190.0]).deg2rad()
    train = torch.stack([ang.cos(), ang.sin()], 1) * torch.tensor(
        [[1.0], [2.0], [3.0], [1.0], [5.0]]
    )  # scale-free
    train_y = torch.tensor([0, 0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.05], [-1.0, -0.1], [0.0, 1.0]])
    # third test point (90 deg) is closest to 20 deg (class 0) but k=5 votes are 3 vs 2 -> class 0 either way
    test_y = torch.tensor([0, 1, 0])
    assert knn_probe(train, train_y, test, test_y, k=1) == 1.0
    assert knn_probe(train, train_y, test, test_y, k=5) == 1.0
    assert knn_probe(train, train_y, test, 1 - test_y, k=1) == 0.0


def test_knn_temperature_weights_close_neighbours():
    # one very close class-1 neighbour against two far class-0 ones: a sharp temperature trusts the close one
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    train_y = torch.tensor([1, 0, 0])
    test, test_y = torch.tensor([[1.0, 0.3]]), torch.tensor([1])
    assert knn_probe(train, train_y, test, test_y, k=3, temperature=0.07) == 1.0
    assert knn_probe(train, train_y, test, test_y, k=3, temperature=100.0) == 0.0  # ~majority vote


def test_knn_k1_equals_naive_nearest_neighbour(monkeypatch):
    monkeypatch.setattr(evaluation, "_KNN_BLOCK_ELEMS", 100)  # force many test chunks
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(50, 8, generator=g), torch.randn(37, 8, generator=g)
    train_y, test_y = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (37,), generator=g)
    correct = 0
    for x, y in zip(test, test_y):
        cos = [float(torch.dot(x, t) / (x.norm() * t.norm())) for t in train]
        correct += int(train_y[max(range(len(cos)), key=cos.__getitem__)] == y)
    assert knn_probe(train, train_y, test, test_y, k=1) == pytest.approx(correct / len(test))


def test_knn_chunking_does_not_change_result(monkeypatch):
    x, y = _blobs(200, 16, 5, spread=8.0, seed=2)
    full = knn_probe(x[:150], y[:150], x[150:], y[150:], k=7)
    monkeypatch.setattr(evaluation, "_KNN_BLOCK_ELEMS", 150 * 3)  # 3 test rows per block
    assert knn_probe(x[:150], y[:150], x[150:], y[150:], k=7) == full


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_blobs():
    x, y = _blobs(600, 20, 4, spread=1.0, seed=3)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) >= 0.99


def test_linear_probe_random_labels_near_chance():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2000, 16, generator=g), torch.randint(0, 4, (2000,), generator=g)
    acc = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:])
    assert 0.18 < acc < 0.32


def test_linear_probe_uses_train_statistics_only():
    # a constant offset on the test set only must hurt: stats come from the training features
    x, y = _blobs(400, 10, 2, spread=1.0, seed=5)
    clean = linear_probe(x[:200], y[:200], x[200:], y[200:])
    shifted = linear_probe(x[:200], y[:200], x[200:] + 1e3, y[200:])
    assert clean >= 0.99 and shifted <= 0.6


def test_linear_probe_inside_no_grad():
    x, y = _blobs(200, 8, 2, spread=1.0, seed=6)
    with torch.no_grad():
        assert linear_probe(x[:100], y[:100], x[100:], y[100:]) >= 0.99


# ----------------------------------------------------------------------------- feature extraction


def test_extract_features_shapes_and_hook_removed():
    model = timm.create_model("sc_cifar10").train()
    loader = _loader(n=10, batch_size=4)
    sc = model.get_submodule(model.sc_layer)

    feats, labels = extract_features(model, loader, layer=model.sc_layer, pool=2)
    assert feats.shape == (10, 192 * 4) and feats.dtype == torch.float32
    assert labels.shape == (10,) and labels.dtype == torch.int64
    assert not sc._forward_hooks
    assert model.training  # restored

    assert extract_features(model, loader, layer=model.sc_layer, pool=None)[0].shape == (10, 192)
    assert extract_features(model, loader)[0].shape == (10, model.num_features)
    assert extract_features(model, loader, max_batches=2)[0].shape == (8, model.num_features)


def test_extract_features_matches_manual_pooling():
    model = timm.create_model("sc_mnist").eval()
    images = torch.randn(6, 1, 28, 28)
    loader = DataLoader(TensorDataset(images, torch.zeros(6, dtype=torch.long)), batch_size=4)
    feats, _ = extract_features(model, loader, layer="stages.1", pool=7)
    with torch.no_grad():
        want = model.stages[:2](images).flatten(1)  # (6, 64 * 7 * 7): pool 7 on a 7x7 map is the identity
    torch.testing.assert_close(feats, want)


def test_extract_features_plain_module_and_bad_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    loader = _loader(n=5, shape=(3, 8, 8))
    assert extract_features(model, loader)[0].shape == (5, 5)  # (B, D) output passes through
    assert extract_features(model, loader, layer="1", pool=3)[0].shape == (5, 4 * 9)
    with pytest.raises(ValueError, match="no module named"):
        extract_features(model, loader, layer="nope")


def test_probes_on_timm_resnet18():
    model = timm.create_model("resnet18", num_classes=10)
    train, test = _loader(n=16, batch_size=8, seed=0), _loader(n=8, batch_size=8, seed=1)
    out = probe_representation(model, "layer3", train, test, pool=2, k=5)
    assert out["feature_dim"] == 256 * 4
    assert 0.0 <= out["knn_top1"] <= 1.0 and 0.0 <= out["linear_top1"] <= 1.0
    assert not model.get_submodule("layer3")._forward_hooks
    assert probe_representation(model, None, train, test, k=5)["feature_dim"] == model.num_features


# ----------------------------------------------------------------------------- accuracy


class _Oracle(nn.Module):
    """Predicts the label stored in the image's first pixel."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()


def test_evaluate_accuracy_known_answer():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    images = torch.zeros(8, 1, 2, 2)
    images[:, 0, 0, 0] = labels.float()
    images[:2, 0, 0, 0] = 2  # two wrong predictions
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    assert evaluate_accuracy(_Oracle(), loader) == pytest.approx(6 / 8)


def test_evaluate_accuracy_table4_runs_and_restores_mode():
    model = timm.create_model("sc_mnist").train()
    acc = evaluate_accuracy(model, _loader(n=6, shape=(1, 28, 28)))
    assert 0.0 <= acc <= 1.0 and model.training
