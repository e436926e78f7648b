"""What changes with the step: the optimizer of each stage, its learning-rate schedule, and the SC weight's ramp."""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn

from ..config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "sc_weight_at"]


def build_optimizer(model: nn.Module, config: TrainConfig, stage: str,
                    frozen: Collection[int] = ()) -> torch.optim.Optimizer:
    """SGD with momentum over ``model``'s parameters except those whose ``id`` is in ``frozen``.

    Weight decay applies to weights only: norms and biases (parameters with ``ndim <= 1``) get none.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if id(p) not in frozen:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr_for(stage), momentum=config.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """``config.schedule`` over a stage of ``total_steps`` optimizer steps.

    ``"plateau"``: lr / 10 when the epoch loss stops improving (the paper; stepped once per epoch with that loss).
    ``"cosine"``: linear warm-up over ``warmup_steps``, then a cosine to 0 (stepped once per optimizer step).
    ``"constant"``: the stage's lr throughout.
    """
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=config.plateau_patience)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = min(config.warmup_steps, total_steps - 1)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def sc_weight_at(config: TrainConfig, stage_step: int, total_steps: int) -> float:
    """The SC weight (lambda) of joint training after ``stage_step`` steps: ``sc_weight``, ramped up linearly over
    ``sc_rampup_steps`` steps (an int) or that fraction of the stage's ``total_steps`` (a float)."""
    ramp = config.sc_rampup_steps
    if isinstance(ramp, float):
        ramp = ramp * total_steps
    if ramp <= 0:
        return config.sc_weight
    return config.sc_weight * min(1.0, stage_step / ramp)
