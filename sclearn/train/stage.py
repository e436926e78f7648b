"""One stage of a run: its epochs, and what happens between steps and between epochs.

- After each optimizer step: the log window goes to ``metrics.jsonl`` every ``log_every`` steps, an ``eval`` event
  every ``eval_every_steps`` steps (unless an epoch-end evaluation follows at that step), and a checkpoint every
  ``checkpoint_every`` steps (one that falls on an epoch end waits for that epoch's evaluation; the stage's last
  state is saved by the Trainer, with the next stage's counters).
- After each epoch: the plateau schedule steps on the epoch loss, the epoch is evaluated every ``eval_every``
  epochs and at the stage's end, and SC pre-training asks whether it has converged (``pretrain_patience``).

Everything that decides what happens next lives in the :class:`~sclearn.train.state.TrainState`, so a resumed stage
takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from tqdm.auto import tqdm

from ..stopping import pretrain_stop_reason
from .loop import StageLoop, train_one_epoch
from .metrics import LogWindow
from .optim import sc_weight_at
from .state import TrainState

__all__ = ["run_stage"]


def run_stage(loop: StageLoop, state: TrainState, evaluate: Callable[[], dict[str, float]]) -> None:
    """Train ``loop.stage`` from ``state`` until its epochs, its step cap or its convergence stop end it.

    Args:
        evaluate: The stage's evaluation (test / val accuracy, or the SC layer's probes), run at epoch ends.

    The stage's results (``state.stage_results[stage]``) gain ``epochs``, ``steps``, its evaluations, the stop
    rule's fields, ``train_loop_s`` (seconds in training steps only) and ``wall_time_s`` (the whole stage).
    """
    _StageRun(loop, state, evaluate).run()


class _StageRun:
    def __init__(self, loop: StageLoop, state: TrainState, evaluate: Callable[[], dict[str, float]]) -> None:
        self.loop, self.state, self.evaluate = loop, state, evaluate
        self.config, self.results = loop.config, state.results(loop.stage)
        self.window = LogWindow()

    def run(self) -> None:
        loop, state, cfg = self.loop, self.state, self.config
        start = time.time()
        self.bar = tqdm(total=loop.total_steps, initial=state.stage_step, desc=loop.stage, dynamic_ncols=True,
                        disable=not (cfg.progress and loop.accelerator.is_local_main_process))
        try:
            for epoch in range(state.epoch, cfg.epochs_for(loop.stage)):
                if state.stage_step >= loop.total_steps or "stop_reason" in self.results:
                    break
                train_one_epoch(loop, state, epoch, self.window, partial(self.after_step, epoch))
                if self.window.count:
                    self.log_window(epoch)
                with self.window.paused():  # img/s measures training steps, not evaluation
                    self.end_epoch(epoch)
        finally:
            self.bar.close()  # before any error message, which then starts on a line of its own
        self.results["wall_time_s"] = round(self.results.get("wall_time_s", 0.0) + time.time() - start, 2)

    def epoch_evaluates(self, epoch: int) -> bool:
        """Whether the end of ``epoch`` evaluates: every ``eval_every`` epochs, and at the stage's end (its epoch or
        step cap; a convergence stop evaluates too)."""
        cfg = self.config
        last = epoch + 1 == cfg.epochs_for(self.loop.stage) or self.state.stage_step >= self.loop.total_steps
        return (epoch + 1) % cfg.eval_every == 0 or last

    def after_step(self, epoch: int, ends_epoch: bool) -> None:
        loop, cfg, state = self.loop, self.config, self.state
        self.bar.update(1)
        if state.stage_step % cfg.log_every == 0:
            self.log_window(epoch)
        mid_epoch = not ends_epoch and state.stage_step < loop.total_steps
        every = cfg.eval_every_steps  # due now, unless the epoch-end evaluation follows at this very step
        if every and state.stage_step % every == 0 and (mid_epoch or not self.epoch_evaluates(epoch)):
            with self.window.paused():  # before this step's checkpoint, so a resumed run has the record
                loop.metrics.write({"step": state.global_step, "stage": loop.stage, "epoch": epoch, "event": "eval",
                                    **self.evaluate()})
        if cfg.checkpoint_every and state.stage_step % cfg.checkpoint_every == 0 and mid_epoch:
            if self.window.count:  # the epoch's loss sum must be complete in the saved state
                self.log_window(epoch)
            with self.window.paused():
                self.loop.checkpoints.save(state.to_dict())

    def log_window(self, epoch: int) -> None:
        loop, state, window = self.loop, self.state, self.window
        seconds = window.elapsed()
        record = {"step": state.global_step, "stage": loop.stage, "epoch": epoch, **window.means(loop.accelerator)}
        record["lr"] = loop.optimizer.param_groups[0]["lr"]
        record["img_per_s"] = round(window.images * loop.accelerator.num_processes / max(seconds, 1e-9), 1)
        if loop.stage == "joint":  # the weight of the next step
            record["sc_weight"] = sc_weight_at(self.config, state.stage_step, loop.total_steps)
        record["nonfinite_skipped"] = state.nonfinite_skipped
        # Sums over all processes: the plateau scheduler and the stop rule see the same epoch loss everywhere.
        state.epoch_loss_sum += window.sums.get("loss", 0.0)
        state.epoch_loss_count += window.count_all
        self.results["train_loop_s"] = round(self.results.get("train_loop_s", 0.0) + seconds, 4)
        window.reset()
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "ce", "sc")})
        loop.metrics.write(record)

    def end_epoch(self, epoch: int) -> None:
        loop, state, cfg, results = self.loop, self.state, self.config, self.results
        if cfg.schedule == "plateau" and state.epoch_loss is not None:  # no finite step, nothing to judge
            loop.scheduler.step(state.epoch_loss)  # the paper: lr / 10 when the loss stops decreasing
        record: dict[str, Any] = {"step": state.global_step, "stage": loop.stage, "epoch": epoch,
                                  "event": "epoch_end", "epoch_loss": state.epoch_loss or 0.0}  # 0: all skipped
        out_of_steps = state.stage_step >= loop.total_steps
        stop = None
        if loop.stage == "pretrain":
            stop = pretrain_stop_reason(cfg, epoch + 1, state.epoch_loss, results, out_of_steps=out_of_steps)
        capped = epoch + 1 == cfg.epochs_for(loop.stage) or out_of_steps
        last = capped or stop is not None
        if self.epoch_evaluates(epoch) or stop is not None:
            record.update(self.evaluate())
        results.update({k: v for k, v in record.items() if k.endswith(("acc", "top1"))})
        results.update(epochs=epoch + 1, steps=state.stage_step)
        if "val_acc" in record:
            results["best_val_acc"] = max(results.get("best_val_acc", 0.0), record["val_acc"])
        loop.metrics.write(record)
        if stop is not None:  # why the stage ends: in summary.json (stage results) and as an event
            results.update(stop_reason=stop, stopped_early=not capped)
            keys = ("epochs", "steps", "best_epoch", "best_epoch_loss")
            loop.metrics.write({"step": state.global_step, "stage": loop.stage, "epoch": epoch,
                                "event": "stage_stopped", "reason": stop, **{k: results[k] for k in keys if k in results}})
        state.end_epoch()
        # No checkpoint per epoch: with tiny labelled sets an epoch is a step or two.
        if cfg.checkpoint_every and state.stage_step % cfg.checkpoint_every == 0 and not last:
            loop.checkpoints.save(state.to_dict())
