"""Training: the :class:`Trainer` and its parts, one job each.

============  ======================================================================================
``trainer``   :class:`Trainer`: wires the parts together; ``fit`` runs the stages, logs, checkpoints, evaluates
``loop``      :func:`train_one_epoch` (micro-batches, gradient accumulation, the optimizer step), the loss
              terms of each stage, the non-finite policy
``state``     :class:`TrainState`: the run's counters, saved with every checkpoint
``model``     backbone, frozen layers, SC wrapper, train / eval modes of a stage
``optim``     optimizer and learning-rate schedule of each stage, the SC weight's ramp
``accelerator`` the run's ``Accelerator`` (never changes the config)
``metrics``   ``metrics.jsonl`` and trackers, the running means between two log lines
``report``    ``summary.json`` and the figures
============  ======================================================================================

The run dir (lock, overwrite and resume rules) is :mod:`sclearn.rundir`, checkpoints :mod:`sclearn.checkpoint`,
loaders :func:`sclearn.data.build_loaders`, accuracy and probes :mod:`sclearn.evaluation`.
"""

from .loop import NonFiniteLossError, train_one_epoch
from .state import TrainState
from .trainer import Trainer

__all__ = ["NonFiniteLossError", "TrainState", "Trainer", "train_one_epoch"]
