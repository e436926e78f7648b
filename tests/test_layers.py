"""The layer inspector against facts worked out by hand from each architecture's definition."""

import pytest
from torch import nn

from sclearn.layers import format_layers, inspect_layers, main


def by_name(rows):
    return {r.name: r for r in rows}


def test_resnet18_at_32px_maps_patches_and_marks():
    rows = by_name(inspect_layers("resnet18", 32))
    # strides: conv1 2, maxpool 2, layer2-4 one each: 32 -> 16 -> 8 -> 8 -> 4 -> 2 -> 1
    expected = {"conv1": (64, 16, 16), "maxpool": (64, 8, 8), "layer1": (64, 8, 8), "layer2": (128, 4, 4),
                "layer3": (256, 2, 2), "layer4": (512, 1, 1)}
    assert {n: rows[n].map_shape for n in expected} == expected
    assert {r.layout for r in rows.values()} == {"nchw"}
    # default patch 0.55 of the side, rounded: 16 -> 9, 8 -> 4, 4 -> 2, 2 -> 1, 1 -> 1
    assert [rows[n].patch for n in ("conv1", "layer1", "layer2", "layer3", "layer4")] == [
        (9, 9), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert [n for n, r in rows.items() if r.covers_map and r.shown_by_default] == ["layer4.0", "layer4"]
    assert [n for n, r in rows.items() if "feature_info" in r.marks] == ["act1", "layer1", "layer2", "layer3",
                                                                         "layer4"]
    assert all(r.runs_once for r in rows.values())  # timm's blocks have one activation module per use
    assert rows["layer3.1"].same_as == "layer3" and rows["layer3.1.act2"].same_as == "layer3"
    assert rows["layer3.1.bn2"].same_as is None  # BN's output is not the block's (the residual is added)
    # rows come in the order their outputs appear; the FLOPs done so far only grow, up to the whole forward
    shares = [r.flops_share for r in rows.values()]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0, abs=1e-3)  # after layer4: the 512->10 fc
    assert list(rows).index("layer3.0") < list(rows).index("layer3") < list(rows).index("layer4.0")


def test_flops_share_is_the_hand_count_of_convolutions_done_so_far():
    # 8x8 input; conv FLOPs = 2 * (output cells * out channels) * (in channels * 3 * 3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1), nn.Identity())
    first, second = 2 * (64 * 2) * (1 * 9), 2 * (64 * 4) * (2 * 9)
    rows = by_name(inspect_layers(model, 8, 1, patch_size=3))
    assert rows["0"].flops_share == pytest.approx(first / (first + second))
    assert rows["1"].flops_share == pytest.approx(first / (first + second))
    assert rows["2"].flops_share == pytest.approx(1.0)
    assert rows["2"].map_shape == (4, 8, 8) and rows["2"].patch == (3, 3)
    assert rows["3"].same_as == "2"  # Identity hands on the very tensor
    assert rows["1"].same_as is None  # ReLU makes a new one


def test_torchvision_resnet_relu_runs_twice_per_block():
    rows = by_name(inspect_layers("torchvision:resnet18", 32))
    # BasicBlock.forward calls self.relu after bn1 and after the residual sum
    assert rows["layer1.0.relu"].calls == 2 and not rows["layer1.0.relu"].runs_once
    assert rows["layer1.0"].calls == 1 and rows["relu"].calls == 1
    assert rows["layer1.0.relu"].shown_by_default  # a warning worth showing
    assert "runs 2x" in format_layers(list(rows.values()))
    assert not any(r.marks for r in rows.values())  # torchvision models have no feature_info


def test_vit_gives_tokens_on_the_patch_grid():
    rows = by_name(inspect_layers("vit_tiny_patch16_224", 64))  # built for 64 px: a 4 x 4 grid of 16 px patches
    block = rows["blocks.5"]
    assert (block.layout, block.map_shape, block.patch) == ("tokens", (192, 4, 4), (2, 2))
    assert "feature_info" in block.marks
    assert "blocks.5.attn.qkv" in rows and rows["blocks.5.attn.qkv"].map_shape == (576, 4, 4)  # 3 x 192
    assert not any(n.endswith("q_norm") for n in rows)  # per-head (B, heads, N, hd) tensors are no map
    shown = [r.name for r in rows.values() if r.shown_by_default]
    assert [f"blocks.{i}" for i in range(12)] == [n for n in shown if n.startswith("blocks")]


def test_swin_stages_are_nhwc_and_window_tensors_are_left_out():
    rows = by_name(inspect_layers("swin_tiny_patch4_window7_224", 64))
    # patch 4 then a 2x merge per later stage: 16, 8, 4, 2 cells; channels 96 doubling
    assert {n: (rows[n].layout, rows[n].map_shape) for n in ("layers.0", "layers.1", "layers.2", "layers.3")} == {
        "layers.0": ("nhwc", (96, 16, 16)), "layers.1": ("nhwc", (192, 8, 8)),
        "layers.2": ("nhwc", (384, 4, 4)), "layers.3": ("nhwc", (768, 2, 2))}
    assert not any(n.endswith("attn.qkv") for n in rows if n.startswith("layers.0"))  # (B * windows, N, 3C)


@pytest.mark.parametrize(("name", "stage", "shape"), [
    ("convnext_atto", "stages.3", (320, 1, 1)),  # stem stride 4, then 2, 2, 2: 32 -> 8 -> 1
    ("efficientnet_b0", "blocks.6", (320, 1, 1)),  # stride 32
    ("mobilenetv3_small_050", "blocks.1", (16, 4, 4)),  # stride 8
    ("torchvision:mobilenet_v3_small", "features.3", (24, 4, 4)),  # stride 8 after features.3
])
def test_held_out_families(name, stage, shape):
    rows = by_name(inspect_layers(name, 32))
    assert rows[stage].map_shape == shape and rows[stage].layout == "nchw" and rows[stage].shown_by_default
    assert rows[stage].covers_map == (shape[1] == 1)


@pytest.mark.parametrize(("name", "sc_layer", "shape"), [
    ("sc_mnist", "stages.1", (64, 7, 7)), ("sc_cifar10", "stages.1", (192, 8, 8)),
    ("sc_stl10", "stages.2", (192, 24, 24)),
])
def test_table4_sc_layer_is_marked(name, sc_layer, shape):
    rows = inspect_layers(name)  # the nets' own input sizes: 28 (1 channel), 32, 96
    marked = [r for r in rows if "sc_layer" in r.marks]
    assert [(r.name, r.map_shape) for r in marked] == [(sc_layer, shape)]


def test_patch_larger_than_a_map_is_flagged_not_raised():
    rows = by_name(inspect_layers("sc_mnist", patch_size=8))
    assert rows["stages.0"].patch == (8, 8) and rows["stages.1"].patch is None
    assert "patch larger than the map" in format_layers(list(rows.values()))


def test_cli_prints_the_table_and_hides_inner_modules_unless_all(capsys):
    main(["resnet18", "--image-size", "32"])
    short = capsys.readouterr().out
    assert "resnet18 at 3 x 32 x 32" in short
    layer3 = next(line for line in short.splitlines() if line.startswith("layer3 "))
    assert layer3.split()[:7] == ["layer3", "nchw", "256", "x", "2", "x", "2"] and "feature_info" in layer3
    assert "layer3.1.bn2" not in short and "more: modules inside blocks" in short
    main(["resnet18", "--image-size", "32", "--all"])
    full = capsys.readouterr().out
    assert "layer3.1.bn2" in full and "same output as layer3" in full


def test_cli_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["resnet1"])
    assert e.value.code == 2
    assert "unknown model 'resnet1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["torchvision:vit_b_16", "--image-size", "64"])
    assert "cannot run on 3 x 64 x 64 input" in capsys.readouterr().err


def test_a_module_is_left_in_its_own_mode_and_bad_patch_sizes_fail_first():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    inspect_layers(model, 8, 1)
    assert model.training
    with pytest.raises(ValueError, match="fractional patch"):
        inspect_layers(model, 8, 1, patch_size=1.5)
