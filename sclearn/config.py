"""``TrainConfig``: every knob of a training run, validated up front, stored with the run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
     "output_dir", "eval_every_steps"}
)


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
        labeled_drop_last: Drop the ragged last labelled batch of an epoch. None: only in joint mode (whose
            steps pair every labelled batch with a full unlabelled one). Set True to give supervised-only runs
            the same full labelled batches as joint runs in a matched comparison. Ignored when a process's
            share of the labelled set is smaller than one batch (the ragged batch is then all there is).

    Evaluation:
        eval_every: Evaluate every N epochs (and after the last). eval_test: also score the test split
            during training; switch it off while choosing settings on the validation split.
        knn_k: k of the kNN probe run after each SC pre-training epoch.
        eval_every_steps: Also evaluate every N optimizer steps of a stage (test / val top-1, or the kNN probe
            while pre-training), written to metrics.jsonl as ``"event": "eval"`` records. None: per epoch only.
            Evaluation does not change training: each step is seeded by its index, and the model is
            evaluated in eval mode (batch-norm statistics untouched).

    Run:
        checkpoint_every: Save a checkpoint every N optimizer steps of a stage (after that epoch's evaluation
            when step N ends an epoch) and at the end of every stage. None: only at stage ends.
    """

    # data
    data: str | None = None
    protocol: str | None = None
    labels_per_class: int | None = None
    val_per_class: int = 0
    split_seed: int = 0
    image_size: int | None = None
    channels: int = 3
    translate: int = 2
    hflip: bool = True
    num_workers: int = 0
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
    labeled_drop_last: bool | None = None
    on_nonfinite: str = "raise"
    # evaluation
    knn_k: int = 20
    eval_every: int = 1
    eval_test: bool = True
    eval_every_steps: int | None = None
    # run
    output_dir: str = "runs/sclearn"
    seed: int = 0
    resume: bool | str = False
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
            "distance": ("l2", "sqeuclidean", "cosine"),
            "pool": ("flatten", "mean"),
            "mixed_precision": ("no", "bf16", "fp16"),
            "on_nonfinite": ("raise", "skip"),
            "channels": (1, 3),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        positive = ["epochs", "pretrain_epochs", "batch_size", "grad_accum_steps", "keep_checkpoints",
                    "log_every", "num_patches", "eval_every"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "pretrain_max_steps", "checkpoint_every", "eval_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
        ramp = self.sc_rampup_steps
        steps_ok = isinstance(ramp, int) and not isinstance(ramp, bool) and ramp >= 0
        fraction_ok = isinstance(ramp, float) and 0.0 < ramp <= 1.0  # NaN fails both comparisons
        if not (steps_ok or fraction_ok):
            raise ValueError(
                f"TrainConfig.sc_rampup_steps={ramp!r}: give a number of steps (an int >= 0) or a fraction of "
                "the stage's steps (a float in (0, 1])"
            )
        if self.temperature <= 0 or self.unlabeled_ratio <= 0:
            raise ValueError("TrainConfig.temperature and unlabeled_ratio must be > 0")
        if self.uses_sc and self.sc_batch_size < 2:
            raise ValueError(f"SC needs batches of at least 2 images, got {self.sc_batch_size}")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**d)

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
