"""``Trainer``: wires a run's parts together and runs its stages (supervised, SC pre-training, fine-tuning,
two-stage, joint).

    trainer = Trainer(TrainConfig(data="idx:/usr/share/datasets/fashion-mnist", mode="joint", ...))
    summary = trainer.fit()

The Trainer builds the parts (accelerator, run dir, splits and loaders, model, optimizers and schedules,
checkpoints, metrics log) and ``fit`` runs the mode's stages in order. A stage
(:func:`~sclearn.train.stage.run_stage`) runs epochs of :func:`~sclearn.train.loop.train_one_epoch` over one
driving loader (labelled for CE stages, unlabelled for SC stages; joint also draws one labelled batch per
micro-batch from a cycling loader), logs, checkpoints (and with ``eval_every_steps`` evaluates) between steps,
and evaluates between epochs. Between stages the Trainer checkpoints; at the end it exports the backbone, writes
``summary.json`` and figures, and the hub folder ``export/`` (:mod:`sclearn.export`).

Resuming restores model, optimizers, schedulers, RNG states, the :class:`~sclearn.train.state.TrainState` and the
position inside the epoch: the resumed run computes exactly what the uninterrupted one would have (CPU, any
``num_workers``, either data path).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn

from .. import data as sc_data
from .. import rundir
from ..backbones import check_init_source, export_backbone
from ..builders import build_splits
from ..checkpoint import STATE_FILE, CheckpointManager, read_state
from ..config import FREEZE_STAGES, TrainConfig
from ..distributed import all_gather_with_grad
from ..evaluation import evaluate_accuracy, probe_splits
from ..export import export_run, record_command
from ..wrapper import MultiLayerSC
from .accelerator import make_accelerator
from .loop import SC_STAGES, StageLoop, stage_losses
from .metrics import MetricsLog
from .model import build_model, set_train_mode, unwrap
from .optim import build_optimizer, build_scheduler, sc_weight_at
from .report import export_meta, run_summary, write_figures, write_summary
from .stage import run_stage
from .state import TrainState


class Trainer:
    """Trains a backbone with CE, SC, or both, as ``config.mode`` says.

    Args:
        config: The run. It is not changed: ``trainer.config`` is a copy that records the mixed precision in
            effect (``accelerate launch --mixed_precision`` may set it). See :mod:`sclearn.train.accelerator` for
            a second Trainer in one process.
        model: A backbone to train instead of building ``config.backbone`` (its head must have one output
            per class).
        splits: Data splits instead of loading ``config.data`` (a :class:`sclearn.data.SemiSupervisedSplits`).
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, splits=None) -> None:
        self.accelerator = make_accelerator(config)
        self.config = dataclasses.replace(config, mixed_precision=str(self.accelerator.mixed_precision))
        self.output_dir = Path(self.config.output_dir)
        self._run_dir: rundir.PreparedRunDir | None = None  # held by the main process only
        self._prepare_run_dir()
        try:
            self._setup(model, splits)
        except BaseException:
            if self._run_dir is not None:  # nothing trained: leave no half-made run behind
                self._run_dir.abandon()
            raise

    def _setup(self, model: nn.Module | None, splits) -> None:
        cfg, accelerator = self.config, self.accelerator
        if cfg.init_from and model is None:  # before the data loads: a missing or foreign file fails now
            check_init_source(cfg.init_from, architecture=cfg.backbone, in_chans=cfg.channels)
        if accelerator.is_main_process:
            record_command(self.output_dir, resume=bool(cfg.resume))  # for the model card
        set_seed(cfg.seed)
        with accelerator.main_process_first():
            save_to = str(self.output_dir / "split_indices.json") if accelerator.is_main_process else None
            self.splits = splits if splits is not None else build_splits(cfg, save_indices_to=save_to)
        self.num_classes = self.splits.num_classes
        with accelerator.local_main_process_first():  # one process per machine decodes the memory cache
            # Training loaders stay ours (resumable, sharded by rank); eval loaders are prepared so that
            # gather_for_metrics drops the padding of uneven shards. Batches arrive on the device, augmented.
            built = sc_data.build_loaders(cfg, self.splits, rank=accelerator.process_index,
                                          world_size=accelerator.num_processes, device=accelerator.device,
                                          prepare_eval=accelerator.prepare_data_loader)
        if accelerator.is_main_process:  # a log line: stderr, so that a recipe's stdout stays its JSON summary
            print(f"data path: {built.path} ({built.reason})", file=sys.stderr)
        self.loaders, self.eval_loaders, self.probe_loaders = built.train, built.eval, built.probe
        # Exported with the weights: the input (C, H, W) and the normalisation the run trained on.
        self.input_size, self.normalization = list(built.example.shape[1:]), {"mean": list(built.mean),
                                                                              "std": list(built.std)}

        self.model, self.frozen = build_model(cfg, self.num_classes, built.example, model=model, log=accelerator.print)
        frozen_ids = {id(p) for m in self.frozen for p in m.parameters()}
        optimizers = [build_optimizer(self.model, cfg, s, frozen_ids if s in FREEZE_STAGES else ()) for s in cfg.stages]
        self.model, *optimizers = accelerator.prepare(self.model, *optimizers)
        self.optimizers = dict(zip(cfg.stages, optimizers))
        self.schedulers = {s: build_scheduler(self.optimizers[s], cfg, self._total_steps(s)) for s in cfg.stages}
        accelerator.register_for_checkpointing(*self.schedulers.values())
        if cfg.gather_negatives and isinstance(self._wrapper(), MultiLayerSC):
            for loss in self._wrapper().losses.values():
                loss.gather_fn = all_gather_with_grad

        self.checkpoints = CheckpointManager(accelerator, self.output_dir / "checkpoints", cfg.keep_checkpoints)
        self.metrics = MetricsLog(accelerator, self.output_dir / "metrics.jsonl")
        self.state = self._resume()
        if accelerator.log_with:
            accelerator.init_trackers(rundir.TRACKER_RUN_NAME, config=cfg.flat())

    # -- set-up ----------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Lock, check and set up the run dir (main process: one writer), and find what to resume from."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self._run_dir = rundir.prepare_run_dir(self.config, num_processes=accelerator.num_processes,
                                                   log=accelerator.print)
            self._resume_from = self._run_dir.resume_from
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:  # the same files, read after the main process checked them
            self._resume_from = rundir.resolve_resume(self.config.resume, self.output_dir, warn=False)

    def release_run_dir(self) -> None:
        """Release the run dir's lock (fit does at its end); another process may then write to it."""
        if self._run_dir is not None:
            self._run_dir.release()

    def _resume(self) -> TrainState:
        fresh = TrainState(num_processes=self.accelerator.num_processes)
        if not self.config.resume:
            return fresh
        ckpt = self._resume_from  # intact, and written by a run with these settings (sclearn.rundir)
        if ckpt is None:
            self.accelerator.print(f"resume: no checkpoint in {self.checkpoints.directory}; starting fresh")
            self.metrics.truncate_after(-1)
            return fresh
        state = TrainState.from_dict(read_state(ckpt), source=str(ckpt / STATE_FILE))
        self.accelerator.load_state(str(ckpt))
        self.accelerator.print(f"resumed from {ckpt} at step {state.global_step}")
        self.metrics.truncate_after(state.global_step)  # what the interrupted run logged after its checkpoint
        return state

    def _wrapper(self) -> nn.Module:
        return unwrap(self.accelerator, self.model)

    def backbone(self) -> nn.Module:
        """The trained backbone (no wrapper, no DDP, no compile)."""
        model = self._wrapper()
        return model.backbone if isinstance(model, MultiLayerSC) else model

    def _steps_per_epoch(self, stage: str) -> int:
        driver = self.loaders["unlabeled" if stage in SC_STAGES else "labeled"]
        return math.ceil(len(driver) / self.config.grad_accum_steps)

    def _total_steps(self, stage: str) -> int:
        total = self.config.epochs_for(stage) * self._steps_per_epoch(stage)
        cap = self.config.max_steps_for(stage)
        return min(total, cap) if cap else total

    # -- the stages ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Run every remaining stage; export the backbone; write summary.json and figures.

        The run dir stays locked until it returns or raises."""
        try:
            return self._fit()
        finally:
            self.release_run_dir()

    def _fit(self) -> dict[str, Any]:
        cfg, st = self.config, self.state
        start = time.time()
        while st.stage_index < len(cfg.stages):
            stage = cfg.stages[st.stage_index]
            self._run_stage(stage)
            if stage == "pretrain" and len(cfg.stages) > 1 and self.accelerator.is_main_process:
                export_backbone(self.backbone(), self.output_dir / "pretrain_backbone.safetensors",
                                self._export_meta())
            st.end_stage()
            self.checkpoints.save(st.to_dict())
        summary = self._finish(time.time() - start)
        self.accelerator.end_training()
        return summary

    def _run_stage(self, stage: str) -> None:
        st = self.state
        labeled = sc_data.cycle(self.loaders["labeled"], start=st.labeled_drawn) if stage == "joint" else None
        loop = StageLoop(stage, self.config, self.accelerator, self.model, self.optimizers[stage],
                         self.schedulers[stage], driver=self.loaders["unlabeled" if stage in SC_STAGES else "labeled"],
                         labeled=labeled, losses=lambda batch, lab: self._losses(stage, batch, lab),  # looked up per call
                         total_steps=self._total_steps(stage), checkpoints=self.checkpoints, metrics=self.metrics)
        set_train_mode(self.model, self.frozen, stage)
        run_stage(loop, st, evaluate=lambda: self.evaluate(stage))

    def _losses(self, stage: str, batch, labeled):
        """The loss terms of one micro-batch (:func:`~sclearn.train.loop.stage_losses`) and its image count."""
        weight = sc_weight_at(self.config, self.state.stage_step, self._total_steps(stage)) if stage == "joint" else 0.0
        return stage_losses(self.model, stage, batch, labeled, config=self.config, sc_weight=weight)

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, stage: str) -> dict[str, float]:
        """Test (and val) top-1 for CE stages; kNN (and linear) probes of the SC layer during pretrain."""
        if stage == "pretrain":
            return self.probe_sc_layer()
        accuracy = partial(evaluate_accuracy, self.model, device=self.accelerator.device,
                           gather=self.accelerator.gather_for_metrics)  # every process counts each image once
        out = {"test_acc": accuracy(self.eval_loaders["test"])} if self.config.eval_test else {}
        if "val" in self.eval_loaders:
            out["val_acc"] = accuracy(self.eval_loaders["val"])
        return out

    @torch.no_grad()
    def probe_sc_layer(self) -> dict[str, float]:
        """kNN top-1 (labelled set -> test / val) on frozen features of the first SC layer, on the main process.

        With ``probe_linear`` also the linear probe on the same features: on val when there is one, else on
        test (a curve to read; no choice is made on it).
        """
        cfg, accelerator, out = self.config, self.accelerator, {}
        if accelerator.is_main_process:
            backbone, wrapper = self.backbone(), self._wrapper()
            layer = cfg.layers[0] if cfg.layers else getattr(backbone, "sc_layer", None)
            names = [n for n in (("test", "val") if cfg.eval_test else ("val",)) if n in self.probe_loaders]
            linear = ("val" if "val" in self.probe_loaders else "test",) if cfg.probe_linear else ()
            scores = probe_splits(backbone, layer, self.probe_loaders["bank"], {n: self.probe_loaders[n] for n in names},
                                  k=cfg.knn_k, linear=linear, num_classes=self.num_classes, device=accelerator.device,
                                  to_map=wrapper.layout_for(layer) if isinstance(wrapper, MultiLayerSC) else None)
            for name, split in scores.items():
                tag = "" if name == "test" else f"_{name}"  # knn_top1 (test), knn_val_top1 (val)
                out.update({f"{kind}{tag}_top1": split[f"{kind}_top1"] for kind in ("knn", "linear")
                            if f"{kind}_top1" in split})
        accelerator.wait_for_everyone()
        return out

    probe = probe_sc_layer  # the earlier name

    # -- the end ---------------------------------------------------------------------------------------
    def _export_meta(self) -> dict[str, Any]:
        return export_meta(self.config, self.splits, input_size=self.input_size, **self.normalization)

    def _finish(self, wall_time_s: float) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            path = export_backbone(self.backbone(), self.output_dir / "backbone.safetensors", self._export_meta())
            figures = write_figures(self.metrics.path, self.backbone(), self.output_dir, log=self.accelerator.print)
            summary = run_summary(self.config, self.state, self.splits, num_processes=self.accelerator.num_processes,
                                  wall_time_s=wall_time_s, backbone_path=path, figures=figures)
            summary["export"] = str(export_run(self.output_dir, backbone=self.backbone(), summary=summary))
            write_summary(summary, self.output_dir)
        self.accelerator.wait_for_everyone()
        return summary
