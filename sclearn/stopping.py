"""Stop SC pre-training once its epoch loss has converged (the paper trains SC "until convergence").

The rule watches the same number as the plateau scheduler: the mean SC loss of an epoch, summed over all
processes (so every process decides alike). Its state is a few plain JSON values kept in the stage's results,
so it is saved with every checkpoint and a resumed run stops at exactly the epoch of the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["ConvergenceStop", "pretrain_stop_reason"]


@dataclass(frozen=True)
class ConvergenceStop:
    """Stop after ``patience`` epochs in a row without a relative improvement of ``min_delta``.

    An epoch improves when its loss is below ``best - min_delta * |best|``, ``best`` being the lowest epoch loss
    so far (relative, so one setting fits any loss scale: 1e-3 asks for 0.1% better than the best). The rule
    never stops before ``min_epochs`` epochs; the stage's own caps (epochs, steps) still end it at the latest.
    An epoch without a loss (every step skipped as non-finite) counts as not improving.

    Args:
        patience: Epochs without improvement that end the stage (>= 1).
        min_epochs: Epochs always run, whatever the loss does (>= 1).
        min_delta: Relative improvement that counts (in [0, 1)); 0 counts any decrease.
    """

    patience: int
    min_epochs: int = 1
    min_delta: float = 1e-3

    def update(self, state: dict[str, Any], epochs_done: int, epoch_loss: float | None) -> bool:
        """Take the loss of epoch number ``epochs_done`` (1-based) into ``state``; True: stop after it.

        ``state`` gains ``best_epoch_loss``, ``best_epoch`` (the epoch that set it) and
        ``epochs_without_improvement``; pass the same dict every epoch (it starts empty).
        """
        best = state.get("best_epoch_loss")
        improved = epoch_loss is not None and math.isfinite(epoch_loss) and (
            best is None or epoch_loss < best - self.min_delta * abs(best)
        )
        if improved:
            state.update(best_epoch_loss=epoch_loss, best_epoch=epochs_done)
        state["epochs_without_improvement"] = epochs_done - state.get("best_epoch", 0)
        return epochs_done >= self.min_epochs and state["epochs_without_improvement"] >= self.patience


def pretrain_stop_reason(config: TrainConfig, epochs_done: int, epoch_loss: float | None, results: dict[str, Any],
                         *, out_of_steps: bool) -> str | None:
    """Why SC pre-training ends after epoch number ``epochs_done`` (1-based) when ``config.pretrain_patience`` is
    set, else None.

    ``converged`` (the :class:`ConvergenceStop` fired; its state lives in ``results``, the stage's results, saved
    with every checkpoint), ``epoch_cap`` (``pretrain_epochs``) or ``step_cap`` (``out_of_steps``: the stage
    reached ``pretrain_max_steps`` / ``max_steps``).
    """
    if config.pretrain_patience is None:
        return None
    rule = ConvergenceStop(config.pretrain_patience, config.pretrain_min_epochs, config.pretrain_min_delta)
    if rule.update(results, epochs_done, epoch_loss):
        return "converged"
    if epochs_done == config.pretrain_epochs:
        return "epoch_cap"
    return "step_cap" if out_of_steps else None
