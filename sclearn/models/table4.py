"""The three networks of Table 4 in Hoffer et al. (2016), registered with timm.

Reference: Hoffer, Hubara, Ailon (2016), "Spatial contrasting for deep unsupervised learning", appendix
Table 4. After ``import sclearn.models`` (``import sclearn`` does it) the nets are
ordinary timm models::

    model = timm.create_model("sc_cifar10", num_classes=10)
    model = timm.create_model("sc_cifar10", pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file="backbone.safetensors"))

Every net is ``stages`` (an ``nn.Sequential`` of blocks, one per group of Table-4 rows that ends in a
max-pool) followed by ``head``. The "Spatial contrasting criterion" line of Table 4 is the output of one
stage, whose name is ``model.sc_layer``; pass it to ``MultiLayerSC(model, layers=[model.sc_layer])``.

==========  ============  ==========  ==========================  ===============  ==========
name        input         sc_layer    SC map (C, H, W)            num_features     params
==========  ============  ==========  ==========================  ===============  ==========
sc_stl10    3 x 96 x 96   stages.2    (192, 24, 24)               128              1,712,330
sc_cifar10  3 x 32 x 32   stages.1    (192, 8, 8)                 192              1,371,572
sc_mnist    1 x 28 x 28   stages.1    (64, 7, 7)                  128              131,860
==========  ============  ==========  ==========================  ===============  ==========

(params: default ``head="paper"``, 10 classes, default ``in_chans``; ``TABLE4`` holds the same facts and a
test checks them.)

Choices Table 4 leaves open, made here:

- Padding is "same" for every conv and ``(k - 1) // 2`` for every max-pool, so maps go
  MNIST 28 -> 14 -> 7, CIFAR 32 -> 16 -> 8, STL 96 -> 48 -> 24 -> 12 (the 3x3/2 pools round up, as Caffe's
  NIN did; unpadded they would give 47 -> 23).
- LeakyReLU slope 0.1 (Rasmus et al. 2015, whose conv-large net the CIFAR column follows).
- A conv followed by BN has no bias (BN's shift replaces it); convs without BN keep theirs.
- STL-10's "fully-connected 10" acts on the global average of the 12x12x128 map (NIN style, any input size)
  rather than on the flattened map. ``drop_rate`` (default 0.5 for STL, 0 otherwise) sets both STL dropouts.
- CIFAR/MNIST classifier: Table 4 ends with "1x1 conv 10, BN, LeakyReLU/ReLU, global average pooling",
  i.e. an activation *on the class scores* (as in NIN). ``head="paper"`` keeps it by default. On MNIST the
  ReLU makes scores >= 0, and a class map that is negative everywhere passes no gradient (with LeakyReLU
  only a 10x smaller one); ``logit_act=False`` drops the activation. ``head="linear"`` replaces the whole
  head by global average pooling + (dropout) + ``nn.Linear`` (for STL-10 that is Table 4's head already).
- No activation is in-place, so a forward hook on any module sees that module's own output.
- PyTorch's default initialisation.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

__all__ = ["TABLE4", "Table4Head", "Table4Net", "sc_cifar10", "sc_mnist", "sc_stl10"]

_logger = logging.getLogger(__name__)

ActLayer = Callable[[], nn.Module]
_RELU: ActLayer = nn.ReLU
_LEAKY: ActLayer = partial(nn.LeakyReLU, 0.1)


def _conv(cin: int, cout: int, k: int, act: ActLayer, bn: bool = True) -> nn.Sequential:
    """One Table-4 row "k x k conv. cout [BN] act", with same padding."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)
    )
    if bn:
        layers["bn"] = nn.BatchNorm2d(cout)
    layers["act"] = act()
    return nn.Sequential(layers)


def _pool(k: int) -> nn.MaxPool2d:
    """The row "k x k max-pooling, stride 2", padded so that a 3x3 pool halves even sizes (96 -> 48)."""
    return nn.MaxPool2d(k, stride=2, padding=(k - 1) // 2)


def _stl10_stages(in_chans: int, drop_rate: float) -> list[nn.Sequential]:
    act = _RELU
    return [
        nn.Sequential(_conv(in_chans, 64, 5, act), _conv(64, 160, 1, act), _conv(160, 96, 1, act), _pool(3)),
        nn.Sequential(_conv(96, 192, 5, act), _conv(192, 192, 1, act), _conv(192, 192, 1, act), _pool(3)),
        nn.Sequential(_conv(192, 192, 3, act), _conv(192, 192, 1, act), _conv(192, 192, 1, act)),  # SC here
        nn.Sequential(
            _conv(192, 256, 3, act, bn=False),
            _pool(3),
            nn.Dropout(drop_rate),
            _conv(256, 128, 3, act, bn=False),
        ),
    ]


def _cifar10_stages(in_chans: int, drop_rate: float) -> list[nn.Sequential]:
    act = _LEAKY
    return [
        nn.Sequential(
            _conv(in_chans, 96, 3, act),
            _conv(96, 96, 3, act),
            _conv(96, 96, 3, act),
            _pool(2),
            nn.BatchNorm2d(96),
        ),
        nn.Sequential(
            _conv(96, 192, 3, act),
            _conv(192, 192, 3, act),
            _conv(192, 192, 3, act),
            _pool(2),
            nn.BatchNorm2d(192),
        ),  # SC here
        nn.Sequential(_conv(192, 192, 3, act), _conv(192, 192, 1, act)),
    ]


def _mnist_stages(in_chans: int, drop_rate: float) -> list[nn.Sequential]:
    act = _RELU
    return [
        nn.Sequential(_conv(in_chans, 32, 5, act, bn=False), _pool(2), nn.BatchNorm2d(32)),
        nn.Sequential(_conv(32, 64, 3, act), _conv(64, 64, 3, act), _pool(2), nn.BatchNorm2d(64)),  # SC here
        nn.Sequential(_conv(64, 128, 3, act)),
    ]


@dataclass(frozen=True)
class _Arch:
    """Per-net facts; ``chs``/``reductions`` describe each stage's output (the tests check them)."""

    stages: Callable[[int, float], list[nn.Sequential]]
    chs: tuple[int, ...]
    reductions: tuple[int, ...]
    sc_stage: int  # index of the stage whose output is Table 4's "Spatial contrasting criterion" map
    act: ActLayer
    paper_head: str  # Table4Head kind of Table 4's own classifier
    drop_rate: float


_ARCHS: dict[str, _Arch] = {
    "stl10": _Arch(_stl10_stages, (96, 192, 192, 128), (2, 4, 4, 8), 2, _RELU, "linear", 0.5),
    "cifar10": _Arch(_cifar10_stages, (96, 192, 192), (2, 4, 4), 1, _LEAKY, "conv", 0.0),
    "mnist": _Arch(_mnist_stages, (32, 64, 128), (2, 4, 4), 1, _RELU, "conv", 0.0),
}


class Table4Head(nn.Module):
    """Classifier on the last feature map.

    ``kind="conv"`` (Table 4, CIFAR/MNIST): 1x1 conv -> BN -> act -> global average pool.
    ``kind="linear"``: global average pool -> dropout -> ``nn.Linear``.
    With ``num_classes=0`` both return the pooled features.

    Shape: (B, C, H, W) -> (B, num_classes), or (B, C) with ``pre_logits=True`` or ``num_classes=0``.
    """

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        kind: str,
        act: ActLayer,
        drop_rate: float = 0.0,
        logit_act: bool = True,
    ):
        super().__init__()
        if kind not in ("conv", "linear"):
            raise ValueError(f"head kind must be 'conv' or 'linear', got {kind!r}")
        self.kind = kind
        self.drop = nn.Dropout(drop_rate) if kind == "linear" else nn.Identity()
        if num_classes <= 0:
            self.fc, self.norm, self.act = nn.Identity(), nn.Identity(), nn.Identity()
        elif kind == "conv":
            self.fc = nn.Conv2d(in_chs, num_classes, 1, bias=False)  # BN below supplies the shift
            self.norm = nn.BatchNorm2d(num_classes)
            self.act = act() if logit_act else nn.Identity()
        else:
            self.fc, self.norm, self.act = nn.Linear(in_chs, num_classes), nn.Identity(), nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.kind == "conv" and not pre_logits:
            x = self.act(self.norm(self.fc(x)))  # (B, K, H, W): class maps, pooled below
            return x.mean((2, 3))  # (B, K)
        x = self.drop(x.mean((2, 3)))  # (B, C)
        return x if pre_logits else self.fc(x)  # (B, K)


class Table4Net(nn.Module):
    """One of the Table-4 nets, with the timm model protocol.

    Args:
        arch: "stl10", "cifar10" or "mnist".
        num_classes: number of classes; 0 makes ``forward`` return pooled features (B, num_features).
        in_chans: input channels (the registered cfgs default to 3, 3 and 1).
        head: "paper" (Table 4's classifier) or "linear" (global average pool + ``nn.Linear``).
        drop_rate: dropout probability; ``None`` uses Table 4's (0.5 for STL-10, none for the others).
            STL-10 uses it in both of its dropout layers; for the others it is the "linear" head's dropout.
        logit_act: keep Table 4's activation after the class-score BN (``head="paper"``, CIFAR/MNIST).
        global_pool: only "avg" (accepted for timm compatibility).

    Attributes:
        stages: ``nn.Sequential`` of the blocks; ``feature_info`` describes each block's output.
        head: the ``Table4Head``; ``get_classifier()`` is its class-score layer ``head.fc``.
        sc_layer: name of the module whose output is Table 4's "Spatial contrasting criterion" map.
        num_features: channels entering the head.
    """

    def __init__(
        self,
        arch: str = "cifar10",
        num_classes: int = 10,
        in_chans: int = 3,
        head: str = "paper",
        drop_rate: float | None = None,
        logit_act: bool = True,
        global_pool: str = "avg",
    ):
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
        if head not in ("paper", "linear"):
            raise ValueError(f"head must be 'paper' or 'linear', got {head!r}")
        _check_pool(global_pool)
        spec = _ARCHS[arch]
        self.arch, self.head_type, self.logit_act = arch, head, logit_act
        self.num_classes, self.in_chans = num_classes, in_chans
        self.drop_rate = spec.drop_rate if drop_rate is None else drop_rate
        self.num_features = self.head_hidden_size = spec.chs[-1]
        self.sc_layer = f"stages.{spec.sc_stage}"
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, (c, r) in enumerate(zip(spec.chs, spec.reductions))
        ]
        self.stages = nn.Sequential(*spec.stages(in_chans, self.drop_rate))
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> Table4Head:
        spec = _ARCHS[self.arch]
        kind = spec.paper_head if self.head_type == "paper" else "linear"
        return Table4Head(self.num_features, num_classes, kind, spec.act, self.drop_rate, self.logit_act)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise lr decay (one group per stage)."""
        return {"stem": r"^stages\.0", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a freshly initialised one for ``num_classes`` (0: pooled features)."""
        _check_pool(global_pool or "avg")
        device = next(self.head.parameters(), next(self.stages.parameters())).device
        self.num_classes = num_classes
        self.head = self._make_head(num_classes).to(device)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)  # (B, num_features, H', W')

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)  # (B, num_classes), or (B, num_features) if pre_logits

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> None:
    if global_pool != "avg":
        raise ValueError(f"Table-4 nets only support global_pool='avg', got {global_pool!r}")


def _filter_head(state_dict: dict[str, Tensor], model: Table4Net) -> dict[str, Tensor]:
    """Make a checkpoint's ``head.*`` entries fit ``model``'s head; leave everything else to a strict load.

    timm only drops ``<classifier>.weight/.bias`` when ``num_classes`` differs from the cfg's, which misses the
    paper head's BN buffers and checkpoints saved with another class count or head type. Entries that do
    not fit are replaced by the model's freshly initialised ones (so the load can stay strict).
    """
    own = model.state_dict()
    out = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    reset = []
    for k, v in own.items():
        if not k.startswith("head."):
            continue
        ckpt = state_dict.get(k)
        fits = ckpt is not None and ckpt.shape == v.shape
        out[k] = ckpt if fits else v
        if not fits:
            reset.append(k)
    if reset:
        _logger.info("Checkpoint head does not fit the model; re-initialised: %s", ", ".join(reset))
    return out


def _cfg(input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "first_conv": "stages.0.0.conv",
        "classifier": ("head.fc", "head.norm"),
        "license": "mit",
    }


# STL-10 images are ImageNet images, so ImageNet statistics; CIFAR-10 / MNIST: the usual train-set statistics.
default_cfgs = generate_default_cfgs(
    {
        "sc_stl10": _cfg((3, 96, 96), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        "sc_cifar10": _cfg((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "sc_mnist": _cfg((1, 28, 28), (0.1307,), (0.3081,)),
    }
)


def _create(variant: str, arch: str, pretrained: bool, **kwargs: Any) -> Table4Net:
    n_stages = len(_ARCHS[arch].chs)
    return build_model_with_cfg(
        Table4Net,
        variant,
        pretrained,
        arch=arch,
        pretrained_filter_fn=_filter_head,
        feature_cfg={"flatten_sequential": True, "out_indices": tuple(range(n_stages))},
        **kwargs,
    )


@register_model
def sc_stl10(pretrained: bool = False, **kwargs: Any) -> Table4Net:
    """Table 4, STL-10 column: 96x96 RGB; SC on ``stages.2``, a (192, 24, 24) map."""
    return _create("sc_stl10", "stl10", pretrained, **kwargs)


@register_model
def sc_cifar10(pretrained: bool = False, **kwargs: Any) -> Table4Net:
    """Table 4, CIFAR-10 column: 32x32 RGB; SC on ``stages.1``, a (192, 8, 8) map."""
    return _create("sc_cifar10", "cifar10", pretrained, **kwargs)


@register_model
def sc_mnist(pretrained: bool = False, **kwargs: Any) -> Table4Net:
    """Table 4, MNIST column: 28x28 mono; SC on ``stages.1``, a (64, 7, 7) map."""
    return _create("sc_mnist", "mnist", pretrained, **kwargs)


# Documented facts per registered net (default kwargs); tests/test_models.py checks every entry.
TABLE4: dict[str, dict[str, Any]] = {
    "sc_stl10": {
        "input_size": (3, 96, 96),
        "sc_layer": "stages.2",
        "sc_map_shape": (192, 24, 24),
        "num_features": 128,
        "params": 1_712_330,
    },
    "sc_cifar10": {
        "input_size": (3, 32, 32),
        "sc_layer": "stages.1",
        "sc_map_shape": (192, 8, 8),
        "num_features": 192,
        "params": 1_371_572,
    },
    "sc_mnist": {
        "input_size": (1, 28, 28),
        "sc_layer": "stages.1",
        "sc_map_shape": (64, 7, 7),
        "num_features": 128,
        "params": 131_860,
    },
}
