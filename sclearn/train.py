"""``Trainer``: one Accelerate-driven loop for supervised, SC pre-training, fine-tuning, two-stage and joint.

    trainer = Trainer(TrainConfig(data="idx:/usr/share/datasets/fashion-mnist", mode="joint", ...))
    summary = trainer.fit()

Flow (after dino's ``train`` -> ``train_one_epoch``): ``fit`` runs the stages of the mode in order; each stage
runs epochs; each epoch drives one loader (labelled for CE stages, unlabelled for SC stages) and, in joint
mode, draws a labelled batch from a cycling loader at every step. A run dir holds ``config.json``,
``metrics.jsonl``, ``checkpoints/``, ``backbone.safetensors`` (+ ``.json``), ``summary.json``, figures and
``export/`` (a hub folder, see :mod:`sclearn.export`).

Resuming restores model, optimizers, schedulers, RNG states, counters and the position inside the epoch:
the resumed run computes exactly what the uninterrupted one would have (CPU, any ``num_workers``, either
data path).
"""

from __future__ import annotations

import difflib
import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import set_seed
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as sc_data
from . import rundir
from .backbones import build_backbone, check_head, check_init_source, export_backbone, load_backbone_weights
from .builders import build_sc_model
from .checkpoint import CheckpointManager, read_state
from .config import FREEZE_STAGES, TrainConfig
from .distributed import all_gather_with_grad
from .export import export_run, record_command
from .losses import SpatialContrastiveLoss
from .stopping import ConvergenceStop
from .wrapper import MultiLayerSC, SCOutput

SC_STAGES = ("pretrain", "joint")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the last good checkpoint is kept."""


class _CyclingLoader:
    """An endless view of a resumable loader whose position is a single counter.

    Batch ``k`` is batch ``k % len`` of pass ``k // len``, each pass reshuffled. Because the position is one
    integer, it is saved with a checkpoint and restored exactly.
    """

    def __init__(self, loader, drawn: int = 0) -> None:
        self.loader, self.drawn = loader, drawn
        self._it = None

    def _restart(self) -> None:
        n = len(self.loader)
        self.loader.batch_sampler.set_position(self.drawn // n, self.drawn % n)
        self._it = iter(self.loader)

    def __next__(self):
        if self._it is None:
            self._restart()
        try:
            batch = next(self._it)
        except StopIteration:
            self._restart()
            batch = next(self._it)
        self.drawn += 1
        return batch


class Trainer:
    """Trains a backbone with CE, SC, or both, as ``config.mode`` says.

    Args:
        config: The run.
        model: A backbone to train instead of building ``config.backbone`` (its head must have one output
            per class).
        splits: Data splits instead of loading ``config.data`` (a :class:`sclearn.data.SemiSupervisedSplits`).
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, splits=None) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = self._make_accelerator()
        self._run_dir: rundir.PreparedRunDir | None = None  # held by the main process only
        self._bar: tqdm | None = None  # the running stage's progress bar
        self._prepare_run_dir()
        try:
            self._setup(model, splits)
        except BaseException:
            if self._run_dir is not None:  # nothing trained: leave no half-made run behind
                self._run_dir.abandon()
            raise

    def _setup(self, model: nn.Module | None, splits) -> None:
        cfg = self.config
        if cfg.init_from and model is None:  # before the data loads: a missing or foreign file fails now
            check_init_source(cfg.init_from, architecture=cfg.backbone, in_chans=cfg.channels)
        if self.accelerator.is_main_process:
            record_command(self.output_dir, resume=bool(cfg.resume))  # for the model card
        set_seed(cfg.seed)
        with self.accelerator.main_process_first():
            self.splits = splits if splits is not None else self._load_splits()
        self.num_classes = self.splits.num_classes
        self.loaders, self.eval_loaders, self.probe_loaders, example = self._make_loaders()

        backbone = model if model is not None else self._build_backbone()
        self.input_size = list(example.shape[1:])  # (C, H, W), exported with the weights
        check_head(backbone, example, self.num_classes)
        if cfg.init_from:
            skipped = load_backbone_weights(backbone, cfg.init_from)
            if skipped:
                self.accelerator.print(f"init_from: re-initialised {skipped} (different shape)")
        self.frozen = self._frozen_modules(backbone)
        self.model = self._wrap(backbone)
        if isinstance(self.model, MultiLayerSC):
            # One dry SC forward: patch / map / hook errors now, not at step 1; also sizes lazy projectors.
            self.model.check_for_training(example[:2])
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            self.model = torch.compile(self.model)  # after the hooks: compile ignores later hooks

        self.optimizers = {s: self._make_optimizer(s) for s in cfg.stages}
        acc = self.accelerator
        prepared = acc.prepare(self.model, *self.optimizers.values())  # eval loaders: in _make_loaders
        self.model = prepared[0]
        self.optimizers = dict(zip(self.optimizers, prepared[1:]))
        self.schedulers = {s: self._make_scheduler(s) for s in cfg.stages}
        acc.register_for_checkpointing(*self.schedulers.values())
        if cfg.gather_negatives:
            for loss in self._sc_losses():
                loss.gather_fn = all_gather_with_grad

        self.checkpoints = CheckpointManager(acc, self.output_dir / "checkpoints", cfg.keep_checkpoints)
        self.state: dict[str, Any] = {
            "stage_index": 0, "epoch": 0, "batch_in_epoch": 0, "global_step": 0, "stage_step": 0,
            "labeled_drawn": 0, "batches_seen": 0, "nonfinite_skipped": 0, "stage_results": {}, "epoch_loss_sum": 0.0,
            "epoch_loss_count": 0, "num_processes": acc.num_processes,
        }
        self._resume()
        self.metrics_path = self.output_dir / "metrics.jsonl"
        if acc.log_with:
            acc.init_trackers(rundir.TRACKER_RUN_NAME, config=cfg.flat())

    # -- setup ---------------------------------------------------------------------------------------
    def _make_accelerator(self) -> Accelerator:
        cfg = self.config
        if cfg.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ValueError(
                "mixed_precision='bf16' is not supported by this GPU (needs Ampere or newer); "
                "use mixed_precision='fp16' or 'no'"
            )
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision='fp16' needs a CUDA GPU; on CPU use mixed_precision='bf16' or 'no'")
        report_to = cfg.report_to
        if report_to == "auto":
            try:
                import tensorboard  # noqa: F401

                report_to = "tensorboard"
            except ImportError:
                report_to = "none"
        if AcceleratorState._shared_state and PartialState().num_processes == 1:
            # A second Trainer in one process (benchmark arms, notebooks) may change mixed precision;
            # accelerate keeps one global state and would refuse. Single-process state is safe to reset.
            AcceleratorState._reset_state()
            GradientState._reset_state()
        accelerator = Accelerator(
            # None lets `accelerate launch --mixed_precision bf16` decide; the config then records it.
            mixed_precision=None if cfg.mixed_precision == "no" else cfg.mixed_precision,
            log_with=None if report_to == "none" else report_to,
            project_dir=str(self.output_dir),
            # SC-only stages leave the head (and CE stages the projectors) without gradients.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        cfg.mixed_precision = str(accelerator.mixed_precision)
        return accelerator

    def _prepare_run_dir(self) -> None:
        """Lock, check and set up the run dir (main process: one writer), and find what to resume from."""
        acc = self.accelerator
        if acc.is_main_process:
            self._run_dir = rundir.prepare_run_dir(self.config, num_processes=acc.num_processes, log=acc.print)
            self._resume_from = self._run_dir.resume_from
        acc.wait_for_everyone()
        if not acc.is_main_process:  # the same files, read after the main process checked them
            self._resume_from = rundir.resolve_resume(self.config.resume, self.output_dir, warn=False)

    def release_run_dir(self) -> None:
        """Release the run dir's lock (fit does at its end); another process may then write to it."""
        if self._run_dir is not None:
            self._run_dir.release()

    def _load_splits(self):
        cfg = self.config
        if not cfg.data:
            raise ValueError("no data: set TrainConfig.data (e.g. 'idx:/path/to/fashion-mnist') or pass splits=")
        dsd = sc_data.load_image_dataset(cfg.data)
        return sc_data.semi_supervised_splits(
            dsd,
            protocol=cfg.protocol,
            labels_per_class=cfg.labels_per_class,
            val_per_class=cfg.val_per_class,
            seed=cfg.split_seed,
            train_split=cfg.train_split,
            test_split=cfg.test_split,
            save_indices_to=str(self.output_dir / "split_indices.json") if self.accelerator.is_main_process else None,
        )

    def _make_loaders(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Tensor]:
        """(training, eval, probe loaders, example batch) from :func:`sclearn.data.build_loaders`.

        Training loaders stay ours (EpochBatchSampler, sharded by rank); eval loaders are prepared so that
        gather_for_metrics can drop the padding of uneven shards. Batches arrive on the device, augmented.
        """
        acc = self.accelerator
        with acc.local_main_process_first():  # one process per machine decodes the memory cache; the rest reuse it
            built = sc_data.build_loaders(self.config, self.splits, rank=acc.process_index,
                                          world_size=acc.num_processes, device=acc.device,
                                          prepare_eval=acc.prepare_data_loader)
        acc.print(f"data path: {built.path} ({built.reason})")
        self.normalization = {"mean": list(built.mean), "std": list(built.std)}  # exported with the weights
        return built.train, built.eval, built.probe, built.example

    def _build_backbone(self) -> nn.Module:
        cfg = self.config
        kwargs = dict(cfg.model_kwargs)
        return build_backbone(cfg.backbone, num_classes=self.num_classes, in_chans=cfg.channels, **kwargs)

    def _frozen_modules(self, backbone: nn.Module) -> list[nn.Module]:
        modules = dict(backbone.named_modules())
        unknown = [n for n in self.config.freeze if n not in modules]
        if unknown:
            close = {n: difflib.get_close_matches(n, list(modules), n=3) for n in unknown}
            raise ValueError(f"freeze names modules the backbone does not have: {close} (name: close matches). "
                             "Names come from backbone.named_modules().")
        frozen = [modules[n] for n in self.config.freeze]
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        if "" in self.config.freeze or all(id(p) in frozen_ids for p in backbone.parameters()):
            raise ValueError(f"freeze={list(self.config.freeze)} leaves no backbone parameter to train; freeze "
                             "only the early stages (e.g. freeze=('stages.0',))")
        return frozen

    def _frozen_param_ids(self) -> set[int]:
        return {id(p) for m in self.frozen for p in m.parameters()}

    def _train_mode(self, stage: str) -> None:
        """model.train(), then the stage's frozen modules back to eval (their batch-norm statistics stay)."""
        self.model.train()
        freeze = stage in FREEZE_STAGES
        for module in self.frozen:
            if freeze:
                module.eval()
            for p in module.parameters():
                p.requires_grad_(not freeze)

    def _wrap(self, backbone: nn.Module) -> nn.Module:
        return build_sc_model(self.config, backbone) if self.config.uses_sc else backbone

    def _sc_losses(self) -> list[SpatialContrastiveLoss]:
        wrapper = self._wrapper()
        return list(wrapper.losses.values()) if isinstance(wrapper, MultiLayerSC) else []

    def _wrapper(self) -> nn.Module:
        model = self.accelerator.unwrap_model(self.model)
        return getattr(model, "_orig_mod", model)

    def backbone(self) -> nn.Module:
        """The trained backbone (no wrapper, no DDP, no compile)."""
        model = self._wrapper()
        return model.backbone if isinstance(model, MultiLayerSC) else model

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        cfg = self.config
        decay, no_decay = [], []
        frozen = self._frozen_param_ids() if stage in FREEZE_STAGES else set()
        for p in self.model.parameters():
            if id(p) not in frozen:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=cfg.lr_for(stage), momentum=cfg.momentum)

    def _steps_per_epoch(self, stage: str) -> int:
        driver = self.loaders["unlabeled" if stage in SC_STAGES else "labeled"]
        return math.ceil(len(driver) / self.config.grad_accum_steps)

    def _total_steps(self, stage: str) -> int:
        total = self.config.epochs_for(stage) * self._steps_per_epoch(stage)
        cap = self.config.max_steps_for(stage)
        return min(total, cap) if cap else total

    def _make_scheduler(self, stage: str):
        cfg, opt = self.config, self.optimizers[stage]
        if cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=cfg.plateau_patience)
        total, warmup = self._total_steps(stage), min(cfg.warmup_steps, self._total_steps(stage) - 1)
        if cfg.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(opt, cosine)

    def _resume(self) -> None:
        cfg = self.config
        if not cfg.resume:
            return
        ckpt = self._resume_from  # intact, and written by a run with these settings (sclearn.rundir)
        if ckpt is None:
            self.accelerator.print(f"resume: no checkpoint in {self.checkpoints.directory}; starting fresh")
            self._truncate_metrics(-1)
            return
        saved = read_state(ckpt)
        self.accelerator.load_state(str(ckpt))
        self.state = saved
        self.accelerator.print(f"resumed from {ckpt} at step {self.state['global_step']}")
        self._truncate_metrics(self.state["global_step"])

    def _truncate_metrics(self, last_step: int) -> None:
        """Drop what an interrupted run logged after its checkpoint (and a line cut short by a kill)."""
        path = self.output_dir / "metrics.jsonl"
        if not (self.accelerator.is_main_process and path.is_file()):
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= last_step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Run every remaining stage; export the backbone; write summary.json and figures.

        The run dir stays locked until it returns or raises."""
        try:
            return self._fit()
        finally:
            if self._bar is not None:
                self._bar.close()  # an error message then starts on a line of its own
            self.release_run_dir()

    def _fit(self) -> dict[str, Any]:
        cfg, acc, st = self.config, self.accelerator, self.state
        start = time.time()
        while st["stage_index"] < len(cfg.stages):
            stage = cfg.stages[st["stage_index"]]
            self._run_stage(stage)
            if stage == "pretrain" and len(cfg.stages) > 1 and acc.is_main_process:
                export_backbone(self.backbone(), self.output_dir / "pretrain_backbone.safetensors",
                                self._export_meta())
            st.update(stage_index=st["stage_index"] + 1, epoch=0, batch_in_epoch=0, stage_step=0,
                      labeled_drawn=0, epoch_loss_sum=0.0, epoch_loss_count=0)
            self.checkpoints.save(st)
        summary = self._finish(time.time() - start)
        acc.end_training()
        return summary

    def _run_stage(self, stage: str) -> None:
        cfg, acc, st = self.config, self.accelerator, self.state
        driver = self.loaders["unlabeled" if stage in SC_STAGES else "labeled"]
        total = self._total_steps(stage)
        labeled = _CyclingLoader(self.loaders["labeled"], st["labeled_drawn"]) if stage == "joint" else None
        opt, sched = self.optimizers[stage], self.schedulers[stage]
        bar = self._bar = tqdm(total=total, initial=st["stage_step"], desc=stage, dynamic_ncols=True,
                   disable=not (cfg.progress and acc.is_local_main_process))
        stage_start, log = time.time(), _LogWindow()
        self._train_mode(stage)
        n_batches = len(driver)
        for epoch in range(st["epoch"], cfg.epochs_for(stage)):
            if st["stage_step"] >= total or "stop_reason" in st["stage_results"].get(stage, {}):
                break
            skip = st["batch_in_epoch"]
            driver.batch_sampler.set_position(epoch, skip)
            batches = iter(driver)
            group_bad, group_terms = None, []
            for i in range(skip, n_batches):
                self._seed_step()  # augmentation and patch positions of this step depend on its index only
                batch = next(batches)
                group_start = (i // cfg.grad_accum_steps) * cfg.grad_accum_steps
                group_size = min(cfg.grad_accum_steps, n_batches - group_start)
                last_in_group = i == group_start + group_size - 1
                lab_batch = next(labeled) if labeled is not None else None
                batch, lab_batch = self._to_device(batch), self._to_device(lab_batch)
                with acc.no_sync(self.model) if not last_in_group else nullcontext():
                    terms, n_images = self._losses(stage, batch, lab_batch)
                    acc.backward(terms["loss"] / group_size)
                # A device-side flag: the host looks at it once per optimizer step, not per micro-batch.
                bad = ~torch.isfinite(terms["loss"].detach())
                group_bad = bad if group_bad is None else group_bad | bad
                group_terms.append(({k: v.detach() for k, v in terms.items()}, n_images))
                st["batch_in_epoch"] = i + 1
                st["batches_seen"] += 1
                if labeled is not None:
                    st["labeled_drawn"] = labeled.drawn
                if not last_in_group:
                    continue
                if self._any_process(group_bad):  # the whole group is dropped, on every process alike
                    self._handle_nonfinite(stage, group_terms)
                else:
                    opt.step()
                    for micro_terms, n in group_terms:
                        log.add(micro_terms, n)
                opt.zero_grad(set_to_none=True)
                group_bad, group_terms = None, []
                if cfg.schedule != "plateau":
                    sched.step()
                st["global_step"] += 1
                st["stage_step"] += 1
                bar.update(1)
                if st["stage_step"] % cfg.log_every == 0:
                    self._log_window(stage, epoch, log, opt, bar)
                end_of_epoch = st["batch_in_epoch"] == n_batches
                if self._step_evaluates(stage, epoch, ends_epoch=end_of_epoch or st["stage_step"] >= total):
                    with log.paused():  # before this step's checkpoint, so a resumed run has the record
                        self._write_metrics({"step": st["global_step"], "stage": stage, "epoch": epoch,
                                             "event": "eval", **self.evaluate(stage)})
                # Epoch ends save in _end_epoch (after evaluation) and the stage's last step in fit().
                mid_epoch = not end_of_epoch and st["stage_step"] < total
                if cfg.checkpoint_every and st["stage_step"] % cfg.checkpoint_every == 0 and mid_epoch:
                    if log.count:  # the epoch's loss sum must be complete in the saved state
                        self._log_window(stage, epoch, log, opt, bar)
                    self.checkpoints.save(st)
                    log.restart_clock()  # img/s measures training steps, not checkpoint writes
                if st["stage_step"] >= total:
                    break
            if log.count:
                self._log_window(stage, epoch, log, opt, bar)
            self._end_epoch(stage, epoch, sched)
            log.restart_clock()
        bar.close()
        st["stage_results"].setdefault(stage, {})["wall_time_s"] = round(
            st["stage_results"].get(stage, {}).get("wall_time_s", 0.0) + time.time() - stage_start, 2
        )

    def _seed_step(self) -> None:
        # One seed per (run seed, micro-batch, process): a resumed run draws exactly what the
        # uninterrupted one drew, whatever ran in between (loader start-up, evaluation, checkpointing).
        st, acc = self.state, self.accelerator
        set_seed((self.config.seed * 1_000_003 + st["batches_seen"] * 7919 + acc.process_index * 104_729) % 2**32)

    def _to_device(self, batch):
        if batch is None:
            return None
        x, y = batch
        dev = self.accelerator.device
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def _losses(self, stage: str, batch, lab_batch) -> tuple[dict[str, Tensor], int]:
        cfg = self.config
        x, y = batch
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stage in ("supervised", "finetune"):
            out = self.model(x, compute_sc=False) if cfg.uses_sc else self.model(x)
            logits = out.logits if isinstance(out, SCOutput) else out
            ce = F.cross_entropy(logits.float(), y)
            return {"loss": ce, "ce": ce}, x.shape[0]
        if stage == "pretrain":
            # No logits: under DDP the head must look unused, since the SC-only loss sends it no gradient.
            out = self.model(x, compute_sc=True, return_logits=False)
            terms = {"loss": out.sc_loss, "sc": out.sc_loss}
        else:  # joint: one forward pass over labelled + unlabelled; CE on the labelled part only
            xl, yl = lab_batch
            out = self.model(torch.cat([xl, x]), compute_sc=True)
            ce = F.cross_entropy(out.logits[: xl.shape[0]].float(), yl)
            lam = self._sc_weight()
            terms = {"loss": ce + lam * out.sc_loss, "ce": ce, "sc": out.sc_loss}
            x = torch.cat([xl, x])
        terms.update({f"sc/{k}": v for k, v in out.sc_losses.items()})
        return terms, x.shape[0]

    def _sc_weight(self) -> float:
        cfg = self.config
        ramp = cfg.sc_rampup_steps
        if isinstance(ramp, float):  # a fraction of the stage
            ramp = ramp * self._total_steps(self.config.stages[self.state["stage_index"]])
        if ramp <= 0:
            return cfg.sc_weight
        return cfg.sc_weight * min(1.0, self.state["stage_step"] / ramp)

    def _any_process(self, flag: Tensor) -> bool:
        """True when ``flag`` is set on any process: all must agree to skip a step, or DDP would hang."""
        flag = flag.float()
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag > 0)

    def _handle_nonfinite(self, stage: str, group_terms: list[tuple[dict[str, Tensor], int]]) -> None:
        st = self.state
        step = st["global_step"] + 1  # the step being dropped
        # Name the loss terms of the first bad micro-batch (on this process; another may hold the NaN).
        terms = next((t for t, _ in group_terms if not torch.isfinite(t["loss"])), group_terms[-1][0])
        values = {k: float(v) for k, v in terms.items()}
        if self.config.on_nonfinite == "raise":
            latest = self.checkpoints.latest()
            kept = (f"The last good checkpoint is {latest}." if latest is not None else
                    "No checkpoint was written yet (checkpoint_every sets how often).")
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (stage {stage!r}, epoch {st['epoch']}): "
                f"{values}. {kept} Lower the lr or sc_weight, or set on_nonfinite='skip' to skip such steps."
            )
        st["nonfinite_skipped"] += 1
        self._write_metrics({"step": step, "stage": stage, "event": "nonfinite_skipped", **values})

    # -- logging and evaluation ----------------------------------------------------------------------
    def _log_window(self, stage: str, epoch: int, log: _LogWindow, opt, bar) -> None:
        st = self.state
        record = {"step": st["global_step"], "stage": stage, "epoch": epoch, **log.means(self.accelerator)}
        record["lr"] = opt.param_groups[0]["lr"]
        record["img_per_s"] = round(log.images * self.accelerator.num_processes / max(log.elapsed(), 1e-9), 1)
        if stage == "joint":
            record["sc_weight"] = self._sc_weight()
        record["nonfinite_skipped"] = st["nonfinite_skipped"]
        # Sums over all processes: the plateau scheduler sees the same epoch loss everywhere.
        st["epoch_loss_sum"] += log.sums.get("loss", 0.0)
        st["epoch_loss_count"] += log.count_all
        log.reset()
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "ce", "sc")})
        self._write_metrics(record)

    def _write_metrics(self, record: dict[str, Any]) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if acc.log_with:
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                    step=record["step"])

    def _end_epoch(self, stage: str, epoch: int, sched) -> None:
        cfg, st = self.config, self.state
        epoch_loss = st["epoch_loss_sum"] / max(1, st["epoch_loss_count"])
        if cfg.schedule == "plateau" and st["epoch_loss_count"]:  # no finite step, nothing to judge
            sched.step(epoch_loss)  # the paper: lr / 10 when the loss stops decreasing
        record: dict[str, Any] = {"step": st["global_step"], "stage": stage, "epoch": epoch, "event": "epoch_end",
                                  "epoch_loss": epoch_loss}
        results = st["stage_results"].setdefault(stage, {})
        stop = self._stop_reason(stage, epoch, epoch_loss if st["epoch_loss_count"] else None, results)
        capped = epoch + 1 == cfg.epochs_for(stage) or st["stage_step"] >= self._total_steps(stage)
        last = capped or stop is not None
        if self._epoch_evaluates(stage, epoch) or stop is not None:
            record.update(self.evaluate(stage))
        results.update({k: v for k, v in record.items() if k.endswith(("acc", "top1"))})
        results.update(epochs=epoch + 1, steps=st["stage_step"])
        if "val_acc" in record:
            results["best_val_acc"] = max(results.get("best_val_acc", 0.0), record["val_acc"])
        self._write_metrics(record)
        if stop is not None:  # why the stage ends: in summary.json (stage results) and as an event
            results.update(stop_reason=stop, stopped_early=not capped)
            keys = ("epochs", "steps", "best_epoch", "best_epoch_loss")
            self._write_metrics({"step": st["global_step"], "stage": stage, "epoch": epoch, "event": "stage_stopped",
                                 "reason": stop, **{k: results[k] for k in keys if k in results}})
        st.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        # A step checkpoint that falls on an epoch end is taken here, after the epoch's evaluation; the
        # stage's last state is saved by fit(). No checkpoint per epoch: with tiny labelled sets an epoch is
        # a step or two.
        if cfg.checkpoint_every and st["stage_step"] % cfg.checkpoint_every == 0 and not last:
            self.checkpoints.save(st)

    def _stop_reason(self, stage: str, epoch: int, epoch_loss: float | None, results: dict[str, Any]) -> str | None:
        """Why the pretrain stage ends after ``epoch`` when ``pretrain_patience`` is set, else None.

        ``converged`` (the :class:`ConvergenceStop` fired; its state lives in ``results``, saved with every
        checkpoint), ``epoch_cap`` (``pretrain_epochs``) or ``step_cap`` (``pretrain_max_steps`` / ``max_steps``).
        """
        cfg = self.config
        if stage != "pretrain" or cfg.pretrain_patience is None:
            return None
        rule = ConvergenceStop(cfg.pretrain_patience, cfg.pretrain_min_epochs, cfg.pretrain_min_delta)
        if rule.update(results, epoch + 1, epoch_loss):
            return "converged"
        if epoch + 1 == cfg.epochs_for(stage):
            return "epoch_cap"
        return "step_cap" if self.state["stage_step"] >= self._total_steps(stage) else None

    def _epoch_evaluates(self, stage: str, epoch: int) -> bool:
        """Whether the end of ``epoch`` evaluates: every ``eval_every`` epochs, and at the stage's end."""
        cfg = self.config
        last = epoch + 1 == cfg.epochs_for(stage) or self.state["stage_step"] >= self._total_steps(stage)
        return (epoch + 1) % cfg.eval_every == 0 or last

    def _step_evaluates(self, stage: str, epoch: int, ends_epoch: bool) -> bool:
        """An ``eval_every_steps`` evaluation is due now, and no end-of-epoch evaluation follows at this step."""
        every = self.config.eval_every_steps
        due = bool(every) and self.state["stage_step"] % every == 0
        return due and not (ends_epoch and self._epoch_evaluates(stage, epoch))

    @torch.no_grad()
    def accuracy(self, loader) -> float:
        """Top-1 over a prepared loader, gathered across processes (duplicates from padding dropped)."""
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            out = self.model(x, compute_sc=False) if self.config.uses_sc else self.model(x)
            logits = out.logits if isinstance(out, SCOutput) else out
            preds, y = self.accelerator.gather_for_metrics((logits.argmax(-1), y))
            correct += int((preds == y).sum())
            total += y.numel()
        stages = self.config.stages
        self._train_mode(stages[min(self.state["stage_index"], len(stages) - 1)])
        return correct / max(1, total)

    def evaluate(self, stage: str) -> dict[str, float]:
        """Test (and val) top-1 for CE stages; a kNN probe on frozen SC-layer features during pretrain."""
        if stage != "pretrain":
            out = {"test_acc": self.accuracy(self.eval_loaders["test"])} if self.config.eval_test else {}
            if "val" in self.eval_loaders:
                out["val_acc"] = self.accuracy(self.eval_loaders["val"])
            return out
        return self.probe()

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """kNN top-1 (labelled set -> test / val) on frozen features of the first SC layer.

        With ``probe_linear`` also the linear probe on the same features: on val when there is one, else on
        test (a curve to read; no choice is made on it).
        """
        from .evaluation import extract_features, knn_probe, linear_probe

        acc = self.accelerator
        out: dict[str, float] = {}
        if acc.is_main_process:
            backbone, layer = self.backbone(), self.config.layers[0] if self.config.layers else None
            layer = layer or getattr(backbone, "sc_layer", None)
            was_training = backbone.training
            wrapper = self._wrapper()
            to_map = wrapper._layouts[layer] if isinstance(wrapper, MultiLayerSC) else None  # tokens / NHWC

            def features(loader):
                return extract_features(backbone, loader, layer=layer, device=acc.device, to_map=to_map)

            bank, bank_y = features(self.probe_loaders["bank"])
            linear_on = "val" if "val" in self.probe_loaders else "test"
            for name in ("test", "val") if self.config.eval_test else ("val",):
                if name in self.probe_loaders:
                    f, y = features(self.probe_loaders[name])
                    key = "knn_top1" if name == "test" else "knn_val_top1"
                    out[key] = knn_probe(bank, bank_y, f, y, k=self.config.knn_k, num_classes=self.num_classes)
                    if self.config.probe_linear and name == linear_on:
                        out[key.replace("knn", "linear")] = linear_probe(bank, bank_y, f, y)
            backbone.train(was_training)
        acc.wait_for_everyone()
        return out

    # -- the end -------------------------------------------------------------------------------------
    def _export_meta(self) -> dict[str, Any]:
        cfg = self.config
        return {"architecture": cfg.backbone, "num_classes": self.num_classes, "in_chans": cfg.channels,
                "class_names": list(self.splits.class_names), "sc_layers": list(cfg.layers),
                "mode": cfg.mode, "image_size": cfg.image_size, "input_size": self.input_size, **self.normalization}

    def _finish(self, wall_time: float) -> dict[str, Any]:
        acc, st, cfg = self.accelerator, self.state, self.config
        summary: dict[str, Any] = {}
        if acc.is_main_process:
            summary["num_processes"] = acc.num_processes
            path = export_backbone(self.backbone(), self.output_dir / "backbone.safetensors", self._export_meta())
            final = st["stage_results"].get(cfg.stages[-1], {})
            summary = {
                **summary,
                "mode": cfg.mode,
                "final_test_acc": final.get("test_acc"),
                "best_val_acc": final.get("best_val_acc"),
                "stages": st["stage_results"],
                "global_steps": st["global_step"],
                "nonfinite_skipped": st["nonfinite_skipped"],
                "wall_time_s": round(wall_time, 2),
                "num_labeled": len(self.splits.labeled),
                "num_unlabeled": len(self.splits.unlabeled) if self.splits.unlabeled is not None else 0,
                "num_test": len(self.splits.test),
                "backbone": str(path),
                "output_dir": str(self.output_dir),
                "figures": self._write_figures(),
            }
            summary["export"] = str(export_run(self.output_dir, backbone=self.backbone(), summary=summary))
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    def _write_figures(self) -> list[str]:
        try:
            from .plots import plot_first_layer_filters, plot_training_curves
        except ImportError:
            return []
        try:
            return [
                str(plot_training_curves(self.metrics_path, self.output_dir / "training_curves.png")),
                str(plot_first_layer_filters(self.backbone(), self.output_dir / "first_layer_filters.png")),
            ]
        except ImportError as e:  # matplotlib missing: figures are optional ([viz] extra)
            self.accelerator.print(f"figures skipped: {e}")
            return []


class _LogWindow:
    """Running sums of loss terms between two log lines, kept on device: no host sync per step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros(()))
        self.sums: dict[str, float] = {}
        self.count = 0
        self.count_all = 0
        self.images = 0
        self._start = time.perf_counter()

    def add(self, terms: dict[str, Tensor], n_images: int) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k].to(v.device) + v
        self.count += 1
        self.images += n_images

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and over all processes, so every process logs and schedules alike."""
        keys = sorted(self._sums)
        if not keys:
            return {}
        packed = torch.stack([self._sums[k] for k in keys] + [torch.tensor(float(self.count)).to(self._sums[keys[0]])])
        if accelerator.num_processes > 1:
            packed = accelerator.reduce(packed, reduction="sum")
        values = packed.tolist()  # the one host sync of the window
        self.count_all = int(values[-1])
        self.sums = dict(zip(keys, values[:-1]))
        return {k: v / max(1, self.count_all) for k, v in self.sums.items()}

    def restart_clock(self) -> None:
        self._start = time.perf_counter()

    @contextmanager
    def paused(self):
        """Time spent inside (an evaluation between steps) does not count towards img/s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


__all__ = ["NonFiniteLossError", "Trainer"]
