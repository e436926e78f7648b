"""``TrainState``: where a run is, saved with every checkpoint and restored on resume.

Every field is a plain JSON value, so ``trainer_state.json`` in a checkpoint stays readable (``to_dict``) and a
resumed run continues from exactly these counters (``from_dict``). The keys are those of the untyped dict that
earlier versions saved, so their checkpoints resume too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """The counters of a run, all of them checkpointed.

    Attributes:
        num_processes: Processes of the run that wrote the state (a resume must use as many).
        stage_index: The running stage, an index into ``TrainConfig.stages`` (``len(stages)`` once done).
        epoch: The running epoch of that stage, from 0.
        batch_in_epoch: Micro-batches of that epoch already trained on (always at an optimizer-step boundary
            in a checkpoint).
        global_step: Optimizer steps over all stages.
        stage_step: Optimizer steps in the running stage.
        labeled_drawn: Labelled batches drawn in the running stage (joint: the cycling loader's position).
        batches_seen: Micro-batches over the whole run; seeds each micro-batch's augmentation and patches.
        nonfinite_skipped: Optimizer steps skipped for a non-finite loss (``on_nonfinite="skip"``).
        stage_results: Per stage: accuracies and probe results, epochs, steps, the convergence stop's state,
            its stop reason and timings (``summary.json``'s ``stages``).
        epoch_loss_sum: The running epoch's summed loss over all processes' logged micro-batches.
        epoch_loss_count: How many micro-batches that sum holds.
    """

    num_processes: int = 1
    stage_index: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    stage_step: int = 0
    labeled_drawn: int = 0
    batches_seen: int = 0
    nonfinite_skipped: int = 0
    stage_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0

    @property
    def epoch_loss(self) -> float | None:
        """The running epoch's mean loss, or None when no step of it counted (all skipped as non-finite)."""
        return self.epoch_loss_sum / self.epoch_loss_count if self.epoch_loss_count else None

    def results(self, stage: str) -> dict[str, Any]:
        """``stage_results[stage]``, created empty on first use."""
        return self.stage_results.setdefault(stage, {})

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch, self.epoch_loss_sum, self.epoch_loss_count = 0, 0.0, 0

    def end_stage(self) -> None:
        self.stage_index += 1
        self.epoch = self.batch_in_epoch = self.stage_step = self.labeled_drawn = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``trainer_state.json`` (a deep copy: later steps do not change it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the trainer state") -> TrainState:
        """The state of ``values`` (a ``to_dict`` result, or the dict of an older checkpoint).

        Raises:
            ValueError: keys are missing or unknown; ``source`` (e.g. the checkpoint) is named.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = [n for n in names if n not in values], sorted(set(values) - set(names))
        if missing or unknown:
            raise ValueError(f"{source} is not a trainer state this sclearn can resume (missing {missing}, unknown "
                             f"{unknown}); resume it with the sclearn version that wrote it, or start a new "
                             "output_dir")
        return cls(**{n: values[n] for n in names})
