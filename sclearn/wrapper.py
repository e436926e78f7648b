"""``MultiLayerSC``: attach Spatial Contrasting losses to any layers of any backbone with forward hooks.

    model = MultiLayerSC(timm.create_model("resnet18"), layers=["layer3"])
    out = model(images)                      # out.logits, out.sc_losses, out.sc_loss
    loss = F.cross_entropy(out.logits, y) + out.sc_loss

Design, after timm's ``FeatureHooks``:
- Hooks are registered by module name, so any timm or torchvision model works without FX tracing.
- Patches are sampled *inside* the hook. The full map is never kept, and a following in-place op
  (``ReLU(inplace=True)``) cannot change what SC sees.
- Hook state is keyed by device, so replicas (DataParallel) never mix their patches.
- Hooks only act during ``MultiLayerSC.forward``; calling ``.backbone`` directly is the plain model.
- SC-only calls (``return_logits=False``) stop the backbone once every hooked layer has run: the layers
  after the deepest one (e.g. layer4 and the head) are never computed.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .hooks import StopForward, run_until_stopped
from .layouts import FeatureLayout, Layout
from .losses import SpatialContrastiveLoss, check_sc_batch
from .sampling import resolve_patch_size


@dataclass
class SCOutput:
    """What :class:`MultiLayerSC` returns.

    Attributes:
        logits: The backbone's usual output, unchanged (e.g. (B, num_classes)).
        sc_losses: Layer name -> scalar SC loss. Empty when SC was not computed.
        sc_loss: The weighted sum of ``sc_losses`` (a zero scalar when empty).
    """

    logits: Any
    sc_losses: dict[str, Tensor] = field(default_factory=dict)
    sc_loss: Tensor | None = None


class _HookState:
    """State shared by the hooks of one wrapper (and by its replicas), keyed by device."""

    def __init__(self) -> None:
        self.capturing: set[torch.device] = set()
        self.stop_when_done: set[torch.device] = set()  # SC-only calls: stop once every layer has run
        self.input_hw: dict[torch.device, tuple[int, int]] = {}
        self.patches: dict[torch.device, dict[str, Tensor]] = {}
        self.map_shapes: dict[str, tuple[int, ...]] | None = None  # (C, H, W) per layer, while check_for_training runs


def _sanitize(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys may not contain dots


def _degenerate_patch_error(name: str, map_hw: tuple[int, int], patch_hw: tuple[int, int]) -> ValueError:
    h, w = map_hw
    fix = ("no smaller patch exists: hook an earlier layer with a larger map, or feed larger images (image_size)"
           if h == w == 1 else "use a smaller patch_size (e.g. 0.5), or hook an earlier layer with a larger map")
    return ValueError(
        f"SC at layer {name!r} is degenerate: its {patch_hw[0]}x{patch_hw[1]} patch covers the whole {h}x{w} "
        f"feature map, so both patches of an image are identical and SC learns nothing from them; {fix}."
    )
def _load_old_loss_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before ``sc_heads`` became ``losses`` still load: rename their keys."""
    old = prefix + "sc_heads."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "losses." + key[len(old):]] = state_dict.pop(key)


def _unknown_layer_error(name: str, names: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"close matches: {close}" if close else f"top-level modules: {[n for n in names if n and '.' not in n]}"
    return ValueError(
        f"layer {name!r} is not a module of the backbone ({hint}). "
        f"Layer names come from backbone.named_modules()."
    )


class MultiLayerSC(nn.Module):
    """Wraps a backbone and adds a Spatial Contrasting loss at each of ``layers``.

    Args:
        backbone: Any ``nn.Module`` (timm, torchvision or your own).
        layers: Names from ``backbone.named_modules()``, e.g. ``["layer3"]``.
        weights: Per-layer weights in ``sc_loss``: a sequence aligned with ``layers`` or a mapping.
            Default 1 for every layer.
        loss: One :class:`SpatialContrastiveLoss` configuration for all layers, or a mapping from layer to
            loss. Default ``SpatialContrastiveLoss()``: the paper's L2, T = 1, about 30% of the map.
            A single loss with a projector is copied per layer, since layers differ in channels.
        layouts: Per-layer output layout (``"nchw"``, ``"nhwc"``, ``"tokens"`` or a callable), for layers
            whose layout cannot be inferred. Default ``"auto"``.
        sc_in_eval: Also compute SC in eval mode. By default eval mode skips it at no cost.

    Shape:
        - Input: whatever the backbone takes, e.g. (B, 3, H, W). SC needs B >= 2.
        - Output: :class:`SCOutput`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: str | Sequence[str],
        *,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        loss: SpatialContrastiveLoss | Mapping[str, SpatialContrastiveLoss] | None = None,
        layouts: Mapping[str, Layout] | None = None,
        sc_in_eval: bool = False,
    ) -> None:
        super().__init__()
        if any(isinstance(m, MultiLayerSC) for m in backbone.modules()):
            raise ValueError(
                "the backbone already holds a MultiLayerSC: wrap the plain backbone once, naming every layer "
                "(MultiLayerSC(backbone, layers=[...all of them...])), or unwrap() the inner one first"
            )
        layers = [layers] if isinstance(layers, str) else list(layers)
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers names a layer twice: {layers}")
        if not layers:
            raise ValueError("layers is empty: name at least one layer, e.g. layers=['layer3']")
        modules = dict(backbone.named_modules())
        for name in layers:
            if name not in modules:
                raise _unknown_layer_error(name, list(modules))
        self.backbone = backbone
        self.layers: tuple[str, ...] = tuple(layers)
        self.weights: dict[str, float] = self._resolve_weights(weights)
        # The loss modules (patch sampling, optional projector), keyed by layer name with "." -> "__".
        self.losses = nn.ModuleDict({_sanitize(n): m for n, m in self._resolve_losses(loss).items()})
        self.register_load_state_dict_pre_hook(_load_old_loss_keys)
        layouts = dict(layouts or {})
        unknown = set(layouts) - set(layers)
        if unknown:
            raise ValueError(f"layouts names layers that are not hooked: {sorted(unknown)}; hooked: {layers}")
        self._layouts = {n: FeatureLayout(backbone, n, modules[n], layouts.get(n, "auto")) for n in layers}
        self.sc_in_eval = sc_in_eval
        self._state = _HookState()
        self._handles = [modules[n].register_forward_hook(partial(self._hook, n)) for n in layers]

    # -- configuration -------------------------------------------------------------------------------
    def _resolve_weights(self, weights) -> dict[str, float]:
        if weights is None:
            return {n: 1.0 for n in self.layers}
        if isinstance(weights, Mapping):
            missing, extra = set(self.layers) - set(weights), set(weights) - set(self.layers)
            if missing or extra:
                raise ValueError(
                    f"weights must name exactly the hooked layers {list(self.layers)}; "
                    f"missing {sorted(missing)}, unknown {sorted(extra)}"
                )
            return {n: float(weights[n]) for n in self.layers}
        weights = list(weights)
        if len(weights) != len(self.layers):
            raise ValueError(f"got {len(weights)} weights for {len(self.layers)} layers {list(self.layers)}")
        return {n: float(w) for n, w in zip(self.layers, weights)}

    def _resolve_losses(self, loss) -> dict[str, SpatialContrastiveLoss]:
        if isinstance(loss, Mapping):
            missing, extra = set(self.layers) - set(loss), set(loss) - set(self.layers)
            if missing or extra:
                raise ValueError(
                    f"loss mapping must name exactly the hooked layers {list(self.layers)}; "
                    f"missing {sorted(missing)}, unknown {sorted(extra)}"
                )
            return {n: loss[n] for n in self.layers}
        if loss is None:
            return {n: SpatialContrastiveLoss() for n in self.layers}
        if not isinstance(loss, SpatialContrastiveLoss):
            raise TypeError(f"loss must be a SpatialContrastiveLoss or a mapping of them, got {type(loss)}")
        if loss.projector is not None and len(self.layers) > 1:
            import copy

            return {n: copy.deepcopy(loss) for n in self.layers}
        return {n: loss for n in self.layers}

    def loss_for(self, layer: str) -> SpatialContrastiveLoss:
        """The SC loss module attached to ``layer``."""
        return self.losses[_sanitize(layer)]

    def layout_for(self, layer: str) -> FeatureLayout:
        """How ``layer``'s output becomes a (B, C, H, W) map: ``layout(output, input_hw)`` (NCHW, NHWC or tokens)."""
        return self._layouts[layer]

    @property
    def sc_heads(self) -> nn.ModuleDict:
        """Deprecated name of :attr:`losses` (it holds losses, not heads)."""
        warnings.warn("MultiLayerSC.sc_heads is deprecated; use MultiLayerSC.losses", DeprecationWarning,
                      stacklevel=2)
        return self.losses

    # -- hooks ---------------------------------------------------------------------------------------
    def _hook(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        x = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(x, Tensor):
            raise TypeError(f"layer {name!r} returned {type(output)}, not a tensor; hook another layer")
        state = self._state
        if x.device not in state.capturing:
            return
        patches = state.patches[x.device]
        if name in patches:  # a second call would silently replace the first call's patches
            parent = name.rpartition(".")[0]
            raise ValueError(
                f"layer {name!r} runs more than once per forward pass (a module the network reuses, like the "
                f"ReLU that each torchvision ResNet block calls twice), so SC cannot tell which output to use. "
                f"Hook a module that runs once" + (f", e.g. its parent {parent!r}." if parent else ".")
            )
        with torch.profiler.record_function("sclearn.sc_sample"):  # a named span in profiler traces
            fmap = self._layouts[name](x, state.input_hw.get(x.device))  # (B, C, H, W)
            if fmap.shape[-2:] == (1, 1):
                raise _degenerate_patch_error(name, (1, 1), (1, 1))
            if state.map_shapes is not None:
                state.map_shapes[name] = tuple(fmap.shape[1:])
            patches[name] = self.loss_for(name).sample(fmap)  # (B, P, D)
        if x.device in state.stop_when_done and len(patches) == len(self.layers):
            raise StopForward(state)  # SC only: nothing after the deepest hooked layer is needed

    def remove_hooks(self) -> None:
        """Detach every hook. The backbone is left exactly as it was before wrapping."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def unwrap(self) -> nn.Module:
        """Remove the hooks and return the plain backbone."""
        self.remove_hooks()
        return self.backbone

    @property
    def has_hooks(self) -> bool:
        return bool(self._handles)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: Tensor, *args: Any, compute_sc: bool | None = None, return_logits: bool = True,
                **kwargs: Any) -> SCOutput:
        """Run the backbone; compute SC at the hooked layers in training mode (or when ``compute_sc``).

        Args:
            x: The backbone's input, e.g. (B, C, H, W).
            compute_sc: Force SC on (True) or off (False). Default: ``self.training or self.sc_in_eval``.
            return_logits: False gives ``logits=None``, for SC-only training: the backbone stops as soon as
                every hooked layer has run, so the later layers (e.g. layer4 and the head) are not computed
                and their batch-norm statistics stay as they were. SC losses and gradients are those of the
                full forward. Under DDP (``find_unused_parameters=True``) the later layers count as unused;
                ``torch.compile`` takes the early stop too.
            *args, **kwargs: Passed to the backbone.
        """
        if compute_sc is None:
            compute_sc = self.training or self.sc_in_eval
        if not compute_sc:
            return SCOutput(logits=self.backbone(x, *args, **kwargs), sc_loss=x.new_zeros((), dtype=torch.float32))
        if not self._handles:
            raise RuntimeError("the hooks were removed; SC cannot be computed. Wrap the backbone again.")
        if getattr(self.backbone, "grad_checkpointing", False) and self.training:
            # Recomputation re-runs the hooked layer without the hook's sampling; torch.utils.checkpoint
            # then sees a different graph (and timm may bypass the hooked stage module altogether).
            raise ValueError(
                "MultiLayerSC does not support activation checkpointing: call "
                "backbone.set_grad_checkpointing(False), or hook a layer outside the checkpointed blocks."
            )
        # Fail before the backbone does, with the reason that matters here.
        check_sc_batch(x.shape[0], "Use drop_last=True in the DataLoader, or compute_sc=False for "
                                   "single-image inference.")
        state, dev = self._state, x.device
        state.capturing.add(dev)
        if not return_logits:
            state.stop_when_done.add(dev)
        state.input_hw[dev] = tuple(x.shape[-2:])
        state.patches[dev] = {}
        try:
            logits = run_until_stopped(state, self.backbone, x, *args, **kwargs)
        finally:
            state.capturing.discard(dev)
            state.stop_when_done.discard(dev)
            patches = state.patches.pop(dev, {})
        not_run = [n for n in self.layers if n not in patches]
        if not_run:
            raise RuntimeError(f"hooked layers {not_run} did not run in the backbone's forward pass")
        with torch.profiler.record_function("sclearn.sc_score"):
            sc_losses = {n: self.loss_for(n).score(patches[n]) for n in self.layers}
            sc_loss = sum(self.weights[n] * sc_losses[n] for n in self.layers)
        return SCOutput(logits=logits if return_logits else None, sc_losses=sc_losses, sc_loss=sc_loss)

    @torch.no_grad()
    def init_lazy(self, example: Tensor) -> None:
        """Materialise lazy projector parameters with one forward pass, before building an optimizer.

        Runs in eval mode, so batch-norm statistics are not touched.
        """
        was_training = self.training
        self.eval()
        try:
            self(example, compute_sc=True)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def check_for_training(self, example: Tensor) -> dict[str, tuple[int, ...]]:
        """One dry SC forward pass before training: raises now what the first step would (a patch larger than
        the map, an impossible ``min_offset``, a layer that runs twice) and refuses a patch covering the whole
        map, for which both patches of an image are identical. Materialises lazy projectors too.

        Runs in eval mode and restores the RNG, so neither batch-norm statistics nor later draws change.

        Args:
            example: A batch of at least 2 inputs, e.g. (2, C, H, W).

        Returns:
            Each hooked layer's feature map shape (C, H, W).
        """
        self._state.map_shapes = {}
        try:
            with torch.random.fork_rng(devices=[]):
                self.init_lazy(example)
            shapes = self._state.map_shapes
        finally:
            self._state.map_shapes = None
        for name, (_, h, w) in shapes.items():
            patch_hw = resolve_patch_size(self.loss_for(name).patch_size, h, w)
            if patch_hw == (h, w):
                raise _degenerate_patch_error(name, (h, w), patch_hw)
        return shapes

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, weights={self.weights}"
