"""Which layer should SC hook? One dry forward pass lists every module whose output SC can sample.

    python -m sclearn.layers resnet18 --image-size 32
    python -m sclearn.layers torchvision:resnet18 --all

    from sclearn.layers import inspect_layers, format_layers
    rows = inspect_layers("vit_tiny_patch16_224")      # list[LayerInfo], in execution order
    print(format_layers(rows))

A module can carry SC when its output (the first element of a tuple, as :class:`sclearn.MultiLayerSC` takes it) is
a spatial map or a token grid for the whole batch: :class:`sclearn.layouts.FeatureLayout` must turn it into
(B, C, H, W) with the input's batch size B (window-partitioned tensors inside swin blocks, attention maps and
pooled features do not qualify). For each such module the table gives what SC would see there.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .backbones import TORCHVISION_PREFIX, build_backbone
from .config import TrainConfig
from .layouts import FeatureLayout
from .sampling import PatchSize, resolve_patch_size

DEFAULT_PATCH_SIZE: PatchSize = TrainConfig.patch_size  # what the Trainer and recipes use unless told otherwise


@dataclass(frozen=True)
class LayerInfo:
    """What SC would see at one module, from one dry forward pass.

    Attributes:
        name: The module's name in ``named_modules()`` (what ``layers=[...]`` takes).
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"``, as :class:`~sclearn.layouts.FeatureLayout` infers it.
        map_shape: (C, H, W) of the map SC samples patches from (token grids without their prefix tokens).
        patch: (ph, pw), the patch in cells at the inspected ``patch_size``; None where it is larger than the map
            (SC would refuse it).
        calls: Forward-hook calls in one forward pass. With more than one, SC samples the last call's output.
        flops_share: Share of the forward's FLOPs (``torch.utils.flop_counter``: matmuls and convolutions) done
            by the time this module's output exists, in [0, 1]. Layers past it run for the CE head only.
        marks: ``"sc_layer"`` (a Table-4 net's SC position) and/or ``"feature_info"`` (named by timm).
        in_stack: The module is a non-leaf element of an ``nn.Sequential`` / ``nn.ModuleList`` that holds two or
            more non-leaf modules (a stage of stages, a block of a stage, a conv row of a Table-4 stage).
        same_as: The listed module whose output this one repeats (the same tensor with the same values, e.g. a
            stage and its last block), or None.
    """

    name: str
    layout: str
    map_shape: tuple[int, int, int]
    patch: tuple[int, int] | None
    calls: int
    flops_share: float
    marks: tuple[str, ...]
    in_stack: bool
    same_as: str | None

    @property
    def covers_map(self) -> bool:
        """The patch is the whole map: both patches of an image are the same, so SC has nothing to learn."""
        return self.patch == self.map_shape[1:]

    @property
    def runs_once(self) -> bool:
        return self.calls == 1

    @property
    def shown_by_default(self) -> bool:
        """In the short table: runs more than once, or is not a repeat and is top-level, marked or in a stack.

        This hides what lies inside a block (attention and MLP branches, convs, norms, activations).
        """
        if not self.runs_once:
            return True  # worth a warning wherever it is
        if self.same_as is not None:
            return False
        return self.in_stack or "." not in self.name or bool(self.marks)


@dataclass
class _Seen:
    """One module's calls, and its last call's output: identity (pointer, shape, sum of values), layout and map."""

    calls: int = 0
    position: int = 0  # when its last call ended, among all hook calls
    fingerprint: tuple | None = None
    layout: str | None = None
    map_shape: tuple[int, int, int] | None = None
    flops: int = 0


def input_for(model: str | nn.Module, image_size: int | None = None, channels: int | None = None) -> tuple[int, int]:
    """(image side, channels): the given ones, else a timm model's default config, else (224, 3)."""
    size = (3, 224, 224)
    if isinstance(model, str) and not model.startswith(TORCHVISION_PREFIX):
        import timm

        size = getattr(timm.models.get_pretrained_cfg(model), "input_size", None) or size
    return image_size or int(size[-1]), channels or int(size[0])


def _build(name: str, image_size: int, channels: int, num_classes: int) -> nn.Module:
    kwargs = {}
    if not name.startswith(TORCHVISION_PREFIX):
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size and int(cfg.input_size[-1]) != image_size:
            kwargs["img_size"] = image_size  # ViT / swin: the position grid is built for one size
    return build_backbone(name, num_classes=num_classes, in_chans=channels, **kwargs)


def _marks(model: nn.Module) -> dict[str, tuple[str, ...]]:
    marks: dict[str, list[str]] = {}
    sc_layer = getattr(model, "sc_layer", None)
    if isinstance(sc_layer, str):
        marks.setdefault(sc_layer, []).append("sc_layer")
    for info in getattr(model, "feature_info", None) or []:
        module = info.get("module") if isinstance(info, dict) else None
        if module:
            marks.setdefault(module, []).append("feature_info")
    return {k: tuple(v) for k, v in marks.items()}


@torch.no_grad()
def inspect_layers(
    model: str | nn.Module,
    image_size: int | None = None,
    channels: int | None = None,
    *,
    patch_size: PatchSize = DEFAULT_PATCH_SIZE,
    num_classes: int = 10,
) -> list[LayerInfo]:
    """Every module of ``model`` that can carry SC, in the order their outputs appear in a forward pass.

    Args:
        model: A timm name, ``"torchvision:<name>"`` (built with random weights, nothing downloaded), or a module.
        image_size: Input side in pixels. Default: the timm config's (224 for torchvision and modules).
        channels: Input channels. Default: the timm config's (3 otherwise).
        patch_size: The SC patch size to resolve on each map (int cells or a fraction of the side).
        num_classes: Head size of the built model (only moves the head's share of the FLOPs).

    Returns:
        One :class:`LayerInfo` per module, hidden-by-default ones included (see ``LayerInfo.shown_by_default``).

    Raises:
        ValueError: For an unknown model name, or a model that cannot run at this input size.
    """
    resolve_patch_size(patch_size, 10**9, 10**9)  # a malformed patch_size fails here, before any work
    image_size, channels = input_for(model, image_size, channels)
    label = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = _build(model, image_size, channels, num_classes)
    was_training = model.training
    model.eval()
    batch = 2  # two images, so a tensor with another leading size (windows, heads) is told apart
    x = torch.randn(batch, channels, image_size, image_size)
    modules = {n: m for n, m in model.named_modules() if n}
    seen = {n: _Seen() for n in modules}
    counter = FlopCounterMode(display=False)
    clock = itertools.count()

    def hook(name: str, module: nn.Module, inputs, output) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        s = seen[name]
        s.calls += 1
        s.position, s.flops = next(clock), counter.get_total_flops()
        s.fingerprint, s.layout, s.map_shape = None, None, None
        if not isinstance(out, Tensor) or out.ndim not in (3, 4) or out.shape[0] != batch:
            return
        s.fingerprint = (out.data_ptr(), tuple(out.shape), float(out.float().sum()))
        layout = FeatureLayout(model, name, module)
        try:
            fmap = layout(out, (image_size, image_size))  # (B, C, H, W)
            s.layout = layout.layout_of(out)
        except ValueError:
            return  # neither a map nor a token grid: cannot carry SC
        s.map_shape = tuple(fmap.shape[1:])

    handles = [m.register_forward_hook(partial(hook, n)) for n, m in modules.items()]
    try:
        with counter:
            model(x)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ValueError(
            f"{label} cannot run on {channels} x {image_size} x {image_size} input ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Try another image size or channel count "
            f"(--image-size / --channels)."
        ) from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = max(counter.get_total_flops(), 1)
    marks = _marks(model)
    usable = sorted((n for n in modules if seen[n].map_shape is not None), key=lambda n: seen[n].position)
    stacked = _stack_elements(model)
    same_as = _repeats(usable, seen, marks, lambda n: n in stacked or "." not in n)
    rows = []
    for name in usable:
        s = seen[name]
        c, h, w = s.map_shape
        rows.append(LayerInfo(
            name=name, layout=s.layout, map_shape=(c, h, w), patch=_patch_or_none(patch_size, h, w),
            calls=s.calls, flops_share=s.flops / total, marks=marks.get(name, ()),
            in_stack=name in stacked, same_as=same_as.get(name),
        ))
    return rows


def _patch_or_none(patch_size: PatchSize, height: int, width: int) -> tuple[int, int] | None:
    """The patch in cells, or None where it is larger than the map (``patch_size`` itself was checked)."""
    try:
        return resolve_patch_size(patch_size, height, width)
    except ValueError:
        return None


def _stack_elements(model: nn.Module) -> set[str]:
    """Names of the non-leaf elements of Sequential / ModuleList containers with at least two of them."""
    out = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        inner = [n for n, child in module.named_children() if next(child.children(), None) is not None]
        if len(inner) >= 2:
            out.update(f"{name}.{n}" if name else n for n in inner)
    return out


def _repeats(names: Sequence[str], seen: dict[str, _Seen], marks: dict[str, tuple[str, ...]],
             listed: Callable[[str], bool]) -> dict[str, str]:
    """{module: the module listed in its place} for outputs that several modules share (same tensor, same values).

    The one listed is a marked module if any, else one that runs once, else one the short table lists (``listed``),
    else the shallowest (a stage over its last block), else the first.
    """
    groups: dict[tuple, list[str]] = {}
    for name in names:
        groups.setdefault(seen[name].fingerprint, []).append(name)
    out = {}
    for group in groups.values():
        keep = min(group, key=lambda n: (not marks.get(n), seen[n].calls > 1, not listed(n), n.count("."),
                                         group.index(n)))
        out.update({n: keep for n in group if n != keep})
    return out


def format_layers(rows: Sequence[LayerInfo], show_all: bool = False) -> str:
    """The table as text: one line per module (``show_all=False``: the short table, with a count of the rest)."""
    shown = [r for r in rows if show_all or r.shown_by_default]
    width = max([len(r.name) for r in shown] + [5])
    lines = [f"{'layer':<{width}}  {'layout':<6}  {'map C x H x W':>15}  {'patch':>7}  {'calls':>5}  "
             f"{'FLOPs':>5}  notes"]
    for r in shown:
        c, h, w = r.map_shape
        notes = list(r.marks)
        if r.patch is None:
            notes.append("patch larger than the map")
        elif r.covers_map:
            notes.append("patch = whole map")
        if not r.runs_once:
            notes.append(f"runs {r.calls}x: SC sees the last call")
        if r.same_as:
            notes.append(f"same output as {r.same_as}")
        patch = f"{r.patch[0]}x{r.patch[1]}" if r.patch else "-"
        lines.append(f"{r.name:<{width}}  {r.layout:<6}  {f'{c} x {h} x {w}':>15}  {patch:>7}  "
                     f"{r.calls:>5}  {100 * r.flops_share:>4.0f}%  {', '.join(notes)}".rstrip())
    hidden = len(rows) - len(shown)
    if hidden:
        lines.append(f"({hidden} more: modules inside blocks, and modules that repeat a listed output; --all lists "
                     f"them)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from .cli import _patch_size

    parser = argparse.ArgumentParser(
        prog="python -m sclearn.layers",
        description="List the layers of a model that can carry SC: layout, map size, patch in cells, calls per "
                    "forward pass, and the share of the forward's FLOPs done by then.",
    )
    parser.add_argument("model", help="timm model name, or torchvision:<name> (random weights, nothing downloaded)")
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's)")
    parser.add_argument("--channels", type=int, default=None, help="input channels (default: the model's)")
    parser.add_argument("--patch-size", type=_patch_size, default=DEFAULT_PATCH_SIZE,
                        help="SC patch side: int cells or a fraction of the map side")
    parser.add_argument("--all", dest="show_all", action="store_true",
                        help="also list the modules inside blocks and those that repeat a listed output")
    args = parser.parse_args(argv)
    try:
        rows = inspect_layers(args.model, args.image_size, args.channels, patch_size=args.patch_size)
    except ValueError as e:
        parser.error(str(e))
    size, channels = input_for(args.model, args.image_size, args.channels)
    print(f"{args.model} at {channels} x {size} x {size}, patch_size {args.patch_size}. FLOPs: the share of the "
          f"forward's FLOPs done when the layer's output exists.")
    print(format_layers(rows, args.show_all))


if __name__ == "__main__":
    main(sys.argv[1:])
