"""The Trainer runs of a paper-table benchmark (``mnist_table3``, ``table2_convergence``): one arm and seed as a
chain of Trainer runs, its result record, the library version it ran on, and the wall-time projection.

An arm is ``harness.Runs``: ``(name, TrainConfig fields)`` in order. A run whose ``init_from`` is
:data:`PREVIOUS_RUN` starts from the backbone the run before it exported, so SC pre-training and the fine-tune are
two Trainer runs: the pre-training run has ``eval_test=False`` (its probes read a val split, or nothing) and only
the last run of the chain reads the test set, once, after its last epoch (``eval_every`` = ``harness.BIG``).

:func:`train_chain` is the ``train`` callable of :func:`_harness.run_arms`. Its record (one JSON file per arm and
seed in the result cache) holds everything the report needs, because run directories do not survive a move to
another machine: the test and val accuracy, each stage's steps, epochs, timing and stop reason, the SC
pre-training's probe curve (one point per SC epoch) and the library version (:func:`code_version`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
from common import load_average, now_utc

from sclearn.config import STAGES_OF_MODE

PREVIOUS_RUN = "<previous run>"  # init_from placeholder: the previous run of the chain
PROBE_KEYS = ("knn_val_top1", "linear_val_top1", "knn_top1", "linear_top1")
TEST_KEYS = ("test_acc", "knn_top1", "linear_top1")  # the metrics.jsonl keys that read the test split


def code_version() -> dict[str, Any]:
    """``{"library": 12 hex digits over every sclearn/*.py file's path and bytes, "commit": git HEAD or None}``.

    The library digest changes exactly when the code that trains changes, not when results are committed (which
    moves HEAD), so records with the same ``library`` ran the same computation.
    """
    digest = hashlib.sha1()
    for path in sorted((harness.ROOT / "sclearn").rglob("*.py")):
        digest.update(str(path.relative_to(harness.ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=harness.ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"library": digest.hexdigest()[:12], "commit": commit}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def probe_curve(run_dir: Path) -> list[dict[str, Any]]:
    """One point per SC pre-training epoch of ``run_dir``: ``epoch`` (1-based), ``epoch_loss``, the lr of the
    epoch's last log window and whichever probes ran (``knn_val_top1``, ``linear_val_top1``, ...)."""
    points: dict[int, dict[str, Any]] = {}
    lr: float | None = None
    for r in _metrics(run_dir):
        if r.get("stage") != "pretrain":
            continue
        if "lr" in r:
            lr = r["lr"]
        if r.get("event") == "epoch_end":
            points[r["epoch"] + 1] = {"epoch": r["epoch"] + 1, "epoch_loss": r["epoch_loss"], "lr": lr,
                                      **{k: r[k] for k in PROBE_KEYS if k in r}}
    return [points[e] for e in sorted(points)]


def count_test_reads(run_dir: Path) -> int:
    """How many metrics.jsonl records of ``run_dir`` hold a number computed on the test split."""
    return sum(any(k in r for k in TEST_KEYS) for r in _metrics(run_dir))


def evaluations(epochs: int, eval_every: int) -> int:
    """Epoch-end evaluations of a stage of ``epochs`` epochs: every ``eval_every``-th and the last (the Trainer's
    rule; a convergence stop makes its epoch the last)."""
    return epochs // eval_every + (epochs % eval_every != 0)


def stage_records(summary: dict[str, Any], run_dir: Path, fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage of one finished run: steps, epochs, wall / loop seconds, s per step, img/s, the seconds of one
    epoch-end evaluation (None when the run continued from a checkpoint: its wall time covers part of the work),
    the stop reason and the stage's accuracies."""
    loops = harness.loop_timing(run_dir, fields)
    out = {}
    for stage, res in (summary.get("stages") or {}).items():
        loop = loops.get(stage, {"loop_s": 0.0, "s_per_step": None})
        per_step, images = loop["s_per_step"], harness.images_per_step(fields, stage)
        loop_s, source = loop["loop_s"], "windows"
        if res.get("train_loop_s") and res.get("steps"):  # the Trainer's own clock over its real batches
            loop_s, source = round(res["train_loop_s"], 2), "trainer"
            per_step = round(loop_s / res["steps"], 4)
        evals = evaluations(res.get("epochs") or 1, fields.get("eval_every", 1))
        wall = res.get("wall_time_s", 0.0)
        timing = {"steps": res.get("steps"), "epochs": res.get("epochs"), "wall_s": wall, "loop_s": loop_s,
                  "loop_source": source, "s_per_step": per_step, "images_per_step": images,
                  "labeled_drop_last": bool(fields.get("labeled_drop_last"))}
        out[stage] = {
            **timing,
            "img_per_s": round(loop_img_per_s(stage, timing, summary.get("num_labeled")), 1) if per_step else None,
            "evaluations": evals,
            # the stage's time outside the log windows: its epoch-end evaluations (and checkpoints), per evaluation
            "eval_s": round((wall - loop_s) / evals, 2)
            if per_step and not summary.get("continued") else None,
            **{k: res[k] for k in ("stop_reason", "stopped_early", "best_epoch", "best_epoch_loss") if k in res},
            **{k: v for k, v in res.items() if k.endswith(("acc", "top1"))},
        }
    return out


def train_chain(arm: str, seed: int, runs: harness.Runs, run_dir: Path, args: argparse.Namespace
                ) -> dict[str, Any]:
    """The result record of one arm and seed: its runs in ``run_dir/<name>``, in order (``--resume``: finished
    runs are read back, a killed one continues from its last checkpoint)."""
    start = time.perf_counter()
    record: dict[str, Any] = {"arm": arm, "seed": seed, "date": now_utc(), "load_start": load_average()[0],
                              "code": code_version(), "stages": {}, "probe_curve": [], "test_reads": {}}
    previous: Path | None = None
    total = cpu_s = wall_s = 0.0
    flags = {"continued": False, "reused": True}
    for name, fields in runs:
        if fields.get("init_from") == PREVIOUS_RUN:
            if previous is None:
                raise ValueError(f"arm {arm!r}: run {name!r} starts from the previous run, and it is the first")
            fields = {**fields, "init_from": str(previous)}
        cpu, wall = time.process_time(), time.perf_counter()
        summary = harness.train_once(fields, run_dir / name, resume=args.resume)
        if not summary.get("reused"):
            cpu_s += time.process_time() - cpu
            wall_s += time.perf_counter() - wall
        record["stages"].update(stage_records(summary, run_dir / name, fields))
        record["test_reads"][name] = count_test_reads(run_dir / name)
        if "pretrain" in STAGES_OF_MODE[fields["mode"]]:
            record["probe_curve"] = probe_curve(run_dir / name)
            record["num_unlabeled"] = summary.get("num_unlabeled")
        total += summary.get("total_s") or 0.0
        flags = {"continued": flags["continued"] or bool(summary.get("continued")),
                 "reused": flags["reused"] and bool(summary.get("reused"))}
        previous = run_dir / name
    acc = summary.get("final_test_acc")  # the last run's: the only one that reads the test split
    final_stage = summary.get("stages", {}).get(STAGES_OF_MODE[fields["mode"]][-1], {})
    record.update({
        "load_end": load_average()[0], "test_acc": acc,
        "test_err_pct": round(100 * (1 - acc), 3) if acc is not None else None,
        "val_acc": final_stage.get("val_acc"), "num_labeled": summary.get("num_labeled"),
        "num_test": summary.get("num_test"), "total_s": round(total, 2),
        "wall_s_this_call": round(time.perf_counter() - start, 2), "reused": flags["reused"],
        # the share of one core this process got while training: < 1 on a busy machine (one torch thread)
        "cpu_share": round(cpu_s / wall_s, 3) if wall_s > 0 and not flags["continued"] else None,
        "continued_from_checkpoint": flags["continued"], "run_dir": _in_repository(run_dir),
        "configs": {name: {k: harness.portable(v) if k == "data" else v for k, v in fields.items()}
                    for name, fields in runs},
    })
    return record


def _in_repository(path: Path) -> str:
    """``path`` relative to the repository when inside it, else ``<runs-dir>/<run>`` (a ``--runs-dir`` outside
    the work tree): records name no machine's absolute paths."""
    try:
        return str(path.resolve().relative_to(harness.ROOT))
    except ValueError:
        return f"<runs-dir>/{path.name}"


def run_or_read(name: str, args: argparse.Namespace, runs_of: Any
                ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(report header, records, missing keys): with ``args.report_only`` the records already in the result
    cache (nothing trained), else every arm and seed through :func:`train_chain` (none missing)."""
    if args.report_only:
        return harness.read_arms(name, args, runs_of)
    report, records = harness.run_arms(name, args, runs_of, train_chain)
    return report, records, []


class ProtocolHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help``: the flags with their defaults, and the epilog (the script's protocol, its docstring) as written."""


def add_table_flags(p: argparse.ArgumentParser, protocol: str, figures: str) -> None:
    """The flags every table script shares, and ``--help`` that prints the protocol (``protocol``)."""
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between mid-epoch checkpoints")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the arms and seeds whose records are in the result dir, and list "
                   "the missing ones")
    p.formatter_class, p.epilog = ProtocolHelpFormatter, protocol  # --help states the protocol
    p.add_argument("--figure-dir", type=Path, default=None,
                   help=f"where the {figures} go (default benchmarks/figures; temporary with --smoke)")


# -- the projection ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StagePlan:
    """One stage of the full protocol: ``epochs`` of ``steps_per_epoch`` steps, ``evaluations`` epoch-end
    evaluations."""

    epochs: int
    steps_per_epoch: int
    evaluations: int


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


CE_STAGES = ("supervised", "finetune")  # labelled batches only; SC and joint batches are always full


def images_held(stage: str, steps: int, batch: int, num_labeled: int | None, drop_last: bool = False) -> int:
    """The images ``steps`` steps of ``batch`` really held: a CE epoch of ``num_labeled`` rows ends on a short
    batch (4,000 rows at batch 128: 31 x 128 + 32) unless ``drop_last``; SC and joint epochs drop it. Counted from
    the steps alone, so a stage cut short mid-epoch (``max_steps``) is counted right too."""
    if stage not in CE_STAGES or drop_last or not num_labeled:
        return steps * batch
    per_epoch = -(-num_labeled // batch)  # steps per epoch, the short one included
    return (steps // per_epoch) * num_labeled + (steps % per_epoch) * batch


def short_batch_factor(stage: str, timing: Mapping[str, Any], num_labeled: int | None) -> float:
    """steps x batch over the images a stage's steps really held (:func:`images_held`): >= 1, 1.0 when every
    batch was full."""
    steps, batch = timing.get("steps"), timing["images_per_step"]
    if not steps:  # a record without its step count: nothing to correct by
        return 1.0
    return steps * batch / images_held(stage, steps, batch, num_labeled, bool(timing.get("labeled_drop_last")))


def window_overcount(stage: str, timing: Mapping[str, Any], num_labeled: int | None) -> float:
    """How much a record's ``loop_s`` from the log windows (``loop_source`` "windows", or none: the records
    before the Trainer's own ``train_loop_s`` was read) overstates the loop: >= 1, 1.0 when exact.

    The windows' seconds were taken as steps x batch / img/s, so they overstate the loop by the
    :func:`short_batch_factor`. A record whose loop seconds came from the Trainer needs no correction.
    """
    return 1.0 if timing.get("loop_source") == "trainer" else short_batch_factor(stage, timing, num_labeled)


def loop_img_per_s(stage: str, timing: Mapping[str, Any], num_labeled: int | None) -> float:
    """Images per second of a stage's training loop: the images its steps held over the loop's real seconds.

    steps x batch / loop_s is exact for window-timed seconds (both overstate by the same factor). The Trainer's
    own seconds are real, so its nominal images are first scaled down to the images the steps held.
    """
    rate = timing["images_per_step"] / timing["s_per_step"]
    return rate / short_batch_factor(stage, timing, num_labeled) if timing.get("loop_source") == "trainer" else rate


def stage_costs(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median seconds per step, img/s and seconds per evaluation of each stage over ``records`` (one arm's runs
    measured from scratch; reused or resumed runs have no timing of their own). Loop seconds counted from the
    log windows are first corrected for short last batches (:func:`window_overcount`)."""
    stages = dict.fromkeys(s for r in records for s in r["stages"])
    out = {}
    for stage in stages:
        per_step, img_per_s, eval_s = [], [], []
        for r in records:
            s = r["stages"].get(stage)
            if not s or not s.get("s_per_step"):
                continue
            over = window_overcount(stage, s, r.get("num_labeled"))
            per_step.append(s["s_per_step"] / over)  # real seconds per step
            img_per_s.append(loop_img_per_s(stage, s, r.get("num_labeled")))
            if s.get("eval_s") is not None:  # (wall - loop) / evaluations, with the loop's overcount moved back
                eval_s.append(s["eval_s"] + (s["loop_s"] * (1 - 1 / over) / s["evaluations"] if over > 1 else 0.0))
        medians = {"s_per_step": (_median(per_step), 4), "img_per_s": (_median(img_per_s), 1),
                   "eval_s": (_median(eval_s), 1)}
        out[stage] = {k: round(v, digits) if v is not None else None for k, (v, digits) in medians.items()}
    return out


def cpu_share(records: Sequence[dict[str, Any]]) -> float | None:
    """Median share of a core the runs of ``records`` got (CPU seconds / wall seconds, one torch thread)."""
    shares = [r["cpu_share"] for r in records if r.get("cpu_share")]
    return round(statistics.median(shares), 3) if shares else None


def free_core_minutes(minutes: float | None, share: float | None) -> float | None:
    """``minutes`` measured at ``share`` of a core, on a core of its own: the CPU time the work took."""
    return round(minutes * min(1.0, share), 1) if minutes is not None and share else None


def project_minutes(costs: Mapping[str, Mapping[str, float | None]], plan: Mapping[str, StagePlan]) -> float | None:
    """Minutes of one arm and seed under ``plan`` at the measured ``costs`` (None if a stage was not measured)."""
    seconds = 0.0
    for stage, p in plan.items():
        c = costs.get(stage, {})
        if not c.get("s_per_step"):
            return None
        seconds += p.epochs * p.steps_per_epoch * c["s_per_step"] + p.evaluations * (c.get("eval_s") or 0.0)
    return round(seconds / 60, 1)


def arm_projection(runs: Sequence[dict[str, Any]], plans: Mapping[str, Mapping[str, StagePlan]]) -> dict[str, Any]:
    """One arm's measured costs (:func:`stage_costs`, :func:`cpu_share` over its ``runs``) and its minutes per seed
    under each named plan (``{"all": plan}``, or ``{"min": ..., "cap": ...}`` for a stage of open length), as
    measured and on a core of its own."""
    costs, share = stage_costs(runs), cpu_share(runs)
    minutes = {name: project_minutes(costs, plan) for name, plan in plans.items()}
    return {"stages": costs, "cpu_share": share, "minutes_per_seed": minutes,
            "minutes_per_seed_free_core": {name: free_core_minutes(m, share) for name, m in minutes.items()}}


def steps_per_epoch(images: int, batch: int, stage: str) -> int:
    """Optimizer steps of one epoch: SC batches drop the last short batch (SC needs N >= 2), CE batches keep it."""
    return images // batch if stage == "pretrain" else -(-images // batch)


def library_versions(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """``{library digest: ["arm seed s", ...]}`` over ``records``: one key when every run ran the same code."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault((r.get("code") or {}).get("library", "unknown"), []).append(f"{r['arm']} seed {r['seed']}")
    return out
