"""Turn what a hooked layer outputs into a (B, C, H, W) feature map.

Backbones disagree on layout: CNN stages give NCHW, timm's swin-style stages give NHWC, and ViT blocks
give token sequences (B, N, C) with prefix (class / register) tokens in front of the patch grid.
:class:`FeatureLayout` works out which one a layer gives, from timm's ``feature_info`` or the layer's
own parameters, and reshapes. Where it cannot tell, it says how to state the layout explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

LayoutName = Literal["auto", "nchw", "nhwc", "tokens"]
Layout = LayoutName | Callable[[Tensor], Tensor]
LAYOUTS: tuple[str, ...] = ("auto", "nchw", "nhwc", "tokens")


def _pair(v) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def known_channels(backbone: nn.Module, name: str, module: nn.Module) -> int | None:
    """The channel count a layer outputs, if timm's ``feature_info`` or the layer's parameters tell it."""
    for info in getattr(backbone, "feature_info", None) or []:
        if isinstance(info, dict) and info.get("module") == name and info.get("num_chs"):
            return int(info["num_chs"])
    channels = None
    for sub in module.modules():  # the last sized submodule is the most likely to produce the output
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)):
            channels = sub.out_channels
        elif isinstance(sub, (nn.BatchNorm2d, nn.GroupNorm)):
            channels = getattr(sub, "num_features", None) or getattr(sub, "num_channels", None)
        elif isinstance(sub, nn.LayerNorm):
            channels = sub.normalized_shape[-1]
        elif isinstance(sub, nn.Linear):
            channels = sub.out_features
    return channels


class FeatureLayout:
    """Reshapes one layer's output to (B, C, H, W).

    Args:
        backbone: The whole model; read for ``feature_info``, ``num_prefix_tokens`` and ``patch_embed``.
        name: The layer's name in ``backbone.named_modules()``.
        module: The layer itself.
        layout: ``"auto"`` (infer), ``"nchw"``, ``"nhwc"``, ``"tokens"`` (B, N, C) or a callable
            returning (B, C, H, W).
    """

    def __init__(self, backbone: nn.Module, name: str, module: nn.Module, layout: Layout = "auto") -> None:
        if not callable(layout) and layout not in LAYOUTS:
            raise ValueError(f"layout for {name!r} must be one of {LAYOUTS} or a callable, got {layout!r}")
        self.name = name
        self.layout = layout
        self.channels = known_channels(backbone, name, module)
        # timm models whose stages give NHWC say so (swin: output_fmt = "NHWC"); it breaks H == C ties.
        self.output_fmt = str(getattr(backbone, "output_fmt", "")).upper() or None
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", None)
        patch_embed = getattr(backbone, "patch_embed", None)
        self.patch_size = _pair(getattr(patch_embed, "patch_size", None))
        self.grid_size = _pair(getattr(patch_embed, "grid_size", None))

    def _fail(self, x: Tensor, why: str) -> ValueError:
        return ValueError(
            f"cannot tell the layout of layer {self.name!r} output of shape {tuple(x.shape)}: {why}. "
            f"State it with MultiLayerSC(..., layouts={{{self.name!r}: 'nchw' | 'nhwc' | 'tokens'}}), "
            f"or pass a callable that returns (B, C, H, W)."
        )

    def __call__(self, x: Tensor, input_hw: tuple[int, int] | None = None) -> Tensor:
        """Args: x, the layer output; input_hw, the image size fed to the backbone (for token grids)."""
        if callable(self.layout):
            return self.layout(x)
        layout = self.layout_of(x)
        if layout == "nchw":
            return x
        if layout == "nhwc":
            return x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        return self._tokens_to_map(x, input_hw)

    def layout_of(self, x: Tensor) -> str:
        """``"nchw"``, ``"nhwc"`` or ``"tokens"``: the stated layout, or the one inferred from ``x``.

        Raises:
            ValueError: When ``x`` is not a map or tokens, or its layout cannot be told (says how to state it).
        """
        if callable(self.layout):
            raise TypeError(f"layer {self.name!r} has a callable layout, which has no name")
        return self.layout if self.layout != "auto" else self._infer(x)

    def _infer(self, x: Tensor) -> str:
        if x.ndim == 3:
            return "tokens"
        if x.ndim != 4:
            raise ValueError(
                f"layer {self.name!r} outputs shape {tuple(x.shape)}, which is neither a spatial map "
                f"(B, C, H, W) / (B, H, W, C) nor tokens (B, N, C). Spatial contrasting needs spatial "
                f"features: hook an earlier layer (e.g. a stage or block, not the pooled head)."
            )
        c = self.channels
        if c is not None and x.shape[1] == c and x.shape[3] == c:  # H == C or W == C: dims alone can't tell
            if self.output_fmt in ("NCHW", "NHWC"):
                return self.output_fmt.lower()
            raise self._fail(x, f"both dim 1 and dim 3 equal its {c} channels")
        if c is not None and x.shape[1] == c:
            return "nchw"
        if c is not None and x.shape[3] == c:
            return "nhwc"
        if x.shape[2] == x.shape[3] and x.shape[1] != x.shape[2]:
            return "nchw"  # a square map in the last two dims
        if x.shape[1] == x.shape[2] and x.shape[3] != x.shape[2]:
            return "nhwc"
        raise self._fail(x, "its channel count is unknown and the map is not square")

    def _tokens_to_map(self, x: Tensor, input_hw: tuple[int, int] | None) -> Tensor:
        if x.ndim != 3:
            raise self._fail(x, "layout 'tokens' needs a (B, N, C) tensor")
        b, n, c = x.shape
        prefix, grid = self._token_grid(n, input_hw)
        if grid is None:
            raise self._fail(x, f"{n} tokens do not form a grid after {prefix} prefix tokens")
        patches = x[:, prefix:]  # (B, gh * gw, C)
        return patches.transpose(1, 2).reshape(b, c, grid[0], grid[1])  # (B, C, gh, gw)

    def _token_grid(self, n: int, input_hw: tuple[int, int] | None) -> tuple[int, tuple[int, int] | None]:
        prefixes = [self.num_prefix_tokens] if self.num_prefix_tokens is not None else [0, 1]
        for prefix in prefixes:
            candidates = []
            if input_hw is not None and self.patch_size is not None:
                candidates.append((input_hw[0] // self.patch_size[0], input_hw[1] // self.patch_size[1]))
            if self.grid_size is not None:
                candidates.append(self.grid_size)
            side = math.isqrt(max(n - prefix, 0))
            candidates.append((side, side))
            for grid in candidates:
                if grid[0] * grid[1] == n - prefix and grid[0] > 0:
                    return prefix, grid
        return prefixes[0], None
