"""The training loop of one epoch: micro-batches, gradient accumulation, one optimizer step, the non-finite policy.

    for epoch in range(state.epoch, epochs):
        train_one_epoch(loop, state, epoch, window, after_step)

Each optimizer step is a visible inner loop over ``accum`` micro-batches, as in nanoGPT: each micro-batch's loss is
divided by ``accum`` and back-propagated, gradients are all-reduced across processes after the last one only, and
one optimizer step follows. Steps are counted from the start of the epoch, so the epoch's last step may take
fewer micro-batches; a checkpoint always falls between steps.

Every micro-batch seeds torch (and numpy, random) from the run's seed and its own index in the run, so its
augmentation and patch positions depend on nothing else: a resumed run draws exactly what the uninterrupted one
drew, whatever ran in between (loader start-up, evaluation, checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn

from ..checkpoint import CheckpointManager
from ..config import TrainConfig
from ..data import Batch
from ..wrapper import SCOutput
from .metrics import LogWindow, MetricsLog
from .state import TrainState

__all__ = ["NonFiniteLossError", "StageLoop", "handle_nonfinite", "stage_losses", "train_one_epoch"]

SC_STAGES = ("pretrain", "joint")  # stages driven by the unlabelled loader

LossTerms = dict[str, Tensor]  # "loss" (what is back-propagated), "ce", "sc", "sc/<layer>": 0-dim tensors


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the last good checkpoint is kept."""


def stage_losses(model: nn.Module, stage: str, batch: Batch, labeled: Batch | None, *, config: TrainConfig,
                 sc_weight: float = 0.0) -> tuple[LossTerms, int]:
    """The loss terms of one micro-batch of ``stage`` and its number of images.

    - ``supervised``, ``finetune``: CE on the labelled batch.
    - ``pretrain``: SC only; the forward stops after the deepest SC layer (no logits).
    - ``joint``: one forward pass over the labelled and the unlabelled batch, ``CE(labelled) + sc_weight * SC``.

    Args:
        batch: ``(images (B, C, H, W), labels (B,))`` of the stage's driving loader, on the device.
        labeled: joint only: the labelled batch drawn for this micro-batch.
    """
    x, y = batch
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if stage in ("supervised", "finetune"):
        out = model(x, compute_sc=False) if config.uses_sc else model(x)
        logits = out.logits if isinstance(out, SCOutput) else out
        ce = F.cross_entropy(logits.float(), y)
        return {"loss": ce, "ce": ce}, x.shape[0]
    if stage == "pretrain":
        # No logits: under DDP the head must look unused, since the SC-only loss sends it no gradient.
        out = model(x, compute_sc=True, return_logits=False)
        terms = {"loss": out.sc_loss, "sc": out.sc_loss}
    else:
        xl, yl = labeled
        x = torch.cat([xl, x])  # (B_l + B_u, C, H, W)
        out = model(x, compute_sc=True)
        ce = F.cross_entropy(out.logits[: xl.shape[0]].float(), yl)
        terms = {"loss": ce + sc_weight * out.sc_loss, "ce": ce, "sc": out.sc_loss}
    terms.update({f"sc/{k}": v for k, v in out.sc_losses.items()})
    return terms, x.shape[0]


@dataclass
class StageLoop:
    """What the loop of one stage runs on.

    Attributes:
        stage: ``supervised`` | ``pretrain`` | ``finetune`` | ``joint``.
        driver: The loader whose epochs are the stage's epochs (unlabelled for SC stages, else labelled); its
            ``batch_sampler.set_position(epoch, start)`` resumes it mid-epoch.
        labeled: Joint only: an endless labelled loader (:func:`sclearn.data.cycle`), one batch per micro-batch.
        losses: ``(batch, labeled) -> (loss terms, images)``, e.g. :func:`stage_losses`.
        total_steps: The stage's optimizer steps (epochs x steps per epoch, or its step cap).
    """

    stage: str
    config: TrainConfig
    accelerator: Accelerator
    model: nn.Module
    optimizer: Any
    scheduler: Any
    driver: Any
    labeled: Iterator[Batch] | None
    losses: Callable[[Batch, Batch | None], tuple[LossTerms, int]]
    total_steps: int
    checkpoints: CheckpointManager
    metrics: MetricsLog


def train_one_epoch(loop: StageLoop, state: TrainState, epoch: int, window: LogWindow,
                    after_step: Callable[[bool], None]) -> None:
    """Train ``epoch`` from ``state.batch_in_epoch`` until it ends or the stage reaches ``loop.total_steps``.

    Args:
        state: Advanced in place: micro-batch counters after each micro-batch, step counters after each step.
        window: Receives the loss terms of every step that is taken.
        after_step: Called after each optimizer step with whether it ended the epoch (logging, checkpoints).
    """
    cfg, accelerator = loop.config, loop.accelerator
    n_batches = len(loop.driver)
    loop.driver.batch_sampler.set_position(epoch, state.batch_in_epoch)
    micro_batches = iter(loop.driver)
    while state.batch_in_epoch < n_batches and state.stage_step < loop.total_steps:
        accum = min(cfg.grad_accum_steps, n_batches - state.batch_in_epoch)
        step_terms: list[tuple[LossTerms, int]] = []
        for micro in range(accum):
            set_seed((cfg.seed * 1_000_003 + state.batches_seen * 7919 + accelerator.process_index * 104_729) % 2**32)
            batch = next(micro_batches)
            labeled = next(loop.labeled) if loop.labeled is not None else None
            last = micro == accum - 1
            with nullcontext() if last else accelerator.no_sync(loop.model):  # all-reduce once, after the last
                terms, n_images = loop.losses(batch, labeled)
                accelerator.backward(terms["loss"] / accum)
            step_terms.append(({k: v.detach() for k, v in terms.items()}, n_images))
            state.batch_in_epoch += 1
            state.batches_seen += 1
            state.labeled_drawn += labeled is not None
        # One device-side flag per step (no host sync per micro-batch), agreed by every process: a step that
        # one process skips and another takes would leave DDP waiting.
        bad = ~torch.stack([torch.isfinite(terms["loss"]).all() for terms, _ in step_terms]).all()
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad.float(), reduction="sum") > 0
        if bool(bad):
            handle_nonfinite(loop, state, step_terms)
        else:
            loop.optimizer.step()
            for terms, n_images in step_terms:
                window.add(terms, n_images)
        loop.optimizer.zero_grad(set_to_none=True)
        if cfg.schedule != "plateau":  # plateau steps once per epoch, on the epoch loss
            loop.scheduler.step()
        state.global_step += 1
        state.stage_step += 1
        after_step(state.batch_in_epoch == n_batches)


def handle_nonfinite(loop: StageLoop, state: TrainState, step_terms: list[tuple[LossTerms, int]]) -> None:
    """The non-finite policy: ``on_nonfinite="raise"`` stops with an error naming the step and every loss term of
    its first bad micro-batch (on this process; another may hold the NaN); ``"skip"`` drops the step, counts it
    and logs a ``nonfinite_skipped`` event."""
    step = state.global_step + 1  # the step being dropped
    terms = next((t for t, _ in step_terms if not torch.isfinite(t["loss"])), step_terms[-1][0])
    values = {k: float(v) for k, v in terms.items()}
    if loop.config.on_nonfinite == "raise":
        latest = loop.checkpoints.latest()
        kept = (f"The last good checkpoint is {latest}." if latest is not None else
                "No checkpoint was written yet (checkpoint_every sets how often).")
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (stage {loop.stage!r}, epoch {state.epoch}): "
            f"{values}. {kept} Lower the lr or sc_weight, or set on_nonfinite='skip' to skip such steps."
        )
    state.nonfinite_skipped += 1
    loop.metrics.write({"step": step, "stage": loop.stage, "event": "nonfinite_skipped", **values})
