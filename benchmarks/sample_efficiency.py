"""Sample efficiency: the paper's Table-2 protocol (4k labels + SC on everything) on Fashion-MNIST.

Arms (``--labels-per-class`` 400 -> 4,000 labels, Fashion-MNIST's 60,000 train images):

================  ==========================================================================================
``sup_labeled``   supervised only, on the labelled subset (the "same model without initialization" row)
``two_stage``     SC pre-training on all train images (``--pretrain-steps``), then supervised fine-tuning on
                  the labelled subset (``--steps``), initialised from the pre-trained backbone
``joint``         ``CE + sc_weight * SC`` in one run (``--steps``): every step one labelled batch and
                  ``unlabeled_ratio`` times as many unlabelled images (SC on all of them)
``sup_all``       supervised on all 60,000 labels (the ceiling)
================  ==========================================================================================

Choices:

- Net: ``sc_mnist``, the paper's own MNIST net (Table 4), SC at its ``stages.1`` map (64 x 7 x 7): it is the
  paper's network for 28 x 28 grayscale digits, and Fashion-MNIST has the same format (CIFAR's net would need
  resizing to 32 px and 3 channels). Paper head by default (``--model-kwargs`` changes it for every arm).
- Augmentation: the same for every arm and both stages: translations up to ``--translate`` px, no flips
  unless ``--hflip`` (as the SC ablation in this repo, whose settings are meant to be plugged in here).
- Budgets (fixed, no model selection, no validation split; test accuracy read once, after the last step):
  every arm gets the same ``--steps`` supervised optimizer steps on labelled batches of ``--batch-size``.
  ``two_stage`` gets *the same fine-tune budget* and its SC pre-training (``--pretrain-steps``, default
  ``--steps``) on top; ``joint``'s extra cost is its unlabelled images per step. So every SC arm sees exactly
  the labelled batches of ``sup_labeled`` plus unlabelled compute; the wall time per arm says what that costs.
- Two-stage runs as two Trainer runs (``mode="pretrain"`` then ``mode="finetune"`` with ``init_from`` the
  pre-training run), so each stage gets an exact step budget.
- Learning rates: the library's defaults per mode (supervised / joint / pretrain 0.1, fine-tune 0.01, the
  paper's), cosine schedule, SGD momentum 0.9, weight decay 5e-4 (``TrainConfig()``). Override with JSON:
  ``--common-args`` (every run), ``--sc-args`` (the SC runs: pre-training and joint),
  ``--arm-args '{"two_stage": {"lr": 0.05}, "pretrain": {...}}'`` (one arm; ``two_stage`` is its fine-tune
  run, ``pretrain`` its SC run).
- Seeds: seed ``s`` sets the label subset (``split_seed``), the weights, the order and the augmentation.
- Gap closed = (SC acc - sup_labeled acc) / (sup_all acc - sup_labeled acc), on the mean over seeds, and
  per seed (paired: the same seed has the same labelled subset).

Each run writes ``<results-dir>/<arm>_seed<s>_<hash>.json`` (the hash covers every setting of the run);
``--resume`` skips runs whose file exists and continues killed runs from their last checkpoint
(``TrainConfig(resume=True)`` in a fixed run dir under ``--runs-dir``).

Usage::

    python benchmarks/sample_efficiency.py --steps 3000 --seeds 0 1 2 --resume --write-results
    python benchmarks/sample_efficiency.py --sc-args '{"distance": "cosine", "temperature": 0.2, "pool": "mean"}'
    python benchmarks/sample_efficiency.py --steps 100 --seeds 0          # a timing run
    python benchmarks/sample_efficiency.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import load_average, markdown_table, mean_pm_std, now_utc, summarize

ARMS = ("sup_labeled", "two_stage", "joint", "sup_all")
SC_ARMS = ("two_stage", "joint")
MIN_CEILING_GAP = 0.005  # gap closed is reported only if sup_all beats sup_labeled by at least this much


def stage_seconds(summary: dict[str, Any]) -> float:
    """Training time of the run's stages (the trainer's own per-stage wall time: steps + epoch ends + eval)."""
    return sum(float(s.get("wall_time_s", 0.0)) for s in summary.get("stages", {}).values())


# -- the protocol --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Table-2 protocol on Fashion-MNIST: supervised on few labels vs two-stage SC vs joint SC vs "
                       "supervised on all labels; prints one JSON object.",
                       smoke="tiny run for CI: 3 steps, batch 16, 10 labels/class, seed 0 (use a small --data)")
    harness.add_run_flags(p, "sample_efficiency", arms=ARMS, seeds_help="seeds (label subset, init, order)")
    p.add_argument("--labels-per-class", type=int, default=400, help="labelled images per class (Table 2: 400)")
    p.add_argument("--steps", type=int, default=3000,
                   help="optimizer steps of every supervised / fine-tune / joint run (the same for every arm)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="SC pre-training steps of two_stage (on top of its --steps fine-tune); default --steps")
    p.add_argument("--translate", type=int, default=2, help="augmentation: max translation in pixels")
    p.add_argument("--hflip", action="store_true", help="augmentation: also random horizontal flips")
    p.add_argument("--common-args", type=harness.json_object, default={},
                   help="JSON TrainConfig fields for every run, e.g. '{\"schedule\": \"plateau\"}'")
    p.add_argument("--arm-args", type=harness.json_object, default={},
                   help="JSON {arm: {TrainConfig fields}}, applied last; arms: sup_labeled, two_stage (its "
                   "fine-tune run), pretrain (two_stage's SC run), joint, sup_all")
    p.add_argument("--project-steps", type=int, default=None,
                   help="steps of the full protocol for the runtime projection (default --steps, or 3000 when "
                   "--steps < 1000)")
    p.add_argument("--project-pretrain-steps", type=int, default=None,
                   help="two_stage pre-training steps of the full protocol for the projection (default "
                   "--project-steps)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.labels_per_class, args.seeds = 3, 16, 10, [0]
        args.pretrain_steps = args.pretrain_steps or 3
    if args.pretrain_steps is None:
        args.pretrain_steps = args.steps
    if args.project_steps is None:
        args.project_steps = args.steps if args.steps >= 1000 else 3000
    if args.project_pretrain_steps is None:
        args.project_pretrain_steps = args.project_steps
    return args


def base_fields(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "data": args.data, "backbone": "sc_mnist", "layers": ("stages.1",),
        "model_kwargs": dict(args.model_kwargs), "channels": 1, "image_size": None,
        "translate": args.translate, "hflip": args.hflip, "batch_size": args.batch_size,
        "epochs": harness.BIG, "pretrain_epochs": harness.BIG, "max_steps": args.steps, "eval_every": harness.BIG,
        "eval_test": True,
        "seed": seed, "split_seed": seed, "num_workers": args.num_workers, "checkpoint_every": 500,
        "log_every": 50, "report_to": "none", "progress": False,
    }


def arm_runs(arm: str, args: argparse.Namespace, seed: int) -> harness.Runs:
    """The (name, TrainConfig fields) of the Trainer runs of one arm and seed, in order."""
    base = {**base_fields(args, seed), **args.common_args}
    lab = {"labels_per_class": args.labels_per_class}
    if arm == "sup_labeled":
        return [("run", {**base, **lab, "mode": "supervised", **args.arm_args.get(arm, {})})]
    if arm == "sup_all":
        return [("run", {**base, "labels_per_class": None, "mode": "supervised", **args.arm_args.get(arm, {})})]
    if arm == "joint":
        return [("run", {**base, **lab, "mode": "joint", **args.sc_args, **args.arm_args.get(arm, {})})]
    pre = {**base, **lab, "mode": "pretrain", "max_steps": args.pretrain_steps, **args.sc_args,
           **args.arm_args.get("pretrain", {})}
    fine = {**base, **lab, "mode": "finetune", "init_from": "<pretrain run>", **args.arm_args.get(arm, {})}
    return [("pretrain", pre), ("finetune", fine)]


def train_arm(arm: str, seed: int, runs: harness.Runs, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The result record of one arm and seed: its Trainer runs in order, a fine-tune from the pre-training."""
    start = time.perf_counter()
    out: dict[str, Any] = {"arm": arm, "seed": seed, "date": now_utc(), "load_start": load_average()[0],
                           "stages": {}}
    previous: Path | None = None
    for name, fields in runs:
        if fields.get("init_from") == "<pretrain run>":
            fields = {**fields, "init_from": str(previous)}
        summary = harness.train_once(fields, run_dir / name, resume=args.resume)
        stage = fields["mode"]
        loop = harness.loop_timing(run_dir / name, fields).get(stage, {"loop_s": 0.0, "s_per_step": None})
        out["stages"][name] = {
            "mode": stage, "steps": summary.get("global_steps") or 0, "train_s": round(stage_seconds(summary), 2),
            "loop_s": loop["loop_s"], "s_per_step": loop["s_per_step"],
            "images_per_step": harness.images_per_step(fields, stage),
            "total_s": summary.get("total_s"), "setup_s": summary.get("setup_s"),
            "test_acc": summary.get("final_test_acc"), "reused": summary.get("reused", False),
            "continued": bool(summary.get("continued")),
            "results": summary.get("stages"),
            "config": {k: v for k, v in fields.items() if k not in ("data",)},
        }
        previous = run_dir / name
    final = out["stages"][runs[-1][0]]
    out["test_acc"] = final["test_acc"]
    out["test_err_pct"] = round(100 * (1 - final["test_acc"]), 3) if final["test_acc"] is not None else None
    out["wall_s"] = round(time.perf_counter() - start, 2)
    out["load_end"] = load_average()[0]
    if "pretrain" in out["stages"]:
        out["pretrain_knn_top1"] = (out["stages"]["pretrain"]["results"] or {}).get("pretrain", {}).get("knn_top1")
    out["data"] = args.data
    return out


def summarize_or_none(values: list[float], digits: int) -> dict[str, float] | None:
    return summarize(values, digits) if values else None


def aggregate(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    for arm, per_seed in by_arm.items():
        accs = [r["test_acc"] for r in per_seed.values() if r["test_acc"] is not None]
        stage_names = list(next(iter(per_seed.values()))["stages"])
        # runs continued from a checkpoint timed only part of their work: left out of the timings
        timed = [r for r in per_seed.values() if not any(st.get("continued") for st in r["stages"].values())] \
            or list(per_seed.values())
        arms[arm] = {
            "test_acc": summarize(accs, 4) if accs else None,
            "test_err_pct": summarize([100 * (1 - a) for a in accs], 2) if accs else None,
            "wall_s": summarize([r["wall_s"] for r in per_seed.values()], 1),
            "s_per_step": {n: summarize_or_none([r["stages"][n]["s_per_step"] for r in timed
                                         if r["stages"][n]["s_per_step"]], 4) for n in stage_names},
            # set-up + final evaluation (kNN probe after pre-training) + export: per run, not per step
            "overhead_s": {n: summarize_or_none([(r["stages"][n]["total_s"] or 0) - r["stages"][n]["loop_s"]
                                         for r in timed], 1) for n in stage_names},
            "seeds": sorted(per_seed),
        }
        knn = [r.get("pretrain_knn_top1") for r in per_seed.values() if r.get("pretrain_knn_top1") is not None]
        if knn:
            arms[arm]["pretrain_knn_top1"] = summarize(knn, 4)
    gap: dict[str, Any] = {}
    note: str | None = None
    lo, hi = by_arm.get("sup_labeled", {}), by_arm.get("sup_all", {})
    if lo and hi and arms["sup_labeled"]["test_acc"] and arms["sup_all"]["test_acc"]:
        m_lo, m_hi = arms["sup_labeled"]["test_acc"]["mean"], arms["sup_all"]["test_acc"]["mean"]
        if m_hi - m_lo < MIN_CEILING_GAP:  # e.g. short runs: the ratio would be noise over noise
            note = (f"sup_all - sup_labeled = {100 * (m_hi - m_lo):.2f} points < "
                                f"{100 * MIN_CEILING_GAP:.1f}: no gap to close")
        for arm in SC_ARMS if m_hi - m_lo >= MIN_CEILING_GAP else ():
            if arm not in by_arm or not arms[arm]["test_acc"]:
                continue
            paired = [(by_arm[arm][s]["test_acc"] - lo[s]["test_acc"]) / (hi[s]["test_acc"] - lo[s]["test_acc"])
                      for s in by_arm[arm] if s in lo and s in hi and hi[s]["test_acc"] != lo[s]["test_acc"]]
            gap[arm] = {
                "of_means": round((arms[arm]["test_acc"]["mean"] - m_lo) / (m_hi - m_lo), 3) if m_hi != m_lo else None,
                "per_seed": summarize(paired, 3) if paired else None,
            }
    return {"arms": arms, "gap_closed": gap, "gap_closed_note": note, "projection": projection(arms, args)}


def projection(arms: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Projected wall time of the full protocol (--project-steps, every seed given) from the measured s/step."""
    steps, pre = args.project_steps, args.project_pretrain_steps
    per_arm = {}
    for arm, a in arms.items():
        total = 0.0
        for name, sps in a["s_per_step"].items():
            if sps is None:
                continue
            n = pre if name == "pretrain" else steps
            total += sps["median"] * n + (a["overhead_s"][name] or {"median": 0.0})["median"]
        per_arm[arm] = round(total / 60, 1)
    return {"steps": steps, "pretrain_steps": pre, "seeds": args.project_seeds,
            "minutes_per_seed": per_arm, "total_minutes": round(sum(per_arm.values()) * args.project_seeds, 1),
            "note": "measured s/step (the trainer's log windows: loading + step + epoch-end checkpoints) x steps "
                    "+ measured per-run overhead (set-up, final evaluation, export); one process, runs in sequence"}


def markdown_block(report: dict[str, Any]) -> str:
    cfg, agg = report["config"], report["aggregate"]
    rows = []
    for arm in ARMS:
        a = agg["arms"].get(arm)
        if not a:
            continue
        gap = agg["gap_closed"].get(arm) if arm in SC_ARMS else None
        sps = ", ".join(f"{n} {1e3 * s['median']:.0f}" for n, s in a["s_per_step"].items() if s)
        rows.append([
            arm, f"{100 * a['test_acc']['mean']:.2f} ± {100 * a['test_acc']['std']:.2f}" if a["test_acc"] else "-",
            a["test_acc"]["n"] if a["test_acc"] else 0,
            f"{gap['of_means']:.2f}" + (f" ({mean_pm_std(gap['per_seed'], 2)} per seed)" if gap["per_seed"] else "")
            if gap and gap["of_means"] is not None else "-",
            f"{a['wall_s']['mean'] / 60:.1f}", sps,
            f"{100 * a['pretrain_knn_top1']['mean']:.1f}" if "pretrain_knn_top1" in a else "-",
        ])
    proj = agg["projection"]
    return harness.results_block(report, "Sample efficiency on Fashion-MNIST (Table-2 protocol)", [
        (f"- sc_mnist (paper MNIST net), {cfg['labels_per_class']} labels/class, batch {cfg['batch_size']}, "
         f"{cfg['steps']} supervised/fine-tune/joint steps per arm, two-stage pre-training {cfg['pretrain_steps']} "
         f"SC steps on top; seeds {cfg['seeds']}; test accuracy after the last step (no selection)."),
        "",
        markdown_table(["arm", "test acc % (mean ± std)", "seeds", "gap closed", "wall min / run",
                        "ms/step", "kNN after pretrain %"], rows),
        *(["", f"Gap closed: {agg['gap_closed_note']}."] if agg["gap_closed_note"] else []),
        *harness.note_lines(cfg.get("notes")),
        "",
        harness.runs_line(report["runs"]),
        "",
        (f"Projected full protocol ({proj['steps']} steps, pre-training {proj['pretrain_steps']}, "
         f"{proj['seeds']} seed(s)): {proj['total_minutes']} min ({proj['minutes_per_seed']} min per seed)."),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, results = harness.run_arms("sample_efficiency", args, arm_runs, train_arm)
    report["runs"] = [{**{k: v for k, v in r.items() if k != "stages"}, "stages": {
        n: {k: v for k, v in s.items() if k not in ("config", "results")} for n, s in r["stages"].items()}}
        for r in results]
    report["aggregate"] = aggregate(results, args)
    harness.publish(report, args, "sample_efficiency", markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
