"""What SC pre-training does to a layer's features, against the same net at random init.

For each backbone (random init of ``--model``, plus every ``--weights`` file) the script runs ``--num-images``
test images through the net and measures, at ``--layer`` (a (B, C, H, W) map):

- ``erank_gap`` / ``erank_grid``: effective rank (exp of the entropy of the normalised singular values) of the
  centred features, globally average-pooled (C dims) and 2x2-pooled (4C dims). How many directions the images
  spread over.
- ``fisher_gap`` / ``fisher_grid``: between-class over within-class variance (traces) of the same features.
  How well the *classes* separate, with no classifier trained.
- ``within_image_share``: the map's variance across the positions of one image (averaged over images and
  channels), over its variance across all positions of all images (averaged over channels); population
  variances, so the share is in [0, 1] (law of total variance). SC pulls an image's patches together; a falling share means the map is losing
  the spatial detail that tells parts of an object apart.
- ``dead_channels``: per ReLU module of the net, the channels that are zero everywhere on (nearly) every
  image, and the share of positive activations: capacity the net has switched off.

No training, no labels beyond the test labels for the Fisher ratio; a few seconds on a CPU.

Usage::

    python benchmarks/feature_diagnostics.py --weights runs/x/pretrain/backbone.safetensors
    python benchmarks/feature_diagnostics.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import markdown_table

from sclearn import TrainConfig
from sclearn import data as sc_data
from sclearn.backbones import build_backbone, load_backbone_weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser(__doc__.splitlines()[0], smoke="a few images, for CI",
                       data_help="data source (its test split is used)")
    p.add_argument("--weights", nargs="*", default=[], help="backbone .safetensors files (sclearn exports)")
    p.add_argument("--model", default="sc_mnist", help="timm model name the weights belong to")
    p.add_argument("--layer", default="stages.1", help="layer whose (B, C, H, W) output is measured")
    p.add_argument("--channels", type=int, default=1, help="input channels of the model")
    p.add_argument("--num-images", type=int, default=2000, help="test images measured")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init reference net")
    args = p.parse_args(argv)
    if args.smoke:
        args.num_images = min(args.num_images, 40)
    return args


@torch.no_grad()
def layer_features(net: nn.Module, layer: str, loader) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) outputs of ``layer`` and the (N,) labels, net in eval mode."""
    modules = dict(net.named_modules())
    if layer not in modules:
        raise SystemExit(f"--layer {layer!r} is not a module of the model")
    maps: list[Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: maps.append(out.detach().clone()))
    labels = []
    net.eval()
    try:
        for x, y in loader:
            net(x)
            labels.append(y)
    finally:
        handle.remove()
    return torch.cat(maps), torch.cat(labels)


def effective_rank(z: Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (N, D) features."""
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def fisher_ratio(z: Tensor, y: Tensor) -> float:
    """trace(between-class scatter) / trace(within-class scatter) of (N, D) features."""
    mu = z.mean(0)
    between = within = z.new_zeros(())
    for c in y.unique():
        zc = z[y == c]
        between = between + len(zc) * ((zc.mean(0) - mu) ** 2).sum()
        within = within + ((zc - zc.mean(0)) ** 2).sum()
    return float(between / within)


def within_image_share(fmap: Tensor) -> float:
    """(variance across one image's positions, averaged over images and channels) / (variance across all
    positions of all images, averaged over channels). Population variances: the share lies in [0, 1]."""
    cells = fmap.flatten(2)  # (N, C, HW)
    within = cells.var(-1, unbiased=False).mean()
    total = cells.permute(0, 2, 1).reshape(-1, fmap.shape[1]).var(0, unbiased=False).mean()
    return float(within / total)


@torch.no_grad()
def relu_activity(net: nn.Module, loader, max_images: int = 1000) -> dict[str, dict[str, float]]:
    """Per ``nn.ReLU`` module: channels silent on >= 99% of the images, and the share of positive outputs.

    Outputs of any rank >= 2 are read as (B, C, ...). A module called more than once per forward (torchvision
    reuses one ReLU in a block) is pooled over its calls, per channel count: ``name[C]`` for each count.
    """
    sums: dict[str, Tensor] = {}  # key -> (2, C): images where the channel fires anywhere, mean positive share
    counts: dict[str, int] = {}  # key -> images recorded (calls x batch)
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, nn.ReLU):
            def record(_m, _i, out: Tensor, name: str = name) -> None:
                if out.ndim < 2:
                    return
                positive = (out > 0).reshape(out.shape[0], out.shape[1], -1)  # (B, C, cells)
                part = torch.stack([positive.any(-1).float().sum(0), positive.float().mean(-1).sum(0)])  # (2, C)
                key = f"{name}[{out.shape[1]}]"
                sums[key] = sums[key] + part if key in sums else part
                counts[key] = counts.get(key, 0) + out.shape[0]
            handles.append(module.register_forward_hook(record))
    net.eval()
    seen = 0
    try:
        for x, _ in loader:
            net(x)
            seen += len(x)
            if seen >= max_images:
                break
    finally:
        for h in handles:
            h.remove()
    out = {}
    for key, total in sums.items():
        fired, positive = total / counts[key]  # (C,) each
        name = key.rsplit("[", 1)[0]
        shown = name if sum(k.rsplit("[", 1)[0] == name for k in sums) == 1 else key
        out[shown] = {"dead": int((fired < 0.01).sum()), "channels": len(fired),
                      "positive_share": round(float(positive.mean()), 3)}
    return out


def diagnose(fmap: Tensor, y: Tensor) -> dict[str, float]:
    gap = fmap.mean((2, 3))  # (N, C)
    grid = F.adaptive_avg_pool2d(fmap, 2).flatten(1)  # (N, 4C)
    return {
        "erank_gap": round(effective_rank(gap), 2), "erank_grid": round(effective_rank(grid), 2),
        "fisher_gap": round(fisher_ratio(gap, y), 4), "fisher_grid": round(fisher_ratio(grid, y), 4),
        "within_image_share": round(within_image_share(fmap), 4),
        "channels": fmap.shape[1], "map_hw": list(fmap.shape[-2:]),
    }


def markdown_block(report: dict[str, Any]) -> str:
    def dead(r: dict[str, Any]) -> str:
        return ", ".join(f"{n} {v['dead']}/{v['channels']} ({100 * v['positive_share']:.0f}% > 0)"
                         for n, v in r["relu"].items())

    cfg, results = report["config"], report["results"]
    rows = [[r["backbone"], r["erank_gap"], r["erank_grid"], r["fisher_gap"], r["fisher_grid"],
             r["within_image_share"], dead(r)] for r in results]
    return harness.results_block(report, "What SC pre-training does to the features (feature diagnostics)", [
        f"- {cfg['model']} at `{cfg['layer']}`, {report['num_images']} test images; effective rank of the centred "
        "features (GAP: C dims, grid: 2x2-pooled, 4C dims), Fisher ratio between/within classes, and the share of "
        "the map's variance that lies across positions within one image.", "",
        markdown_table(["backbone", "erank GAP", "erank grid", "Fisher GAP", "Fisher grid",
                        "within-image share", "dead ReLU channels (share of positive outputs)"], rows),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report = harness.report_header("feature_diagnostics", args)
    dsd = sc_data.load_image_dataset(args.data)
    dsd["test"] = dsd["test"].select(range(min(args.num_images, len(dsd["test"]))))
    splits = sc_data.semi_supervised_splits(dsd, labels_per_class=None, seed=0)
    # The Trainer's eval loader, normalised as the Trainer normalises; streamed: only the test images are read.
    cfg = TrainConfig(data=args.data, backbone=args.model, channels=args.channels, seed=args.seed, batch_size=500,
                      data_path="stream")
    loader = sc_data.build_loaders(cfg, splits).eval["test"]
    report["num_images"], report["results"] = len(splits.test), []
    for source in [None, *args.weights]:
        torch.manual_seed(args.seed)
        net = build_backbone(args.model, num_classes=splits.num_classes, in_chans=args.channels)
        if source is not None:
            load_backbone_weights(net, source)
        fmap, y = layer_features(net, args.layer, loader)
        report["results"].append({"backbone": source or f"random init (seed {args.seed})", **diagnose(fmap, y),
                                  "relu": relu_activity(net, loader)})
    harness.publish(report, args, "feature_diagnostics", markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
