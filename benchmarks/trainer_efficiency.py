"""Trainer efficiency: ``Trainer`` img/s divided by a bare hand-written PyTorch loop's img/s (target >= 0.97).

Both sides train the same model on the same data with the same batch size, transforms and number of steps:

- ``bare``:    the trainer's data path (``_harness.loader``) and a hand-written step (``_harness.BareStep``):
               ``torch.optim.SGD``, cross-entropy; in joint mode also the same ``MultiLayerSC`` forward over
               labelled + unlabelled images and ``CE + sc_weight * SC``. No accelerate, no logging, no
               checkpoints, no LR schedule.
- ``trainer``: ``Trainer(TrainConfig(..., checkpoint_every=None, log_every=50, report_to="none",
               progress=False, eval_every=<huge>, eval_test=False)).fit()``.

How the time is taken. ``--interleave step`` (default): inside one ``Trainer.fit`` of ``--warmup`` +
``--steps`` steps, a ``register_step_post_hook`` on the trainer's (inner torch) optimizer runs one bare step
right away and times it with ``time.perf_counter()`` / ``time.process_time()``; the trainer's step is the
time from the hook's return to its next call: data loading, augmentation, forward, backward, optimizer step,
and the trainer's per-step seeding, non-finite check, log window, LR scheduler and the logging every
``log_every`` steps. Trainer and bare steps alternate one by one, so both see the same machine state; on a
busy machine this pairing is far tighter than whole runs. ``--interleave run``: whole bare runs and trainer
runs in ABBA order, each timed by the same kind of step hook on its optimizer from the end of step ``warmup``
to the end of the last step. Either way set-up (dataset loading, model build, accelerate ``prepare``) and the
final evaluation / export are outside the window, and the window never crosses an epoch end (checked), so
the epoch-end checkpoint is *not* in the headline ratio; ``--profile`` measures it separately.

The headline is the median over repetitions of ``trainer img/s / bare img/s`` (the same images per step on
both sides). With one torch thread and ``num_workers=0`` the process CPU time is reported too: less disturbed
by other processes than wall time (though a busy sibling hyper-thread still slows it).

Usage::

    python benchmarks/trainer_efficiency.py                                   # sc_mnist, supervised + joint
    python benchmarks/trainer_efficiency.py --cases sc_mnist resnet18_32 --reps 5 --write-results
    python benchmarks/trainer_efficiency.py --profile                         # + cProfile of one trainer run
    python benchmarks/trainer_efficiency.py --smoke --data idx:tests/fixture  # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import Contention, markdown_table, mean_pm_std, summarize

from sclearn import TrainConfig, Trainer
from sclearn import data as sc_data

CASES = harness.MODEL_CASES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Trainer img/s over a bare PyTorch loop's img/s on the same model, data, batch and steps; "
                       "prints one JSON object.",
                       smoke="tiny run for CI: batch 16, 1 warm-up + 3 measured steps, 1 rep, 10 labels/class "
                       "(use with a small --data, e.g. the tests' IDX fixture)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=["sc_mnist"],
                   help="models: " + harness.describe_cases(CASES))
    p.add_argument("--modes", nargs="+", choices=["supervised", "joint"], default=["supervised", "joint"],
                   help="training modes to compare")
    p.add_argument("--batch-size", type=int, default=128,
                   help="labelled batch; joint steps add batch-size * unlabeled-ratio unlabelled images")
    p.add_argument("--unlabeled-ratio", type=float, default=2.0, help="joint mode: unlabelled per labelled image")
    p.add_argument("--labels-per-class", type=int, default=400,
                   help="joint mode: labelled images per class (supervised mode uses every label)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured optimizer steps at the start of every run")
    p.add_argument("--steps", type=int, default=100, help="measured optimizer steps per run")
    p.add_argument("--reps", type=int, default=5, help="repetitions; each runs bare and trainer once (ABBA order)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP_NUM_THREADS)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers on both sides")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    p.add_argument("--interleave", choices=["step", "run"], default="step",
                   help="step: inside one Trainer.fit, every trainer step is followed by one bare step (timed "
                   "separately), so both see the same machine state; run: whole bare and trainer runs in ABBA "
                   "order, each timed by its own step hook")
    p.add_argument("--profile", action="store_true",
                   help="after timing, run the trainer (and the bare loop) once more under cProfile and report "
                   "ms/step of the trainer's per-step pieces, plus the epoch-end checkpoint's cost")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.warmup, args.steps, args.reps, args.labels_per_class = 16, 1, 3, 1, 10
    return args


# -- shared helpers ------------------------------------------------------------------------------------------
class StepClock:
    """Wall and process-CPU timestamps after every step of a torch optimizer (a step post-hook)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._handle = optimizer.register_step_post_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def window(self, warmup: int, steps: int) -> tuple[float, float]:
        """(wall, cpu) seconds of steps warmup+1 .. warmup+steps (1-based)."""
        if len(self.wall) < warmup + steps or warmup < 1:
            raise RuntimeError(f"{len(self.wall)} steps recorded, need warmup >= 1 and {warmup + steps}")
        a, b = warmup - 1, warmup + steps - 1
        return self.wall[b] - self.wall[a], self.cpu[b] - self.cpu[a]

    def remove(self) -> None:
        self._handle.remove()


def train_config(case: str, mode: str, args: argparse.Namespace, output_dir: str, steps: int) -> TrainConfig:
    return TrainConfig(
        data=args.data, **CASES[case], mode=mode, batch_size=args.batch_size, unlabeled_ratio=args.unlabeled_ratio,
        labels_per_class=args.labels_per_class if mode == "joint" else None, epochs=1, max_steps=steps,
        num_workers=args.num_workers, seed=args.seed, split_seed=args.seed, output_dir=output_dir,
        checkpoint_every=None, log_every=50, report_to="none", progress=False, eval_every=harness.BIG,
        eval_test=False,
    )


class Data:
    """The dataset and its splits per mode, loaded once for the bare loop (the trainer loads its own)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dsd = sc_data.load_image_dataset(args.data)
        self._splits: dict[str, Any] = {}
        self.args = args

    def splits(self, mode: str) -> sc_data.SemiSupervisedSplits:
        if mode not in self._splits:
            lpc = self.args.labels_per_class if mode == "joint" else None
            self._splits[mode] = sc_data.semi_supervised_splits(self.dsd, labels_per_class=lpc, seed=self.args.seed)
        return self._splits[mode]


# -- the two sides -------------------------------------------------------------------------------------------
class BareLoop:
    """The hand-written loop, one step at a time: ``step()`` loads its batch(es) and runs a :class:`BareStep`."""

    def __init__(self, case: str, mode: str, args: argparse.Namespace, data: Data) -> None:
        self.total = args.warmup + args.steps
        cfg = train_config(case, mode, args, output_dir="unused", steps=self.total)
        splits = data.splits(mode)
        self.train_step = harness.BareStep(cfg, splits.num_classes)
        self.opt = self.train_step.opt
        if mode == "joint":  # the joint step is driven by the unlabelled loader; the labelled one cycles
            driver = harness.loader(cfg, splits, splits.unlabeled, train=True, batch_size=cfg.unlabeled_batch_size,
                                    drop_last=True)
            self.labeled = sc_data.cycle(harness.loader(cfg, splits, splits.labeled, train=True, drop_last=True))
        else:
            driver = harness.loader(cfg, splits, splits.labeled, train=True)
            self.labeled = None
        if len(driver) < self.total:
            raise ValueError(f"{len(driver)} batches per epoch < {self.total} steps: the window would cross an "
                             "epoch end")
        self.driver = iter(driver)

    def step(self) -> int:
        x, y = next(self.driver)
        if self.labeled is None:
            return self.train_step(x, y)
        xl, yl = next(self.labeled)
        return self.train_step(xl, yl, x)


def run_bare(case: str, mode: str, args: argparse.Namespace, data: Data, profile: cProfile.Profile | None = None
             ) -> dict[str, Any]:
    """The bare loop for warmup + steps steps, timed by the same step hook as the trainer."""
    bare = BareLoop(case, mode, args, data)
    clock = StepClock(bare.opt)
    images = 0
    with profile if profile is not None else contextlib.nullcontext():
        for step in range(1, bare.total + 1):
            n = bare.step()
            if step > args.warmup:
                images += n
    clock.remove()
    wall, cpu = clock.window(args.warmup, args.steps)
    return {"wall_s": wall, "cpu_s": cpu, "images": images}


@contextlib.contextmanager
def scratch_trainer(case: str, mode: str, args: argparse.Namespace, steps: int) -> Iterator[tuple[Trainer, float]]:
    """(Trainer of ``steps`` steps in a temporary run dir, its set-up seconds); its prints go to stderr. The
    steps must fit in one epoch, so that no epoch end falls inside a measured window."""
    with tempfile.TemporaryDirectory(prefix="sclearn-eff-") as out, contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        trainer = Trainer(train_config(case, mode, args, output_dir=out, steps=steps))
        setup_s = time.perf_counter() - start
        if trainer._steps_per_epoch(mode) < steps:
            raise ValueError(f"{trainer._steps_per_epoch(mode)} steps per epoch < {steps}: the window would cross "
                             "an epoch end")
        yield trainer, setup_s


def run_interleaved(case: str, mode: str, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """Trainer steps and bare steps alternating one by one, inside one ``Trainer.fit``.

    The trainer optimizer's step post-hook runs one bare step right away and times it; the trainer's step is
    the time from the hook's return to its next call (data loading, seeding, forward, backward, step, logging:
    everything the trainer does per step). Both sides see the same machine state, step by step.
    """
    total = args.warmup + args.steps
    bare = BareLoop(case, mode, args, data)
    times: dict[str, list[tuple[float, float]]] = {"trainer": [], "bare": []}
    resume = {"wall": 0.0, "cpu": 0.0}

    def hook(*_: Any) -> None:
        w, c = time.perf_counter(), time.process_time()
        if resume["wall"]:
            times["trainer"].append((w - resume["wall"], c - resume["cpu"]))
        bare.step()
        w2, c2 = time.perf_counter(), time.process_time()
        times["bare"].append((w2 - w, c2 - c))
        resume["wall"], resume["cpu"] = time.perf_counter(), time.process_time()

    with scratch_trainer(case, mode, args, total) as (trainer, _):
        handle = trainer.optimizers[mode].optimizer.register_step_post_hook(hook)
        trainer.fit()
        handle.remove()
    # trainer[i] is trainer step i + 2 (the first has no start mark); bare[i] is bare step i + 1
    tr = times["trainer"][args.warmup - 1 : args.warmup - 1 + args.steps]
    ba = times["bare"][args.warmup : args.warmup + args.steps]
    per_step = args.batch_size + (trainer.config.unlabeled_batch_size if mode == "joint" else 0)
    return {
        "trainer": {"wall_s": sum(t[0] for t in tr), "cpu_s": sum(t[1] for t in tr), "images": per_step * len(tr)},
        "bare": {"wall_s": sum(t[0] for t in ba), "cpu_s": sum(t[1] for t in ba), "images": per_step * len(ba)},
        "step_ratios": [b[0] / t[0] for t, b in zip(tr, ba)],  # trainer img/s / bare img/s, per step pair
    }


def run_trainer(case: str, mode: str, args: argparse.Namespace, profile: cProfile.Profile | None = None
                ) -> dict[str, Any]:
    """``Trainer.fit`` timed by a step hook on its optimizer; the run dir is a temporary directory."""
    with scratch_trainer(case, mode, args, args.warmup + args.steps) as (trainer, setup_s):
        cfg = trainer.config
        clock = StepClock(trainer.optimizers[mode].optimizer)  # the torch SGD inside accelerate's wrapper
        fit_start = time.perf_counter()
        with profile if profile is not None else contextlib.nullcontext():
            summary = trainer.fit()
        fit_s = time.perf_counter() - fit_start
        clock.remove()
        wall, cpu = clock.window(args.warmup, args.steps)
        after_last_step_s = fit_start + fit_s - clock.wall[-1]  # epoch end (checkpoint), export, figures
        logged = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = args.batch_size + (cfg.unlabeled_batch_size if mode == "joint" else 0)
    windows = [r["img_per_s"] for r in logged if "img_per_s" in r]
    return {
        "wall_s": wall, "cpu_s": cpu, "images": per_step * args.steps, "setup_s": round(setup_s, 2),
        "after_last_step_s": round(after_last_step_s, 3), "global_steps": summary.get("global_steps"),
        # the trainer's own log: windows of log_every steps; the first one includes the loader start-up
        "logged_img_per_s": windows,
    }


# -- measurement ---------------------------------------------------------------------------------------------
def measure(case: str, mode: str, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "trainer": []}
    contention = Contention()
    step_ratios: list[float] = []

    def add(side: str, r: dict[str, Any]) -> None:
        r["img_per_s_wall"] = r["images"] / r["wall_s"]
        r["img_per_s_cpu"] = r["images"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
        runs[side].append(r)

    for rep in range(args.reps):
        if args.interleave == "step":
            print(f"[trainer_efficiency] {case}/{mode} rep {rep + 1}/{args.reps}: interleaved steps",
                  file=sys.stderr)
            with contention.measure():
                both = run_interleaved(case, mode, args, data)
            add("bare", both["bare"])
            add("trainer", both["trainer"])
            step_ratios += both["step_ratios"]
            continue
        order = ("bare", "trainer") if rep % 2 == 0 else ("trainer", "bare")
        for side in order:
            print(f"[trainer_efficiency] {case}/{mode} rep {rep + 1}/{args.reps}: {side}", file=sys.stderr)
            with contention.measure():
                add(side, run_bare(case, mode, args, data) if side == "bare" else run_trainer(case, mode, args))
    ratio_wall = [t["img_per_s_wall"] / b["img_per_s_wall"] for b, t in zip(runs["bare"], runs["trainer"])]
    ratio_cpu = [t["img_per_s_cpu"] / b["img_per_s_cpu"] for b, t in zip(runs["bare"], runs["trainer"])]
    logged = [statistics.median(r["logged_img_per_s"][1:]) for r in runs["trainer"]
              if len(r.get("logged_img_per_s", [])) > 1]
    return {
        "case": case, "mode": mode, "backbone": CASES[case]["backbone"],
        "images_per_step": runs["bare"][0]["images"] // args.steps,
        "ratio_wall": summarize(ratio_wall, 4),
        "ratio_cpu": summarize(ratio_cpu, 4),
        "img_per_s_wall": {s: summarize([r["img_per_s_wall"] for r in runs[s]], 1) for s in runs},
        "img_per_s_cpu": {s: summarize([r["img_per_s_cpu"] for r in runs[s]], 1) for s in runs},
        "ms_per_step_wall": {s: summarize([1e3 * r["wall_s"] / args.steps for r in runs[s]], 2) for s in runs},
        "interleave": args.interleave,
        # step mode: per step pair, trainer img/s / bare img/s, pooled over repetitions
        "ratio_per_step_pair": summarize(step_ratios, 4) if step_ratios else None,
        "trainer_logged_img_per_s": summarize(logged, 1) if logged else None,
        "trainer_setup_s": summarize([r["setup_s"] for r in runs["trainer"] if "setup_s" in r] or [0.0], 2),
        "trainer_after_last_step_s": summarize([r["after_last_step_s"] for r in runs["trainer"]
                                                if "after_last_step_s" in r] or [0.0], 3),
        **contention.summary(),
    }


# -- profile -------------------------------------------------------------------------------------------------
# (label, file suffix, function name): the trainer's per-step pieces and the epoch-end work.
PIECES: list[tuple[str, str, str]] = [
    ("set_seed per micro-batch (accelerate)", "accelerate/utils/random.py", "set_seed"),
    ("handle_nonfinite (skipped steps)", "sclearn/train/loop.py", "handle_nonfinite"),
    ("LogWindow.add", "sclearn/train/metrics.py", "add"),
    ("log_window (every log_every)", "sclearn/train/stage.py", "log_window"),
    ("after_step (log + checkpoint checks)", "sclearn/train/stage.py", "after_step"),
    ("cycle (joint labelled batches)", "sclearn/data/loaders.py", "cycle"),
    ("accelerator.backward", "accelerate/accelerator.py", "backward"),
    ("AcceleratedOptimizer.step", "accelerate/optimizer.py", "step"),
    ("AcceleratedOptimizer.zero_grad", "accelerate/optimizer.py", "zero_grad"),
    ("LR scheduler step", "torch/optim/lr_scheduler.py", "step"),
    ("tqdm.update (disabled bar)", "tqdm/std.py", "update"),
    ("accelerator.no_sync / nullcontext", "accelerate/accelerator.py", "no_sync"),
    ("stage_losses (forward + loss)", "sclearn/train/loop.py", "stage_losses"),
    ("DataLoader __next__", "torch/utils/data/dataloader.py", "__next__"),
    ("end_epoch (eval + checkpoint)", "sclearn/train/stage.py", "end_epoch"),
    ("CheckpointManager.save", "sclearn/checkpoint.py", "save"),
    ("_finish (export, summary, figures)", "sclearn/train/trainer.py", "_finish"),
]


def _cumtime(stats: pstats.Stats, suffix: str, func: str) -> tuple[float, int]:
    total, calls = 0.0, 0
    for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == func and filename.replace(os.sep, "/").endswith(suffix):
            total += ct
            calls += nc
    return total, calls


def profile_case(case: str, mode: str, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """One trainer run and one bare run under cProfile: ms per measured step of each piece."""
    steps = args.warmup + args.steps
    out: dict[str, Any] = {"case": case, "mode": mode, "steps": steps}
    for side in ("trainer", "bare"):
        prof = cProfile.Profile()
        r = run_trainer(case, mode, args, prof) if side == "trainer" else run_bare(case, mode, args, data, prof)
        stats = pstats.Stats(prof)
        rows = {}
        for label, suffix, func in PIECES if side == "trainer" else PIECES[-4:-3]:
            ct, calls = _cumtime(stats, suffix, func)
            if calls:
                rows[label] = {"calls": calls, "ms_total": round(1e3 * ct, 2), "ms_per_step": round(1e3 * ct / steps, 3)}
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:15]  # type: ignore[attr-defined]
        out[side] = {
            "profiled_ms_per_step": round(1e3 * r["wall_s"] / args.steps, 2),
            "pieces": rows,
            "top_tottime": [{"function": f"{Path(k[0]).name}:{k[2]}", "ms_per_step": round(1e3 * v[2] / steps, 3)}
                            for k, v in top],
        }
    return out


def epoch_end_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The epoch-end checkpoint (model + optimizer + scheduler + RNG via accelerate.save_state), timed alone."""
    times = []
    with scratch_trainer(args.cases[0], "supervised", args, 1) as (trainer, _):
        for _ in range(3 if args.smoke else 5):
            t = time.perf_counter()
            trainer.checkpoints.save(trainer.state.to_dict())
            times.append(time.perf_counter() - t)
        steps_per_epoch = trainer._steps_per_epoch("supervised")
    return {"case": args.cases[0], "checkpoint_save_ms": summarize([1e3 * t for t in times], 1),
            "steps_per_epoch_supervised": steps_per_epoch}


# -- report --------------------------------------------------------------------------------------------------
def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = []
    for r in report["results"]:
        rw, rc = r["ratio_wall"], r["ratio_cpu"]
        rows.append([
            f"{r['case']} / {r['mode']} ({r['images_per_step']} img/step)",
            f"**{rw['median']:.3f}**", mean_pm_std(rw, 3), f"{rc['median']:.3f}",
            f"{r['img_per_s_wall']['bare']['median']:.0f}", f"{r['img_per_s_wall']['trainer']['median']:.0f}",
            f"{r['ms_per_step_wall']['bare']['median']:.1f} / {r['ms_per_step_wall']['trainer']['median']:.1f}",
            f"{r['foreign_cpu_fraction']['median']:.0%}" if r["foreign_cpu_fraction"] else "?",
            f"{r['loadavg_1min']['median']:.2f}",
            f"{r['ratio_per_step_pair']['median']:.3f} ({r['ratio_per_step_pair']['n']})"
            if r["ratio_per_step_pair"] else "-",
        ])
    table = markdown_table(["case / mode", "trainer/bare (wall, median)", "mean ± std", "trainer/bare (CPU time)",
                            "bare img/s", "trainer img/s", "ms/step bare / trainer", "foreign CPU",
                            "load (1 min)", "per step pair (median, n)"], rows)
    title = f"Trainer efficiency: Trainer img/s / bare PyTorch loop img/s, interleaved by {cfg['interleave']}"
    lines = [
        (f"- {cfg['reps']} repetitions, each one bare run and one trainer run (ABBA order); a run is {cfg['warmup']} "
         f"warm-up + {cfg['steps']} measured optimizer steps, timed by a step post-hook on the torch optimizer "
         "on both sides (set-up, final evaluation and export excluded; no epoch end inside the window)."
         if cfg["interleave"] == "run" else
         f"- {cfg['reps']} repetitions; each is one Trainer.fit of {cfg['warmup']} warm-up + {cfg['steps']} measured "
         "steps in which the trainer optimizer's step post-hook runs and times one bare step, so trainer and bare "
         "steps alternate one by one (the trainer's step = hook return to next hook: loading, seeding, forward, "
         "backward, step, logging). Ratios: per repetition, sum over measured steps; \"per step pair\": the "
         "median over all step pairs. No epoch end inside the window."),
        ("- \"CPU time\" is the process CPU clock (1 thread, no workers; still inflated by a busy sibling "
         "hyper-thread). \"foreign CPU\" is the share of the machine other processes used during a repetition."),
        "",
        table,
    ]
    if report.get("profile"):
        lines += ["", "Profile (cProfile, one run each; ms per step, inflated by the profiler):", ""]
        for p in report["profile"]:
            prow = [[k, v["calls"], v["ms_per_step"]] for k, v in p["trainer"]["pieces"].items()]
            lines += [(f"*{p['case']} / {p['mode']}*: profiled step {p['trainer']['profiled_ms_per_step']} ms "
                      f"(trainer) vs {p['bare']['profiled_ms_per_step']} ms (bare)"), "",
                      markdown_table(["trainer piece", "calls", "ms/step"], prow), ""]
        ec = report.get("epoch_end")
        if ec:
            lines += [(f"Epoch-end checkpoint ({ec['case']}): {mean_pm_std(ec['checkpoint_save_ms'], 1)} ms per save, "
                      f"once per {ec['steps_per_epoch_supervised']} supervised steps.")]
    return harness.results_block(report, title, lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.use_threads(args.threads)
    report = harness.report_header("trainer_efficiency", args)
    data = Data(args)
    report["results"] = [measure(case, mode, args, data) for case in args.cases for mode in args.modes]
    if args.profile:
        report["profile"] = [profile_case(c, m, args, data) for c in args.cases for m in args.modes]
        report["epoch_end"] = epoch_end_cost(args)
    harness.publish(report, args, "-".join(["trainer_efficiency", args.interleave, *args.cases]), markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
