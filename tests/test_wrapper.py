"""MultiLayerSC on real timm / torchvision backbones, layouts, hooks and errors."""

import gc
import weakref

import pytest
import timm
import torch
import torchvision
from torch import nn

from sclearn import MultiLayerSC, PatchProjector, SpatialContrastiveLoss
from tests.reference import naive_eq4


def capture(store: dict, key: str):
    """A forward hook that keeps a copy of the output. Returns None: a hook's return value replaces the output."""

    def hook(module, inputs, output):
        store[key] = output.detach().clone()

    return hook


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_design_card_line(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"])
    out = model(images)
    assert out.logits.shape == (4, 10)
    assert set(out.sc_losses) == {"layer3"} and out.sc_loss.ndim == 0
    assert torch.isfinite(out.sc_loss) and out.sc_loss.item() > 0


def test_logits_unchanged_by_wrapping(images):
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=10).eval()
    wrapped = MultiLayerSC(plain, layers=["layer3"], sc_in_eval=True)
    with torch.no_grad():
        assert torch.equal(wrapped(images).logits, plain(images))


def test_two_layers_with_weights(images):
    torch.manual_seed(0)
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer2", "layer3"],
                         weights=[0.25, 2.0], loss=SpatialContrastiveLoss(patch_size=1.0))
    out = model(images)
    assert set(out.sc_losses) == {"layer2", "layer3"}
    want = 0.25 * out.sc_losses["layer2"] + 2.0 * out.sc_losses["layer3"]
    assert out.sc_loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_whole_map_patch_matches_naive_eq4_on_hooked_features(images):
    # patch_size=1.0: both patches are the full map, so SC = Eq. 4 of the flattened map against itself.
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)
    captured = {}
    net.layer3.register_forward_hook(capture(captured, "map"))
    model = MultiLayerSC(net, layers="layer3", loss=SpatialContrastiveLoss(patch_size=1.0))
    loss = model(images).sc_losses["layer3"].item()
    flat = captured["map"].permute(0, 2, 3, 1).flatten(1).double()
    assert loss == pytest.approx(naive_eq4(flat, flat), rel=1e-4, abs=1e-4)


def test_backward_reaches_parameters_below_hook_only(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"])
    model(images).sc_loss.backward()
    net = model.backbone
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0
    assert net.layer3[1].bn2.weight.grad.abs().sum() > 0  # timm zero-inits this BN, so test its grad
    assert net.layer4[0].conv1.weight.grad is None and net.fc.weight.grad is None


def test_eval_mode_skips_sc_unless_asked(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"]).eval()
    assert model(images).sc_losses == {}
    assert model(images).sc_loss.item() == 0.0
    assert set(model(images, compute_sc=True).sc_losses) == {"layer3"}
    assert model.train()(images, compute_sc=False).sc_losses == {}


def test_nothing_retained_after_forward(images):
    net = timm.create_model("resnet18", num_classes=10)
    refs = []
    net.layer3.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    model = MultiLayerSC(net, layers=["layer3"], sc_in_eval=True).eval()
    with torch.no_grad():
        out = model(images)
    gc.collect()
    assert "layer3" in out.sc_losses
    assert refs[0]() is None  # the full layer3 map is gone once forward returns
    assert model._state.patches == {} and model._state.capturing == set()


def test_calling_backbone_directly_is_plain(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"])
    model.backbone(images)  # hooks are dormant outside MultiLayerSC.forward
    assert model._state.patches == {}


def test_remove_hooks_gives_plain_model(images):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10).eval()
    keys = list(net.state_dict())
    model = MultiLayerSC(net, layers=["layer2", "layer3"])
    assert len(net.layer3._forward_hooks) == 1
    assert list(model.backbone.state_dict()) == keys  # .backbone keys are unchanged
    plain = model.unwrap()
    assert plain is net and not net.layer2._forward_hooks and not net.layer3._forward_hooks
    with pytest.raises(RuntimeError, match="hooks were removed"):
        model.train()(images)


def test_in_place_relu_after_hooked_layer_does_not_change_patches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(288, 2))
    with torch.no_grad():
        net[0].weight.mul_(0.05)  # small distances, so the loss is far from 0 and sensitive to the map
    x = torch.randn(5, 3, 6, 6)
    captured = {}
    net[0].register_forward_hook(capture(captured, "pre_relu"))
    model = MultiLayerSC(net, layers=["0"], loss=SpatialContrastiveLoss(patch_size=1.0))
    loss = model(x).sc_losses["0"].item()
    pre = captured["pre_relu"].permute(0, 2, 3, 1).flatten(1).double()
    post = pre.clamp_min(0)
    assert loss == pytest.approx(naive_eq4(pre, pre), rel=1e-4)
    assert loss != pytest.approx(naive_eq4(post, post), rel=1e-2)  # the in-place ReLU would have changed it


def test_torchvision_resnet18(images):
    model = MultiLayerSC(torchvision.models.resnet18(num_classes=10), layers=["layer3"])
    out = model(images)
    assert out.logits.shape == (4, 10) and torch.isfinite(out.sc_losses["layer3"])


def test_vit_tokens_are_reshaped_to_grid():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10)
    x = torch.randn(3, 3, 64, 64)
    captured = {}
    vit.blocks[5].register_forward_hook(capture(captured, "tokens"))
    model = MultiLayerSC(vit, layers=["blocks.5"], loss=SpatialContrastiveLoss(patch_size=1.0))
    loss = model(x).sc_losses["blocks.5"].item()
    tokens = captured["tokens"]  # (B, 1 + 16, C): the class token, then a 4x4 grid
    assert tokens.shape[1] == 17
    flat = tokens[:, 1:].double().flatten(1)  # grid cells in row-major order, class token dropped
    assert loss == pytest.approx(naive_eq4(flat, flat), rel=1e-4)


def test_nhwc_stage_is_permuted():
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10,
                             depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8))
    x = torch.randn(3, 3, 64, 64)
    captured = {}
    swin.layers[1].register_forward_hook(capture(captured, "map"))
    model = MultiLayerSC(swin, layers=["layers.1"], loss=SpatialContrastiveLoss(patch_size=1.0))
    loss = model(x).sc_losses["layers.1"].item()
    nhwc = captured["map"]
    assert nhwc.shape == (3, 8, 8, 64)  # NHWC
    # Had the layout been misread as NCHW, a 1.0 patch would still flatten the same numbers, so check
    # the permutation directly instead: the map SC sampled is the NCHW version.
    fmap = model._layouts["layers.1"](nhwc)
    assert fmap.shape == (3, 64, 8, 8) and torch.equal(fmap, nhwc.permute(0, 3, 1, 2))
    assert loss == pytest.approx(naive_eq4(nhwc.flatten(1).double(), nhwc.flatten(1).double()), abs=1e-5)


def test_more_backbones_work():
    x = torch.randn(2, 3, 64, 64)
    for name in ["convnext_atto", "efficientnet_b0", "regnetx_002"]:
        net = timm.create_model(name, num_classes=5)
        layer = net.feature_info[-2]["module"]
        out = MultiLayerSC(net, layers=[layer])(x)
        assert out.logits.shape == (2, 5) and torch.isfinite(out.sc_loss), name


def test_projector_is_lazy_per_layer_and_trainable(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer2", "layer3"],
                         loss=SpatialContrastiveLoss(0.5, pool="mean", projector=PatchProjector(out_dim=16)))
    model.init_lazy(images)
    assert model.loss_for("layer2") is not model.loss_for("layer3")
    assert model.loss_for("layer2").projector.mlp[0].weight.shape == (256, 128)
    assert model.loss_for("layer3").projector.mlp[0].weight.shape == (256, 256)
    assert model.training  # init_lazy restores the mode
    model(images).sc_loss.backward()
    assert model.loss_for("layer3").projector.mlp[2].weight.grad is not None
    assert not any(k.startswith("losses") for k in model.backbone.state_dict())


def test_sc_heads_is_a_deprecated_alias_and_old_checkpoints_load(images):
    def make():
        torch.manual_seed(0)
        return MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"],
                            loss=SpatialContrastiveLoss(0.5, pool="mean", projector=PatchProjector(out_dim=8)))

    model = make()
    model.init_lazy(images)
    with pytest.warns(DeprecationWarning, match="use MultiLayerSC.losses"):
        assert model.sc_heads is model.losses
    # A checkpoint written before the rename names the projector "sc_heads.layer3.projector...".
    old = {k.replace("losses.", "sc_heads.", 1): v + 1 for k, v in model.state_dict().items()}
    assert "sc_heads.layer3.projector.mlp.0.weight" in old
    fresh = make()
    fresh.init_lazy(images)
    fresh.load_state_dict(old)  # strict: every key found under its new name
    assert torch.equal(fresh.loss_for("layer3").projector.mlp[0].weight, old["sc_heads.layer3.projector.mlp.0.weight"])


def test_errors(images):
    net = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"'layer5' is not a module.*close matches.*layer[1-4]"):
        MultiLayerSC(net, layers=["layer5"])
    with pytest.raises(ValueError, match="layers is empty"):
        MultiLayerSC(net, layers=[])
    with pytest.raises(ValueError, match="2 weights for 1 layers"):
        MultiLayerSC(net, layers=["layer3"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="missing"):
        MultiLayerSC(net, layers=["layer2", "layer3"], weights={"layer3": 1.0})
    model = MultiLayerSC(net, layers=["layer3"])
    with pytest.raises(ValueError, match="at least 2 images"):
        model(images[:1])
    pooled = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["global_pool"])
    with pytest.raises(ValueError, match="neither a spatial map"):
        pooled(images)


def test_unknown_layout_error_says_how_to_state_it():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()

        def forward(self, x):
            return self.body(x.view(x.shape[0], 5, 3, 7)).mean((1, 2, 3))

    with pytest.raises(ValueError, match="layouts=.*'body'"):
        MultiLayerSC(Odd(), layers=["body"])(torch.randn(4, 105))
    out = MultiLayerSC(Odd(), layers=["body"], layouts={"body": "nchw"})(torch.randn(4, 105))
    assert torch.isfinite(out.sc_loss)


@pytest.mark.slow
def test_torch_compile_keeps_sc_losses(images):
    torch.manual_seed(0)
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"],
                         loss=SpatialContrastiveLoss(patch_size=1.0))
    eager = model(images)
    compiled = torch.compile(model)
    out = compiled(images)
    assert set(out.sc_losses) == {"layer3"}
    assert out.sc_loss.item() == pytest.approx(eager.sc_loss.item(), rel=1e-3)
    out.sc_loss.backward()
    assert model.backbone.conv1.weight.grad is not None


@pytest.mark.slow
def test_torch_compile_takes_the_sc_only_early_stop(images):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)
    head_calls = []
    net.layer4.register_forward_pre_hook(lambda m, i: head_calls.append(1))  # before compiling: compile keeps it
    # A whole-map patch and cosine distance: no random positions, and a loss well away from 0.
    model = MultiLayerSC(net, layers=["layer3"], loss=SpatialContrastiveLoss(patch_size=1.0, distance="cosine"))
    eager = model(images, return_logits=False)
    eager.sc_loss.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)
    for _ in range(2):  # the second call runs the compiled code without re-tracing
        out = compiled(images, return_logits=False)
    assert out.logits is None and not head_calls  # layer4 never ran, eager or compiled
    assert out.sc_loss.item() == pytest.approx(eager.sc_loss.item(), rel=1e-4) and out.sc_loss.item() > 0.1
    out.sc_loss.backward()
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for k, g in want.items():
        torch.testing.assert_close(got[k], g, rtol=1e-3, atol=1e-5, msg=k)


def test_nhwc_with_height_equal_to_channels_uses_output_fmt():
    # swin with embed_dim 16 at 64 px: layers.0 gives (B, 16, 16, 16) NHWC, so dims alone cannot tell.
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10,
                             depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 4, 8))
    model = MultiLayerSC(swin, layers=["layers.0"])
    x = torch.arange(2 * 16 * 16 * 16, dtype=torch.float32).view(2, 16, 16, 16)  # channel index varies fastest
    fmap = model._layouts["layers.0"](x)
    assert torch.equal(fmap[0, :, 0, 0], torch.arange(16, dtype=torch.float32))  # a channel vector, not a row
    swin.output_fmt = None  # without the hint the tie is an error, not a guess
    with pytest.raises(ValueError, match="both dim 1 and dim 3"):
        MultiLayerSC(swin, layers=["layers.1"])._layouts["layers.1"](torch.randn(2, 32, 4, 32))


def test_return_logits_false_cuts_the_head_out_of_the_graph(images):
    model = MultiLayerSC(timm.create_model("resnet18", num_classes=10), layers=["layer3"])
    out = model(images, return_logits=False)
    assert out.logits is None and out.sc_loss.requires_grad


def test_activation_checkpointing_is_refused(images):
    net = timm.create_model("resnet18", num_classes=10)
    net.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="activation checkpointing"):
        MultiLayerSC(net, layers=["layer3"])(images)


def test_duplicate_layers_are_refused():
    with pytest.raises(ValueError, match="twice"):
        MultiLayerSC(timm.create_model("resnet18"), layers=["layer3", "layer3"], weights=[1.0, 2.0])
