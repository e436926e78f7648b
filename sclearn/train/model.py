"""The network a run trains: the backbone (built or given, checked, initialised), its frozen layers, the SC
wrapper, and the train / eval modes of a stage."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from ..backbones import build_backbone, check_head, load_backbone_weights
from ..builders import build_sc_model
from ..config import FREEZE_STAGES, TrainConfig
from ..wrapper import MultiLayerSC

__all__ = ["build_model", "frozen_modules", "set_train_mode", "unwrap"]


def frozen_modules(backbone: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules of ``backbone`` that ``TrainConfig.freeze`` names; an unknown name, or a freeze of every
    parameter, is a ValueError that says what to pass instead."""
    modules = dict(backbone.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        close = {n: difflib.get_close_matches(n, list(modules), n=3) for n in unknown}
        raise ValueError(f"freeze names modules the backbone does not have: {close} (name: close matches). "
                         "Names come from backbone.named_modules().")
    frozen = [modules[n] for n in names]
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    if "" in names or all(id(p) in frozen_ids for p in backbone.parameters()):
        raise ValueError(f"freeze={list(names)} leaves no backbone parameter to train; freeze "
                         "only the early stages (e.g. freeze=('stages.0',))")
    return frozen


def build_model(config: TrainConfig, num_classes: int, example: Tensor, *, model: nn.Module | None = None,
                log: Callable[[str], None] = print) -> tuple[nn.Module, list[nn.Module]]:
    """(the module to train, its frozen modules): ``model`` or ``config.backbone``, loaded from ``init_from``, wrapped
    with SC when the mode uses it, then channels-last and compiled as ``config`` says.

    Args:
        example: A batch ``(B, C, H, W)`` of the data: checks that the head has ``num_classes`` outputs, and runs
            one dry SC forward, so that patch, map and hook errors show now rather than at step 1.
    """
    backbone = model if model is not None else build_backbone(
        config.backbone, num_classes=num_classes, in_chans=config.channels, **dict(config.model_kwargs))
    check_head(backbone, example, num_classes)
    if config.init_from:
        skipped = load_backbone_weights(backbone, config.init_from)
        if skipped:
            log(f"init_from: re-initialised {skipped} (different shape)")
    frozen = frozen_modules(backbone, config.freeze)
    net = build_sc_model(config, backbone) if config.uses_sc else backbone
    if isinstance(net, MultiLayerSC):
        net.check_for_training(example[:2])  # also sizes lazy projectors
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if config.compile:
        net = torch.compile(net)  # after the hooks: compile ignores later hooks
    return net, frozen


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module], stage: str) -> None:
    """``model.train()``; in the CE-only stages the frozen modules go back to eval (their batch-norm statistics
    stay) and their parameters stop requiring gradients."""
    model.train()
    freeze = stage in FREEZE_STAGES
    for module in frozen:
        if freeze:
            module.eval()
        for p in module.parameters():
            p.requires_grad_(not freeze)


def unwrap(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The module under DDP and ``torch.compile``: the ``MultiLayerSC`` wrapper, or the plain backbone."""
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)
