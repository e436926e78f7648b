"""``sclearn.builders``: a TrainConfig's SC fields become the loss modules and the wrapper the Trainer trains."""

import pytest
import timm
import torch
from torch import nn

import sclearn  # noqa: F401  registers sc_cifar10
from sclearn import MultiLayerSC, PatchProjector, paper_loss
from sclearn.builders import build_sc_losses, build_sc_model
from sclearn.config import TrainConfig


def test_losses_follow_every_sc_field_of_the_config():
    cfg = TrainConfig(layers=("layer2", "layer3"), layer_patch_sizes=(2, 0.5), distance="cosine", temperature=0.3,
                      pool="mean", num_patches=3, min_offset=1, projector_dim=8)
    losses = build_sc_losses(cfg, cfg.layers)
    assert list(losses) == ["layer2", "layer3"]
    assert [loss.patch_size for loss in losses.values()] == [2, 0.5]
    for loss in losses.values():
        assert (loss.distance, loss.temperature, loss.pool, loss.num_patches, loss.min_offset) == (
            "cosine", 0.3, "mean", 3, 1)
        assert isinstance(loss.projector, PatchProjector) and loss.projector.mlp[2].out_features == 8
    assert losses["layer2"].projector is not losses["layer3"].projector  # layers differ in channels


def test_default_config_gives_the_papers_loss():
    (loss,) = build_sc_losses(TrainConfig(), ["layer3"]).values()
    assert loss.extra_repr() == paper_loss(0.55).extra_repr() and loss.projector is None


def test_model_hooks_the_table4_nets_sc_layer_when_layers_is_empty():
    net = timm.create_model("sc_cifar10", num_classes=10)
    model = build_sc_model(TrainConfig(layers=(), layer_weights=None, patch_size=3), net)
    assert isinstance(model, MultiLayerSC) and model.backbone is net
    assert model.layers == (net.sc_layer,) and model.loss_for(net.sc_layer).patch_size == 3
    out = model(torch.randn(2, 3, 32, 32))
    assert set(out.sc_losses) == {net.sc_layer}


def test_model_weights_come_from_layer_weights():
    cfg = TrainConfig(layers=("layer2", "layer3"), layer_weights=(0.5, 2.0))
    model = build_sc_model(cfg, timm.create_model("resnet18", num_classes=10))
    assert model.weights == {"layer2": 0.5, "layer3": 2.0}


def test_errors():
    with pytest.raises(ValueError, match="names no sc_layer; set layers="):
        build_sc_model(TrainConfig(layers=()), nn.Sequential(nn.Conv2d(3, 4, 3)))
    net = timm.create_model("sc_cifar10", num_classes=10)
    with pytest.raises(ValueError, match=r"2 layer_patch_sizes for 1 layers \['stages.1'\]"):
        build_sc_model(TrainConfig(layers=(), layer_patch_sizes=(3, 4)), net)
