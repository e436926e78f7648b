"""Settings that would silently mean nothing, or fail only at the first step, are refused up front."""

import math
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from sclearn import MultiLayerSC, SpatialContrastiveLoss
from sclearn.backbones import export_backbone
from sclearn.config import TrainConfig
from sclearn.probe import probe_checkpoint
from sclearn.train import Trainer
from tests.test_train import tiny_config

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(temperature=INF), "TrainConfig.temperature must be a finite number, got inf"),  # SC = log N, no gradient
    (dict(lr=NAN), "TrainConfig.lr must be a finite number, got nan"),
    (dict(lr=INF), "TrainConfig.lr must be a finite number, got inf"),
    (dict(pretrain_lr=NAN), "TrainConfig.pretrain_lr must be a finite number, got nan"),
    (dict(temperature=NAN), "TrainConfig.temperature must be a finite number, got nan"),
    (dict(sc_weight=NAN), "TrainConfig.sc_weight must be a finite number, got nan"),
    (dict(layer_weights=(NAN,)), "TrainConfig.layer_weights must hold finite numbers, got [nan]"),
    (dict(weight_decay=-1e-4), "TrainConfig.weight_decay must be >= 0, got -0.0001"),
    (dict(layer_weights=(-1.0,)), "TrainConfig.layer_weights must be >= 0, got [-1.0]"),
    (dict(translate=-2), "TrainConfig.translate must be >= 0, got -2"),
    (dict(warmup_steps=-1), "TrainConfig.warmup_steps must be >= 0, got -1"),
    (dict(knn_k=0), "TrainConfig.knn_k must be >= 1, got 0"),
    (dict(knn_k=-3), "TrainConfig.knn_k must be >= 1, got -3"),
    (dict(image_size=0), "TrainConfig.image_size must be >= 1 or None, got 0"),
    (dict(image_size=-32), "TrainConfig.image_size must be >= 1 or None, got -32"),
    (dict(seed=-1), "TrainConfig.seed must lie in [0, 2**32), got -1"),
    (dict(seed=2**32), "TrainConfig.seed must lie in [0, 2**32), got 4294967296"),
    (dict(split_seed=-5), "TrainConfig.split_seed must lie in [0, 2**32), got -5"),
    (dict(num_patches=2.5), "TrainConfig.num_patches must be an integer, got 2.5"),
    (dict(lr=0.0), "TrainConfig.lr must be > 0, got 0.0"),
    (dict(patch_size=NAN), "patch size nan: give a number of cells"),
    (dict(min_offset=-1), "TrainConfig.min_offset must be an int >= 0 or 'disjoint', got -1"),
])
def test_config_refuses_settings_that_mean_nothing(overrides, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(layers=("layer2",), **overrides)
    assert str(info.value).startswith(message)


def test_model_kwargs_must_be_a_dict():
    with pytest.raises(TypeError, match="TrainConfig.model_kwargs must be a dict, got 'img_size=32'"):
        TrainConfig(model_kwargs="img_size=32")


def test_valid_edge_values_are_accepted():
    TrainConfig(seed=0, split_seed=2**32 - 1, weight_decay=0.0, translate=0, warmup_steps=0, knn_k=1, image_size=1,
                layer_weights=(0.0,), layers=("layer2",), num_patches=3, sc_weight=0.0, lr=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [(dict(k=0), "k=0: give an integer >= 1"),
                                                   (dict(pool=0), "pool=0: give an integer >= 1"),
                                                   (dict(max_train=0), "max_train=0: give an integer >= 1")])
def test_probe_refuses_k_pool_and_max_train_below_one_before_reading_anything(overrides, message):
    with pytest.raises(ValueError, match=message):
        probe_checkpoint("/nonexistent/run", **overrides)  # checked before the source is even looked at


# -- set-up: one dry forward pass on the example batch ------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    (dict(patch_size=8), "patch height of 8 cells is larger than the feature map's height of 7 cells"),
    (dict(patch_size=3, min_offset=5), "cannot be placed min_offset=5 apart on a 7x7 map"),
    (dict(patch_size=3, min_offset="disjoint", num_patches=5), "could not place 5 patches"),
    (dict(patch_size=7), "its 7x7 patch covers the whole 7x7 feature map, so both patches of an image are identical"),
])
def test_patch_settings_are_checked_against_the_hooked_map_at_set_up(idx_dir, tmp_path, overrides, message):
    # sc_mnist's stages.1 map is 7x7: a Trainer that is built is one that can train (here: fails before fit).
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_config(idx_dir, tmp_path, mode="joint", **overrides))


def test_a_1x1_map_is_refused_naming_its_size(idx_dir, tmp_path):
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"layer 'layer4' is degenerate: .*whole 1x1 feature map.*hook an earlier"):
        MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer4"])(images)
    with pytest.raises(ValueError, match=r"'layer4' is degenerate: .*1x1 feature map"):  # resnet18 at 32 px
        Trainer(tiny_config(idx_dir, tmp_path, mode="pretrain", backbone="resnet18", layers=("layer4",),
                            image_size=32))


def test_a_module_that_runs_twice_per_forward_is_refused():
    net = torchvision.models.resnet18(num_classes=10)  # each BasicBlock calls its one self.relu twice
    with pytest.raises(ValueError, match=r"'layer1\.0\.relu' runs more than once per forward pass.*runs once, e\.g\. "
                                         r"its parent 'layer1\.0'"):
        MultiLayerSC(net, layers=["layer1.0.relu"])(torch.randn(2, 3, 32, 32))
    out = MultiLayerSC(net, layers=["layer1.0"])(torch.randn(2, 3, 32, 32))  # the suggestion works
    assert set(out.sc_losses) == {"layer1.0"}


def test_double_wrapping_is_refused_at_construction():
    inner = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"])
    with pytest.raises(ValueError, match="already holds a MultiLayerSC"):
        MultiLayerSC(inner, layers=["backbone.layer2"])
    with pytest.raises(ValueError, match="already holds a MultiLayerSC"):  # also when nested deeper
        MultiLayerSC(torch.nn.Sequential(inner), layers=["0.backbone.layer2"])


def test_dry_run_leaves_rng_and_batch_norm_statistics_untouched():
    net = timm.create_model("resnet18", num_classes=10)
    model = MultiLayerSC(net, layers=["layer3"], loss=SpatialContrastiveLoss(0.5))
    bn = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    shapes = model.check_for_training(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.rand(3), before)
    assert shapes == {"layer3": (256, 2, 2)}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in bn.items())
    assert model.training


def write_backbone(path: Path, architecture: str, in_chans: int = 1) -> Path:
    net = timm.create_model(architecture, num_classes=10, in_chans=in_chans)
    return export_backbone(net, path, {"architecture": architecture, "in_chans": in_chans})


@pytest.mark.parametrize("case", ["missing", "architecture", "channels", "truncated"])
def test_init_from_is_checked_before_any_data_loads(tmp_path, case):
    source = tmp_path / "backbone.safetensors"
    if case == "architecture":
        write_backbone(source, "sc_cifar10", in_chans=1)
    elif case == "channels":
        write_backbone(source, "sc_mnist", in_chans=3)
    elif case == "truncated":
        write_backbone(source, "sc_mnist")
        source.write_bytes(source.read_bytes()[:1000])
    message = {
        "missing": "init_from='.*backbone.safetensors' does not exist",
        "architecture": r"holds weights of 'sc_cifar10' \(says .*backbone.json\), but backbone='sc_mnist'. Set "
                        r"backbone='sc_cifar10'",
        "channels": r"was trained with channels=3 .* but channels=1",
        "truncated": "backbone.safetensors is truncated or corrupt",
    }[case]
    # The data source does not exist: reaching it would raise a DataError instead.
    cfg = tiny_config(Path("/nonexistent"), tmp_path, mode="finetune", init_from=str(source), data="idx:/nonexistent")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        Trainer(cfg)


def test_init_from_a_checkpoint_reads_its_runs_architecture(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "ckpt-000000-step-1"
    ckpt.mkdir(parents=True)
    net = timm.create_model("sc_cifar10", num_classes=10, in_chans=1)
    save_file({f"backbone.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(ckpt / "model.safetensors"))
    TrainConfig(backbone="sc_cifar10", channels=1, output_dir=str(run)).save(run / "config.json")
    cfg = tiny_config(Path("/nonexistent"), tmp_path, mode="finetune", init_from=str(ckpt), data="idx:/nonexistent",
                      output_dir=str(tmp_path / "ft"))
    with pytest.raises(ValueError, match=r"holds weights of 'sc_cifar10' \(says .*run/config.json\)"):
        Trainer(cfg)
