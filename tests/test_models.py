"""The Table-4 nets: shapes, SC-layer maps, feature_info, parameter counts, timm loading."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import sclearn.models
from sclearn.models import TABLE4, Table4Net

NAMES = sorted(TABLE4)


def _input(name: str, batch: int = 2, in_chans: int | None = None) -> torch.Tensor:
    c, h, w = TABLE4[name]["input_size"]
    return torch.randn(batch, in_chans or c, h, w)


def _hooked_shapes(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))
        )
        for n in names
    ]
    model(x)
    for h in handles:
        h.remove()
    return shapes


@pytest.mark.parametrize("name", NAMES)
def test_output_and_sc_map_shapes(name):
    model = timm.create_model(name, num_classes=10).eval()
    facts = TABLE4[name]
    assert isinstance(model, Table4Net)
    assert model.sc_layer == facts["sc_layer"]
    assert model.pretrained_cfg["input_size"] == facts["input_size"]
    x = _input(name)
    shapes = _hooked_shapes(model, [model.sc_layer], x)
    assert shapes[model.sc_layer] == (2, *facts["sc_map_shape"])
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_matches_forward(name):
    model = timm.create_model(name).eval()
    x = _input(name)
    info = model.feature_info
    assert [f["module"] for f in info] == [f"stages.{i}" for i in range(len(model.stages))]
    assert model.sc_layer in [f["module"] for f in info]
    shapes = _hooked_shapes(model, [f["module"] for f in info], x)
    h = x.shape[-1]
    for f in info:
        _b, c, fh, fw = shapes[f["module"]]
        assert c == f["num_chs"]
        assert fh == fw == h // f["reduction"]
    assert info[-1]["num_chs"] == model.num_features == TABLE4[name]["num_features"]
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", NAMES)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    outs = model(_input(name))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_docs(name):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TABLE4[name]["params"]
    assert f"{TABLE4[name]['params']:,}" in sclearn.models.table4.__doc__


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head", ["paper", "linear"])
def test_reset_classifier(name, head):
    model = timm.create_model(name, head=head).eval()
    x = _input(name)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


def test_paper_head_options():
    paper = timm.create_model("sc_mnist").eval()
    assert isinstance(paper.head.act, torch.nn.ReLU)  # Table 4: "1x1 conv. 10 BN ReLU"
    assert (paper(_input("sc_mnist")) >= 0).all()
    no_act = timm.create_model("sc_mnist", logit_act=False)
    assert isinstance(no_act.head.act, torch.nn.Identity)
    cifar = timm.create_model("sc_cifar10")
    assert isinstance(cifar.head.act, torch.nn.LeakyReLU) and cifar.head.act.negative_slope == 0.1
    linear = timm.create_model("sc_cifar10", head="linear")
    assert isinstance(linear.get_classifier(), torch.nn.Linear)
    stl = timm.create_model("sc_stl10")
    assert [m.p for m in stl.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_roundtrip_via_pretrained_cfg_overlay(name, tmp_path):
    torch.manual_seed(0)
    src = timm.create_model(name).eval()
    path = tmp_path / "backbone.safetensors"
    save_file(src.state_dict(), str(path))
    x = _input(name)

    same = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    torch.testing.assert_close(same(x), src(x), rtol=0, atol=0)

    # another class count: the head is re-initialised, everything before it is loaded
    other = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=4
    )
    other.eval()
    assert other(x).shape == (2, 4)
    torch.testing.assert_close(other.forward_features(x), src.forward_features(x), rtol=0, atol=0)


def test_checkpoint_with_other_head_loads(tmp_path):
    """A backbone saved with 5 classes and the paper head loads into 10-class and linear-head nets."""
    src = timm.create_model("sc_cifar10", num_classes=5).eval()
    path = tmp_path / "b.safetensors"
    save_file(src.state_dict(), str(path))
    x = _input("sc_cifar10")
    for kwargs in ({}, {"num_classes": 5, "head": "linear"}):
        dst = timm.create_model(
            "sc_cifar10", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
        torch.testing.assert_close(dst.eval().forward_features(x), src.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sc_cifar10", "sc_mnist"])
def test_in_chans(name):
    for in_chans in (1, 3):
        model = timm.create_model(name, in_chans=in_chans).eval()
        assert model.in_chans == in_chans
        assert model.stages[0][0].conv.in_channels == in_chans
        assert model(_input(name, in_chans=in_chans)).shape == (2, 10)
    assert timm.create_model("sc_mnist").in_chans == 1


def test_mnist_rgb_checkpoint_loads_into_mono_net(tmp_path):
    """timm adapts the first conv (sum over RGB) when in_chans differs from the checkpoint's."""
    src = timm.create_model("sc_mnist", in_chans=3)
    path = tmp_path / "rgb.safetensors"
    save_file(src.state_dict(), str(path))
    dst = timm.create_model(
        "sc_mnist",
        pretrained=True,
        in_chans=1,
        pretrained_cfg_overlay={"file": str(path), "input_size": (3, 28, 28)},
    )
    torch.testing.assert_close(
        dst.stages[0][0].conv.weight, src.stages[0][0].conv.weight.sum(1, keepdim=True)
    )


def test_bad_arguments():
    with pytest.raises(ValueError):
        Table4Net(arch="imagenet")
    with pytest.raises(ValueError):
        Table4Net(head="mlp")
    with pytest.raises(ValueError):
        Table4Net(global_pool="max")


@pytest.mark.parametrize("name", NAMES)
def test_sc_layer_works_with_multilayer_sc(name):
    from sclearn import MultiLayerSC

    model = timm.create_model(name)
    sc = MultiLayerSC(model, layers=[model.sc_layer]).train()
    out = sc(_input(name, batch=4))
    assert out.logits.shape == (4, 10)
    assert set(out.sc_losses) == {model.sc_layer} and torch.isfinite(out.sc_loss)
    out.sc_loss.backward()
    assert model.stages[0][0].conv.weight.grad.abs().sum() > 0  # SC reaches the first layer
