"""Build backbones by name, check their heads, and export / load their weights as safetensors.

The exported file holds the *backbone's* ``state_dict`` with its own key names (no wrapper prefixes), so
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=k)`` and a
torchvision model's ``load_state_dict`` both read it directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

TORCHVISION_PREFIX = "torchvision:"


def build_backbone(name: str, *, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """A timm model (``"resnet18"``, ``"sc_cifar10"``...) or a torchvision one (``"torchvision:resnet18"``).

    Raises:
        ValueError: For an unknown name (with close timm matches), or a torchvision model asked for a
            channel count other than 3.
    """
    from . import models  # noqa: F401  (registers the Table-4 nets with timm)

    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        tv_name = name[len(TORCHVISION_PREFIX):]
        if in_chans != 3:
            raise ValueError(
                f"torchvision model {tv_name!r} takes 3-channel input; use channels=3 (grayscale is "
                f"repeated to RGB) or a timm model, which accepts in_chans"
            )
        if tv_name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {tv_name!r}; see torchvision.models.list_models()")
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        raise ValueError(
            f"unknown model {name!r}. timm models like it: {close}. For torchvision prefix the name with "
            f"{TORCHVISION_PREFIX!r}, e.g. 'torchvision:resnet18'."
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@torch.no_grad()
def check_head(model: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    """Raise a clear error when the model's output size differs from the number of classes."""
    was_training = model.training
    model.eval()
    try:
        out = model(example[:2])
    finally:
        model.train(was_training)
    width = out.shape[-1]
    if out.ndim != 2 or width != num_classes:
        raise ValueError(
            f"the model outputs shape {tuple(out.shape)} but the data has {num_classes} classes. Create it "
            f"with num_classes={num_classes} (timm: timm.create_model(name, num_classes={num_classes}); or "
            f"model.reset_classifier({num_classes}))."
        )


def export_backbone(backbone: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``backbone.state_dict()`` as safetensors, plus ``meta`` as JSON beside it (``x.safetensors`` ->
    ``x.json``)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _strip_wrappers(key: str) -> str:
    """Drop the prefixes that torch.compile (``_orig_mod.``) and DDP/DataParallel (``module.``) add."""
    while key.startswith(("_orig_mod.", "module.")):
        key = key.split(".", 1)[1]
    return key


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier, whose shape may legitimately differ (another class count)."""
    names = {"fc.", "classifier.", "head.", "heads."}
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier")
    for name in [classifier] if isinstance(classifier, str) else (classifier or []):
        names.add(name + ".")
        if "." in name:
            names.add(name.rsplit(".", 1)[0] + ".")  # e.g. head.fc -> head. (its BN is class-sized too)
    return tuple(names)


def weights_file(source: str | Path) -> Path:
    """The safetensors file of a weights source: the file itself, or a dir's backbone.safetensors (a run) or
    model.safetensors (a trainer checkpoint)."""
    source = Path(source)
    if source.is_dir():
        for candidate in (source / "backbone.safetensors", source / "model.safetensors"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{source} holds neither backbone.safetensors nor model.safetensors")
    if not source.is_file():
        raise FileNotFoundError(f"init_from={str(source)!r} does not exist")
    return source


def _weights_meta(path: Path) -> tuple[dict[str, Any], Path] | None:
    """(architecture and in_chans, the file that says so) for an exported backbone or a trainer checkpoint."""
    beside = path.with_suffix(".json")  # backbone.json next to backbone.safetensors
    if beside.is_file():
        meta = json.loads(beside.read_text())
        return {"architecture": meta.get("architecture"), "in_chans": meta.get("in_chans")}, beside
    from .rundir import run_dir_of

    run = run_dir_of(path.parent)  # model.safetensors of <run>/checkpoints/ckpt-…
    if run is not None:
        config = json.loads((run / "config.json").read_text())
        return {"architecture": config.get("backbone"), "in_chans": config.get("channels")}, run / "config.json"
    return None


def _base_name(name: str) -> str:
    return name.split(".", 1)[0]  # timm's "resnet18.a1_in1k" is the architecture "resnet18"


def check_init_source(source: str | Path, *, architecture: str, in_chans: int) -> Path:
    """Fail fast on an ``init_from`` that is missing, truncated, or holds another architecture's weights.

    Reads only the safetensors header and the metadata beside it (``backbone.json``, or a checkpoint's run
    ``config.json``), so it runs before any data is loaded. Returns the weights file.
    """
    path = weights_file(source)
    try:
        with safe_open(str(path), "pt"):
            pass
    except SafetensorError as e:
        raise ValueError(f"init_from={str(source)!r}: {path} is truncated or corrupt ({e}); export it again or "
                         "point init_from at another checkpoint") from None
    try:
        found = _weights_meta(path)
    except (OSError, ValueError):  # unreadable metadata: the shape check at load time still guards
        found = None
    if found is not None:
        meta, where = found
        if meta["architecture"] is not None and _base_name(meta["architecture"]) != _base_name(architecture):
            raise ValueError(
                f"init_from={str(source)!r} holds weights of {meta['architecture']!r} (says {where}), but "
                f"backbone={architecture!r}. Set backbone={meta['architecture']!r} to start from them, or "
                f"give init_from weights of {architecture!r}."
            )
        if meta["in_chans"] not in (None, in_chans):
            raise ValueError(
                f"init_from={str(source)!r} was trained with channels={meta['in_chans']} (says {where}), but "
                f"channels={in_chans}. Use channels={meta['in_chans']}."
            )
    return path


def load_backbone_weights(backbone: nn.Module, source: str | Path) -> list[str]:
    """Load weights into ``backbone`` from an exported file, a run dir or a trainer checkpoint dir.

    Classifier tensors whose shape differs (another class count) are skipped and stay freshly initialised;
    any other shape difference is an error.

    Returns:
        The names of the skipped tensors.
    """
    source = weights_file(source)
    state = {_strip_wrappers(k): v for k, v in load_file(str(source)).items()}
    if any(k.startswith("backbone.") for k in state):  # a trainer checkpoint of the whole wrapper
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    heads = _classifier_prefixes(backbone)
    not_head = [k for k in skipped if not k.startswith(heads)]
    if not_head:
        raise ValueError(
            f"{source} has different shapes outside the classifier ({not_head[:3]}: file "
            f"{tuple(state[not_head[0]].shape)}, model {tuple(own[not_head[0]].shape)}). Build the model as it "
            f"was trained (same architecture, in_chans/channels and options)."
        )
    state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k not in skipped]:
        raise ValueError(
            f"weights in {source} do not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            f"Was it exported from the same architecture?"
        )
    return skipped
