"""``TrainConfig``: every knob of a training run, validated up front, stored with the run."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .losses import DISTANCES, check_sc_batch
from .sampling import POOLS

Mode = Literal["supervised", "pretrain", "finetune", "two_stage", "joint"]
MODES: tuple[str, ...] = ("supervised", "pretrain", "finetune", "two_stage", "joint")
STAGES_OF_MODE: dict[str, tuple[str, ...]] = {
    "supervised": ("supervised",),
    "pretrain": ("pretrain",),
    "finetune": ("finetune",),
    "two_stage": ("pretrain", "finetune"),
    "joint": ("joint",),
}
# Stages in which TrainConfig.freeze holds layers fixed: the CE-only ones.
FREEZE_STAGES: tuple[str, ...] = ("supervised", "finetune")
# The paper: SC at lr 0.1, then the supervised fine-tune at 0.01 "following the same regime".
DEFAULT_LR: dict[str, float] = {"pretrain": 0.1, "finetune": 0.01, "supervised": 0.1, "joint": 0.1}

# Fields that may change between a run and its resumption without changing what is computed.
RESUMABLE_FIELDS = frozenset(
    {"resume", "num_workers", "log_every", "report_to", "checkpoint_every", "keep_checkpoints", "progress",
     "output_dir", "overwrite", "data_path", "memory_budget_gb", "eval_every_steps"}  # both data paths give the same tensors
)


_OPTIONAL_INT_FIELDS = ("labels_per_class", "image_size", "max_steps", "pretrain_max_steps", "checkpoint_every",
                        "pretrain_batch_size", "projector_dim")
_INT_FIELDS = ("epochs", "pretrain_epochs", "batch_size", "grad_accum_steps", "keep_checkpoints", "log_every",
               "num_patches", "eval_every", "knn_k", "warmup_steps", "translate", "plateau_patience", "val_per_class",
               "num_workers", "seed", "split_seed", *_OPTIONAL_INT_FIELDS)
_FLOAT_FIELDS = ("lr", "pretrain_lr", "momentum", "weight_decay", "temperature", "sc_weight", "unlabeled_ratio")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """A training run. Paper-faithful defaults where the paper states one (marked "paper").

    Data:
        data: A source for :func:`sclearn.data.load_image_dataset` (hub id, ``parquet:``, ``imagefolder:``,
            ``idx:``). Not needed when the Trainer is given ``splits``.
        protocol: ``"cifar10"``, ``"stl10"``, ``"mnist"`` or None (then ``labels_per_class`` decides).
        labels_per_class: Labelled images per class (paper CIFAR-10: 400). None: all labelled.
        val_per_class: Held-out labelled images per class for model selection (never the test set).
        split_seed: Seed of the label selection.
        image_size: Resize to this side. None: keep the dataset's size.
        channels: 3 (grayscale is repeated) or 1.
        translate: Random translation in pixels (pad + crop), paper: "small translations".
        hflip: Random horizontal flips (paper: yes; switch off for digits).
        train_split / test_split: The dataset's split names to draw the labelled / unlabelled sets from and
            to test on.
        num_workers: DataLoader worker processes of the streaming path (the memory path needs none).
        data_path: ``"memory"``: decode every split once into a cached uint8 tensor and index batches from it;
            ``"stream"``: decode every image at every step; ``"auto"``: memory when the decoded splits fit
            ``memory_budget_gb``. Both paths augment whole batches on the device and give the same tensors.
        memory_budget_gb: What the memory path may take, in GiB. None: a quarter of this machine's RAM.

    Model:
        backbone: A timm model name, or ``torchvision:<name>``.
        layers: Layers to attach SC to (names from ``named_modules()``). Empty: the Table-4 net's ``sc_layer``.
        layer_weights: Per-layer weights. None: 1 each.
        model_kwargs: Extra keyword arguments for ``timm.create_model``.
        freeze: Backbone modules (names from ``named_modules()``, e.g. ``("stages.0", "stages.1")``) held fixed
            in the CE-only stages (``supervised``, ``finetune``): no gradient, not in the optimizer, batch-norm
            statistics frozen. A fine-tune protocol for few labels: keep SC-pretrained early layers, train the
            rest. (SC stages always train everything.)

    SC loss (see :class:`sclearn.SpatialContrastiveLoss`):
        patch_size, distance, temperature, pool, num_patches, min_offset, projector_dim.
        layer_patch_sizes: One patch size per entry of ``layers`` (overrides ``patch_size``).

    Optimisation:
        mode: ``supervised`` | ``pretrain`` | ``finetune`` | ``two_stage`` | ``joint``.
        epochs: Epochs of the supervised / finetune / joint stage. pretrain_epochs: of the SC stage.
        lr: Learning rate of the supervised / finetune / joint stage. None: 0.01 for finetune (paper),
            0.1 otherwise. pretrain_lr: of the SC stage (paper: 0.1).
        schedule: ``"plateau"`` (paper: lr / 10 when the epoch's loss stops improving), ``"cosine"``
            (with ``warmup_steps``) or ``"constant"``.
        sc_weight: lambda of the joint loss ``CE + lambda * sum_l w_l SC_l``; sc_rampup_steps ramps it
            linearly from 0 over that many steps (an int), or over that fraction of the stage's steps (a float
            in (0, 1], e.g. 0.2; 1.0 is the whole stage).
        unlabeled_ratio: Joint mode: unlabelled images per labelled image in each step.
        grad_accum_steps: Micro-batches per optimizer step.
        gather_negatives: Contrast against the patches of every process (all_gather with gradient).
        on_nonfinite: ``"raise"`` (stop, naming the step and loss terms) or ``"skip"`` the step.
        max_steps: Cap on optimizer steps per stage (smoke runs, fixed step budgets).
        pretrain_max_steps: Cap on the SC pre-training stage alone (two_stage: "N SC steps, then M fine-tune
            steps" with ``max_steps=M``). None: ``max_steps`` caps it too.
        pretrain_patience: Train SC "until convergence" (paper): end the pretrain stage once the epoch SC loss
            has gone this many epochs without improving by ``pretrain_min_delta`` (relative: the loss must fall
            below ``best - pretrain_min_delta * |best|``), never before ``pretrain_min_epochs`` epochs and never
            after ``pretrain_epochs`` (the cap) or ``pretrain_max_steps``. None (default): run all
            ``pretrain_epochs``. metrics.jsonl gets a ``stage_stopped`` event and summary.json's
            ``stages.pretrain`` the ``stop_reason`` (``converged`` | ``epoch_cap`` | ``step_cap``),
            ``stopped_early``, ``epochs`` and ``best_epoch_loss`` / ``best_epoch``. With ``schedule="plateau"``
            both watch the same epoch loss: the scheduler divides the lr by 10 after ``plateau_patience + 1``
            epochs without a (1e-4 relative) improvement, and an improvement at the lower lr resets the stop's
            count. Set ``pretrain_patience > plateau_patience + 1`` so that the stage stops only when the loss
            has stopped improving after an lr drop as well, which is the paper's "lr / 10 when the loss stops
            decreasing, until convergence". With ``schedule="cosine"`` the decay is planned over the cap, so an
            early stop cuts it short.
        labeled_drop_last: Drop the ragged last labelled batch of an epoch. None: only in joint mode (whose
            steps pair every labelled batch with a full unlabelled one). Set True to give supervised-only runs
            the same full labelled batches as joint runs in a matched comparison. Ignored when a process's
            share of the labelled set is smaller than one batch (the ragged batch is then all there is).

    Evaluation:
        eval_every: Evaluate every N epochs (and after the last). eval_test: also score the test split
            during training; switch it off while choosing settings on the validation split.
        knn_k: k of the kNN probe run after each SC pre-training epoch.
        probe_linear: Also fit the linear probe (:func:`sclearn.evaluation.linear_probe`) after each SC
            pre-training epoch, on the kNN probe's features (the SC layer's map, 2x2 average-pooled): fitted on
            the labelled split, scored on val (``linear_val_top1``) when ``val_per_class`` > 0, else on test
            (``linear_top1``, only with ``eval_test``). The test curve is for reading only: nothing is chosen
            on it.
        eval_every_steps: Also evaluate every N optimizer steps of a stage (test / val top-1, or the kNN probe
            while pre-training), written to metrics.jsonl as ``"event": "eval"`` records. None: per epoch only.
            Evaluation does not change training: each step is seeded by its index, and the model is
            evaluated in eval mode (batch-norm statistics untouched).

    Run:
        checkpoint_every: Save a checkpoint every N optimizer steps of a stage (after that epoch's evaluation
            when step N ends an epoch) and at the end of every stage. None: only at stage ends.
        resume: True: continue the run in ``output_dir`` from its latest intact checkpoint; a run dir or a
            checkpoint dir: continue from there (its run's settings must match). See :mod:`sclearn.rundir`.
        overwrite: Delete the sclearn run in ``output_dir`` first (only sclearn's own files; never ``.``,
            the home directory, ``/`` or a directory holding ``.git``).
    """

    # data
    data: str | None = None
    protocol: str | None = None
    labels_per_class: int | None = None
    val_per_class: int = 0
    split_seed: int = 0
    image_size: int | None = None
    channels: int = 3
    train_split: str = "train"
    test_split: str = "test"
    translate: int = 2
    hflip: bool = True
    num_workers: int = 0
    data_path: str = "auto"
    memory_budget_gb: float | None = None
    # model
    backbone: str = "resnet18"
    layers: tuple[str, ...] = ("layer3",)
    layer_weights: tuple[float, ...] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    freeze: tuple[str, ...] = ()
    # SC loss
    patch_size: int | float = 0.55
    layer_patch_sizes: tuple[int | float, ...] | None = None
    distance: str = "l2"
    temperature: float = 1.0
    pool: str = "flatten"
    num_patches: int = 2
    min_offset: int | str = 0
    projector_dim: int | None = None
    # optimisation
    mode: str = "supervised"
    epochs: int = 10
    pretrain_epochs: int = 10
    batch_size: int = 128
    pretrain_batch_size: int | None = None
    unlabeled_ratio: float = 2.0
    lr: float | None = None
    pretrain_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    plateau_patience: int = 1
    sc_weight: float = 1.0
    sc_rampup_steps: int | float = 0
    grad_accum_steps: int = 1
    gather_negatives: bool = False
    mixed_precision: str = "no"
    channels_last: bool = False
    compile: bool = False
    max_steps: int | None = None
    pretrain_max_steps: int | None = None
    pretrain_patience: int | None = None
    pretrain_min_epochs: int = 1
    pretrain_min_delta: float = 1e-3
    labeled_drop_last: bool | None = None
    on_nonfinite: str = "raise"
    # evaluation
    knn_k: int = 20
    probe_linear: bool = False
    eval_every: int = 1
    eval_test: bool = True
    eval_every_steps: int | None = None
    # run
    output_dir: str = "runs/sclearn"
    seed: int = 0
    resume: bool | str = False
    overwrite: bool = False
    checkpoint_every: int | None = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    report_to: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self.freeze = tuple(self.freeze)
        if self.layer_weights is not None:
            self.layer_weights = tuple(float(w) for w in self.layer_weights)
        if self.layer_patch_sizes is not None:
            self.layer_patch_sizes = tuple(self.layer_patch_sizes)
        if self.checkpoint_every == 0:  # 0 has always meant "no step checkpoints"
            self.checkpoint_every = None
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the allowed values for any bad setting."""
        choices = {
            "mode": MODES,
            "schedule": ("plateau", "cosine", "constant"),
            "distance": DISTANCES,
            "pool": POOLS,
            "mixed_precision": ("no", "bf16", "fp16"),
            "on_nonfinite": ("raise", "skip"),
            "channels": (1, 3),
            "data_path": ("auto", "memory", "stream"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        self._validate_numbers()
        positive = ["epochs", "pretrain_epochs", "batch_size", "grad_accum_steps", "keep_checkpoints",
                    "log_every", "num_patches", "eval_every", "knn_k"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "pretrain_max_steps", "checkpoint_every", "eval_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
        self._validate_convergence_stop()
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:  # NaN fails too
            raise ValueError(f"TrainConfig.memory_budget_gb must be > 0 GiB or None, got {self.memory_budget_gb}")
        ramp = self.sc_rampup_steps
        steps_ok = isinstance(ramp, int) and not isinstance(ramp, bool) and ramp >= 0
        fraction_ok = isinstance(ramp, float) and 0.0 < ramp <= 1.0  # NaN fails both comparisons
        if not (steps_ok or fraction_ok):
            raise ValueError(
                f"TrainConfig.sc_rampup_steps={ramp!r}: give a number of steps (an int >= 0) or a fraction of "
                "the stage's steps (a float in (0, 1])"
            )
        for name in ("lr", "pretrain_lr", "temperature", "unlabeled_ratio"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.uses_sc:
            check_sc_batch(self.sc_batch_size, "Set TrainConfig.pretrain_batch_size (or batch_size) to 2 or more.")
        for name in ("layer_weights", "layer_patch_sizes"):
            values = getattr(self, name)
            if values is not None and self.layers and len(values) != len(self.layers):
                raise ValueError(f"{len(values)} {name} for {len(self.layers)} layers {list(self.layers)}")
        if self.freeze and not set(self.stages) & set(FREEZE_STAGES):
            raise ValueError(
                f"freeze={list(self.freeze)} holds layers fixed in the {' / '.join(FREEZE_STAGES)} stages, and "
                f"mode={self.mode!r} has none; use mode='two_stage' (or 'finetune') to fine-tune with frozen layers"
            )
        if self.mode == "finetune" and not self.init_from:
            raise ValueError(
                "mode='finetune' starts from pretrained weights: set init_from to a run dir, a "
                "checkpoint dir or a backbone .safetensors file (or use mode='two_stage')"
            )

    def _validate_numbers(self) -> None:
        """Types, finiteness and signs: settings that would otherwise fail late or silently mean nothing."""
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL_INT_FIELDS) and not _is_int(value):
                raise ValueError(f"TrainConfig.{name} must be an integer, got {value!r}")
        # NaN passes every `<` check and inf makes SC a constant (T = inf) or the first step NaN (lr = inf).
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not (value is None and name == "lr") and not _is_finite(value):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {value!r}")
        for name in ("layer_weights", "layer_patch_sizes"):
            values = getattr(self, name) or ()
            if not all(_is_finite(v) for v in values):
                raise ValueError(f"TrainConfig.{name} must hold finite numbers, got {list(values)!r}")
        for name in ("weight_decay", "momentum", "sc_weight", "translate", "warmup_steps", "num_workers",
                     "val_per_class", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if any(w < 0 for w in self.layer_weights or ()):
            raise ValueError(f"TrainConfig.layer_weights must be >= 0, got {list(self.layer_weights)}")
        for name in ("image_size", "labels_per_class", "pretrain_batch_size", "projector_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("seed", "split_seed"):
            if not 0 <= getattr(self, name) < 2**32:
                raise ValueError(f"TrainConfig.{name} must lie in [0, 2**32), got {getattr(self, name)}")
        for size in (self.patch_size, *(self.layer_patch_sizes or ())):
            sides = size if isinstance(size, (tuple, list)) and len(size) == 2 else (size,)
            if not all((_is_int(s) and s >= 1) or (isinstance(s, float) and 0.0 < s <= 1.0) for s in sides):
                raise ValueError(f"patch size {size!r}: give a number of cells (an int >= 1) or a fraction of the "
                                 "map side (a float in (0, 1]), e.g. patch_size=0.55")
        if self.min_offset != "disjoint" and not (_is_int(self.min_offset) and self.min_offset >= 0):
            raise ValueError(f"TrainConfig.min_offset must be an int >= 0 or 'disjoint', got {self.min_offset!r}")
        if not isinstance(self.model_kwargs, dict):
            raise TypeError(f"TrainConfig.model_kwargs must be a dict, got {self.model_kwargs!r}")

    def _validate_convergence_stop(self) -> None:
        patience, min_epochs, delta = self.pretrain_patience, self.pretrain_min_epochs, self.pretrain_min_delta
        if patience is None:
            if min_epochs != 1:
                raise ValueError(f"TrainConfig.pretrain_min_epochs={min_epochs} applies only to the convergence "
                                 "stop: set pretrain_patience too (or leave pretrain_min_epochs at 1)")
            return
        if "pretrain" not in self.stages:
            raise ValueError(f"TrainConfig.pretrain_patience stops the SC pre-training stage, and mode={self.mode!r} "
                             "has none; use mode='pretrain' or 'two_stage' (or pretrain_patience=None)")
        if patience < 1:
            raise ValueError(f"TrainConfig.pretrain_patience must be >= 1 or None, got {patience}")
        if not 1 <= min_epochs <= self.pretrain_epochs:
            raise ValueError(f"TrainConfig.pretrain_min_epochs={min_epochs} must be in [1, pretrain_epochs="
                             f"{self.pretrain_epochs}] (pretrain_epochs is the cap of the convergence stop)")
        if not 0.0 <= delta < 1.0:  # NaN fails too
            raise ValueError(f"TrainConfig.pretrain_min_delta={delta} is a relative improvement: give a value "
                             "in [0, 1), e.g. 1e-3 for 0.1%")

    # -- derived -------------------------------------------------------------------------------------
    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES_OF_MODE[self.mode]

    @property
    def uses_sc(self) -> bool:
        return self.mode in ("pretrain", "two_stage", "joint")

    @property
    def sc_batch_size(self) -> int:
        """Images per SC batch: the pretrain batch, or the joint step's labelled + unlabelled images."""
        if self.mode == "joint":
            return self.batch_size + self.unlabeled_batch_size
        return self.pretrain_batch_size or self.batch_size

    @property
    def unlabeled_batch_size(self) -> int:
        return max(1, round(self.batch_size * self.unlabeled_ratio))

    def lr_for(self, stage: str) -> float:
        if stage == "pretrain":
            return self.pretrain_lr
        return self.lr if self.lr is not None else DEFAULT_LR[stage]

    def epochs_for(self, stage: str) -> int:
        return self.pretrain_epochs if stage == "pretrain" else self.epochs

    def max_steps_for(self, stage: str) -> int | None:
        """The step cap of a stage: ``pretrain_max_steps`` for SC pre-training if set, else ``max_steps``."""
        if stage == "pretrain" and self.pretrain_max_steps is not None:
            return self.pretrain_max_steps
        return self.max_steps

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_fields(d)
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A config from a JSON or YAML file (a run's ``config.json``, or one written by hand), then ``overrides``.

        ``resume`` is False unless overridden: the file records how its run was started, and a rerun starts
        afresh. Give a new ``output_dir`` to rerun a finished run (its own dir refuses a second run)::

            TrainConfig.load("runs/x/config.json", output_dir="runs/x_rerun", epochs=20)
        """
        return cls.from_dict({**read_config_file(path), "resume": False, **overrides})

    def save(self, path: str | Path) -> None:
        """Write as JSON atomically (temp file + rename), so a kill never leaves half a config."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)

    def flat(self) -> dict[str, int | float | str | bool]:
        """Tracker-safe view: trackers accept only flat int/float/str/bool values (accelerate #3063)."""
        out: dict[str, int | float | str | bool] = {}
        for k, v in self.to_dict().items():
            out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
        return out

    def diff(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ and would change the computation: {field: (self, other)}."""
        mine, theirs = json.loads(json.dumps(self.to_dict(), default=str)), json.loads(
            json.dumps(other.to_dict(), default=str)
        )
        return {
            k: (mine[k], theirs.get(k)) for k in mine if k not in RESUMABLE_FIELDS and mine[k] != theirs.get(k)
        }


def check_fields(values: dict[str, Any], source: str = "TrainConfig") -> None:
    """Raise a ValueError naming every key that is not a TrainConfig field, with the close field names."""
    import difflib

    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = {k: difflib.get_close_matches(k, known, n=2, cutoff=0.6) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {' or '.join(map(repr, c))}?" for k, c in close.items() if c)
        raise ValueError(f"{source} has unknown fields {unknown}{' (' + hints + ')' if hints else ''}. "
                         f"Fields are those of sclearn.TrainConfig.")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields in a JSON (``.json``) or YAML (``.yaml`` / ``.yml``) file, checked against TrainConfig's.

    A directory means its ``config.json`` (a run dir).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist; give a run's config.json or a .yaml file")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        parse, errors = yaml.safe_load, (yaml.YAMLError,)
    else:
        parse, errors = json.loads, (json.JSONDecodeError,)
    try:
        values = parse(text)
    except errors as e:
        mark = getattr(e, "problem_mark", None)  # YAML's errors span lines; keep the problem and where it is
        detail = f"{e.problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(e)
        raise ValueError(f"cannot read config file {str(path)!r}: {detail}") from e
    if not isinstance(values, dict):  # bad input like an unreadable file, so a ValueError too
        kind = type(values).__name__
        raise ValueError(f"config file {str(path)!r} must hold a mapping of TrainConfig fields, got {kind}")  # noqa: TRY004
    check_fields(values, f"config file {str(path)!r}")
    return values
