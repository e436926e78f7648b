"""The run's ``Accelerator``: devices, DDP, mixed precision and trackers, from a ``TrainConfig``.

accelerate keeps one state per process, mixed precision included, and offers no public way to change it once
set. So a second Trainer in the same process (benchmark arms, a notebook) must ask for the mixed precision the
first one got: another one is refused with an error that says so, rather than resetting accelerate's state
through its private API. Run such a Trainer in a process of its own.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, is_initialized
from accelerate.utils import parse_choice_from_env

from ..config import TrainConfig

__all__ = ["make_accelerator"]


def _report_to(config: TrainConfig) -> str | None:
    report_to = config.report_to
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401

            report_to = "tensorboard"
        except ImportError:
            report_to = "none"
    return None if report_to == "none" else report_to


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for ``config``; ``config`` is not changed.

    ``mixed_precision="no"`` lets ``accelerate launch --mixed_precision bf16`` decide (its environment
    variable); the precision in effect is ``accelerator.mixed_precision``.

    Raises:
        ValueError: bf16 on a GPU without it, fp16 without a GPU, or a mixed precision other than the one this
            process's accelerate state already holds.
    """
    wanted = config.mixed_precision
    if wanted == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError("mixed_precision='bf16' is not supported by this GPU (needs Ampere or newer); "
                         "use mixed_precision='fp16' or 'no'")
    if wanted == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; on CPU use mixed_precision='bf16' or 'no'")
    if is_initialized():
        # What a fresh state would get: the config's value, else the launcher's (accelerate's own rule).
        effective = wanted if wanted != "no" else parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")
        current = str(AcceleratorState().mixed_precision)
        if effective != current:
            raise ValueError(
                f"mixed_precision={effective!r}, but this process already runs accelerate with mixed_precision="
                f"{current!r} (an earlier Trainer or Accelerator), and accelerate keeps one setting per process. "
                f"Run this Trainer in a new process, or give it mixed_precision={current!r}."
            )
    return Accelerator(
        mixed_precision=None if wanted == "no" else wanted,
        log_with=_report_to(config),
        project_dir=str(config.output_dir),
        # SC-only stages leave the head (and CE stages the projectors) without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
