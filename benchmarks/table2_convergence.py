"""The paper's Table-2 protocol on Fashion-MNIST with SC trained to convergence: SC on all 60,000 train images,
then the paper's fine-tune on 4,000 labels, against the same net trained on those labels alone.

Paper (Hoffer et al. 2016, Sec. 5.2, Table 2, on CIFAR-10): "we trained our model using SC criterion on the entire
dataset, and then used only 400 labeled samples per class (for a total of 4000) in a supervised regime over the
initialized network"; SC "with an initial learning rate of 0.1 that was decreased by a factor of 10 whenever the
measured loss stopped decreasing", then "the same regime, only starting with a lower initial learning rate of
0.01". Fashion-MNIST has no paper number.

Protocol (fixed before any run; seeds 0 1 2 per arm):

- Data: Fashion-MNIST (``idx:/usr/share/datasets/fashion-mnist``). Seed ``s`` draws 400 labelled images per class
  (4,000) and, from the other train images, a val split of ``--val-per-class`` 100 per class (1,000; they stay in
  SC's unlabelled pool, whose labels SC never sees); it also sets the weights, the order and the augmentation.
  The labelled draw does not depend on the val split. Every arm of a seed has the same 4,000 labels and val split.
- Net and optimiser: the paper's MNIST net (``sc_mnist``, Table 4), SC at ``stages.1`` (64 x 7 x 7); translations
  up to 2 px, no flips; batch 128; SGD momentum 0.9, weight decay 5e-4; ``schedule="plateau"`` everywhere: lr / 10
  after 2 epochs whose epoch loss is not 0.01% below the best (``plateau_patience=1``).
- SC arms, two Trainer runs each:

  ``pretrain``  SC only, on all 60,000 train images, from lr 0.1, until the epoch SC loss stops improving: the
                stage ends once ``--pretrain-patience`` (5) epochs in a row have not brought it 0.1% below the best
                epoch so far (``pretrain_min_delta=1e-3``), never before ``--pretrain-min-epochs`` (20) epochs,
                and at the latest after ``--pretrain-epochs`` (the cap, 50). A patience of 5 > 2 means the loss
                must also have stopped improving after an lr drop. After every SC epoch the kNN and the linear probe
                of the SC layer (2x2-pooled map, fitted on the 4,000 labelled images) are scored on the val split
                (``probe_linear``; ``eval_test=False``: no test image is read).
  ``finetune``  from its backbone, supervised on the 4,000 labels for ``--epochs`` (100) at lr 0.01 (the paper's).

  ``sc_paper``  the ``paper`` preset (L2, T = 1, flattened patches) with the patch of the MNIST Table-3 run:
                6 x 6 cells of the 7 x 7 map.
  ``sc_tuned``  the ``tuned`` preset (cosine, T = 0.1, mean-pooled 3 x 3 patches; its lambda and ramp apply only to
                joint training, not to SC-only pre-training).
- Baselines: ``sup``, supervised from random weights on the same 4,000 labels with the same recipe (``--epochs``
  100 at lr 0.01, plateau): the fixed comparison. ``sup_lr0.1``, the same at lr 0.1 (the rate for training from
  scratch): a reference only, so that an SC win over ``sup`` cannot come from 0.01 handicapping the baseline.
- The test set is read once per arm and seed, after the last epoch of the last run. Nothing is chosen on it; the
  val split is read by the probes and after the last epoch, and nothing is chosen on it either.
- Report: test error per seed and mean ± std per arm; per-seed paired differences ``sc_paper - sup`` and ``sc_tuned
  - sup`` (the fixed comparisons) and against ``sup_lr0.1`` (reference), each with the two-sided paired t-test
  (level 0.05) and a one-sentence verdict computed from the numbers; each SC run's epochs, stop reason and probe
  curve; the table figure and one probe-curve figure per SC arm (``benchmarks/figures/table2_convergence*.png``);
  the projected wall time per arm and seed.

Results: ``benchmarks/table2_convergence_results``, one JSON record per arm and seed (``<arm>_seed<s>_<hash>``,
the hash over every setting that changes the computation), holding the probe curve and the sclearn code digest.
Runs: ``runs/table2_convergence/<key>/{pretrain,finetune|supervised}``, checkpointed every 500 steps; ``--resume``
continues a killed run from its last checkpoint (the convergence stop's state is in the checkpoint) and reads a
finished arm's record back.

The full protocol, two arms at once with one torch thread each (see the "protocol" block of RESULTS.md)::

    python benchmarks/table2_convergence.py --arms sc_paper --seeds 0 1 2 --resume &
    python benchmarks/table2_convergence.py --arms sc_tuned --seeds 0 1 2 --resume
    wait; python benchmarks/table2_convergence.py --arms sup sup_lr0.1 --seeds 0 1 2 --resume
    python benchmarks/table2_convergence.py --report-only --write-results  # the report: trains nothing

    python benchmarks/table2_convergence.py --max-steps 100 --seeds 0 --results-dir /tmp/t2 \\
        --runs-dir /tmp/t2runs --figure-dir /tmp/t2fig                    # a timing run
    python benchmarks/table2_convergence.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
import table_report
import table_runs
from common import cell, markdown_table, summarize
from table_runs import StagePlan

from sclearn.presets import sc_preset

NAME = "table2_convergence"
SC_ARMS = {"sc_paper": {**sc_preset("paper"), "patch_size": 6}, "sc_tuned": sc_preset("tuned")}
ARMS = ("sup", *SC_ARMS, "sup_lr0.1")
COMPARISONS = (("sc_paper", "sup"), ("sc_tuned", "sup"))  # fixed in advance
REFERENCE_COMPARISONS = (("sc_paper", "sup_lr0.1"), ("sc_tuned", "sup_lr0.1"))
ROLES = {"sup": "baseline: same recipe (lr 0.01)", "sc_paper": "SC (paper preset, patch 6) + fine-tune",
         "sc_tuned": "SC (tuned preset) + fine-tune", "sup_lr0.1": "reference: supervised at lr 0.1"}
SUP_LR = {"sup": None, "sup_lr0.1": 0.1}  # None: --finetune-lr, the recipe's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Table-2 protocol on Fashion-MNIST, SC until convergence: SC on 60k images then fine-tune on "
                       "4,000 labels vs supervised on the 4,000 labels; prints JSON.",
                       smoke="tiny run for CI: batch 16, 10 labels and 5 val images per class, SC for 2 epochs "
                       "(patience 1, min 1), 1 fine-tune epoch, seed 0 unless --seeds (use a small --data)")
    harness.add_run_flags(p, NAME, arms=ARMS, seeds_help="seeds (labels, val split, weights, order, augmentation); "
                          "default 0 1 2, --smoke: 0")
    p.set_defaults(seeds=None)
    p.add_argument("--labels-per-class", type=int, default=400, help="labelled images per class (Table 2: 400)")
    p.add_argument("--val-per-class", type=int, default=100,
                   help="val images per class, from the unlabelled train images: the probes' score, never test")
    p.add_argument("--epochs", type=int, default=100, help="epochs of every supervised / fine-tune run")
    p.add_argument("--finetune-lr", type=float, default=0.01,
                   help="initial lr of the fine-tune and of the sup baseline (paper: 0.01)")
    p.add_argument("--pretrain-lr", type=float, default=0.1, help="SC stage's initial lr (paper: 0.1)")
    p.add_argument("--pretrain-epochs", type=int, default=50, help="cap on SC epochs")
    p.add_argument("--pretrain-min-epochs", type=int, default=20, help="SC epochs always run")
    p.add_argument("--pretrain-patience", type=int, default=5,
                   help="SC ends after this many epochs in a row without a --pretrain-min-delta improvement")
    p.add_argument("--pretrain-min-delta", type=float, default=1e-3,
                   help="relative improvement of the epoch SC loss over its best that counts")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimizer steps per stage (timing runs); default: none")
    table_runs.add_table_flags(p, __doc__, figures="figures")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    if args.smoke:
        args.batch_size, args.labels_per_class, args.val_per_class, args.epochs = 16, 10, 5, 1
        args.pretrain_epochs, args.pretrain_min_epochs, args.pretrain_patience = 2, 1, 1
    return args


def arm_runs(arm: str, args: argparse.Namespace, seed: int) -> harness.Runs:
    """The arm's Trainer runs: ``pretrain`` then ``finetune`` (SC arms), or ``supervised`` (baselines)."""
    base = {
        "data": args.data, "protocol": None, "labels_per_class": args.labels_per_class,
        "val_per_class": args.val_per_class, "backbone": "sc_mnist", "layers": ("stages.1",),
        "model_kwargs": dict(args.model_kwargs), "channels": 1, "image_size": None, "translate": 2, "hflip": False,
        "batch_size": args.batch_size, "epochs": args.epochs, "pretrain_epochs": args.pretrain_epochs,
        "max_steps": args.max_steps, "schedule": "plateau", "eval_every": harness.BIG, "eval_test": True,
        "seed": seed, "split_seed": seed, "num_workers": args.num_workers, "checkpoint_every": args.checkpoint_every,
        "log_every": 50, "report_to": "none", "progress": False,
    }
    if arm in SUP_LR:
        return [("supervised", {**base, "mode": "supervised", "lr": SUP_LR[arm] or args.finetune_lr})]
    pretrain = {**base, "mode": "pretrain", "pretrain_lr": args.pretrain_lr, "pretrain_patience": args.pretrain_patience,
                "pretrain_min_epochs": args.pretrain_min_epochs, "pretrain_min_delta": args.pretrain_min_delta,
                "probe_linear": True, "eval_every": 1, "eval_test": False, **SC_ARMS[arm], **args.sc_args}
    finetune = {**base, "mode": "finetune", "lr": args.finetune_lr, "init_from": table_runs.PREVIOUS_RUN}
    return [("pretrain", pretrain), ("finetune", finetune)]


def plans(arm: str, args: argparse.Namespace, n_labeled: int, n_unlabeled: int) -> dict[str, dict[str, StagePlan]]:
    """The full protocol's stages of one arm and seed: ``{"min": ..., "cap": ...}`` (SC stopped at its minimum or
    at its cap; a probe after every SC epoch, the test evaluation once), one plan for the baselines."""
    fine = StagePlan(args.epochs, table_runs.steps_per_epoch(n_labeled, args.batch_size, "finetune"), 1)
    if arm in SUP_LR:
        return {"all": {"supervised": fine}}
    sc_steps = table_runs.steps_per_epoch(n_unlabeled, args.batch_size, "pretrain")
    return {bound: {"pretrain": StagePlan(epochs, sc_steps, epochs), "finetune": fine}
            for bound, epochs in (("min", args.pretrain_min_epochs), ("cap", args.pretrain_epochs))}


def projection(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Minutes per arm and seed of the full protocol at the speeds these runs measured (SC arms: with SC stopped at
    its minimum and at its cap)."""
    n_labeled = next((r["num_labeled"] for r in results if r.get("num_labeled")), 10 * args.labels_per_class)
    n_unlabeled = next((r["num_unlabeled"] for r in results if r.get("num_unlabeled")), 60000)
    per_arm = {}
    for arm in args.arms:
        runs = [r for r in results if r["arm"] == arm]
        if runs:
            per_arm[arm] = table_runs.arm_projection(runs, plans(arm, args, n_labeled, n_unlabeled))

    def total_hours(key: str, bound: str) -> float | None:  # every arm x --project-seeds, one process
        minutes = [a[key].get(bound, a[key].get("all")) for a in per_arm.values()]
        return round(sum(minutes) * args.project_seeds / 60, 1) if minutes and None not in minutes else None

    return {"per_arm": per_arm, "n_labeled": n_labeled, "n_unlabeled": n_unlabeled, "seeds": args.project_seeds,
            "total_hours": {b: total_hours("minutes_per_seed", b) for b in ("min", "cap")},
            "total_hours_free_core": {b: total_hours("minutes_per_seed_free_core", b) for b in ("min", "cap")},
            "note": "training loop (log windows) + probes / evaluations; start-up and export not included"}


def sc_stage_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Per SC run: epochs, stop reason, best epoch, the linear / kNN val probe after the first, best and last
    SC epoch, and the fine-tuned test error."""
    rows = []
    for r in records:
        curve, pre = r.get("probe_curve") or [], r["stages"].get("pretrain")
        if pre is None:
            continue
        probed = [p for p in curve if "linear_val_top1" in p]
        best = max(probed, key=lambda p: p["linear_val_top1"]) if probed else None

        def pct(p: dict[str, Any] | None, key: str) -> str:
            return f"{100 * p[key]:.2f}" if p and key in p else "-"

        rows.append([r["arm"], r["seed"], pre["epochs"], pre.get("stop_reason", "-"), pre.get("best_epoch", "-"),
                     pct(probed[0] if probed else None, "linear_val_top1"),
                     f"{pct(best, 'linear_val_top1')} (epoch {best['epoch']})" if best else "-",
                     pct(probed[-1] if probed else None, "linear_val_top1"),
                     pct(probed[-1] if probed else None, "knn_val_top1"),
                     f"{r['test_err_pct']:.2f}" if r.get("test_err_pct") is not None else "-"])
    return rows


def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    capped = f", capped at {cfg['max_steps']} steps per stage (timing run: errors not comparable)" \
        if cfg["max_steps"] else ""
    proj = report["projection"]
    def bounds(minutes: dict[str, float | None]) -> str:
        return ", ".join(f"{b} {cell(m)}" for b, m in minutes.items())

    proj_rows = [[arm, stage, c["img_per_s"], c["s_per_step"], c["eval_s"],
                  *((bounds(a["minutes_per_seed"]), a["cpu_share"], bounds(a["minutes_per_seed_free_core"]))
                    if stage == next(iter(a["stages"])) else ("", "", ""))]
                 for arm, a in proj["per_arm"].items() for stage, c in a["stages"].items()]
    return harness.results_block(report, "Fashion-MNIST Table-2 protocol, SC until convergence", [
        (f"- sc_mnist; {proj['n_labeled']} labels ({cfg['labels_per_class']}/class), val {cfg['val_per_class']}/class, "
         f"SC on {proj['n_unlabeled']} images; batch {cfg['batch_size']}, plateau schedule. SC from lr "
         f"{cfg['pretrain_lr']} until the epoch loss stops improving ({cfg['pretrain_patience']} epochs without a "
         f"{cfg['pretrain_min_delta']:g} relative improvement; min {cfg['pretrain_min_epochs']}, cap "
         f"{cfg['pretrain_epochs']} epochs), then {cfg['epochs']} fine-tune epochs at lr {cfg['finetune_lr']}; sup: "
         f"{cfg['epochs']} epochs at lr {cfg['finetune_lr']}, sup_lr0.1 at lr 0.1{capped}; seeds {cfg['seeds']}; "
         "test error after the last epoch, the test set read once per run."),
        "",
        *table_report.report_lines(report["errors"], report["comparisons"], report["runs"], roles=ROLES, paper=None,
                                   figures=[Path(f) for f in report["figures"]]),
        "",
        "SC pre-training per run (linear / kNN probe: val accuracy %, fitted on the labelled images):",
        "",
        markdown_table(["arm", "seed", "SC epochs", "stop", "best-loss epoch", "linear probe, epoch 1",
                        "linear probe, best", "linear probe, last", "kNN probe, last", "test error %"],
                       sc_stage_rows(report["runs"])),
        "",
        *([f"Missing (not run yet): {', '.join(report['missing'])}."] if report.get("missing") else []),
        "",
        f"Code: {report['code_line']} Test-set reads: {report['test_split_line']}",
        "",
        "Speed of these runs and the projected wall time of one arm and seed (one process, one torch thread; SC arms "
        "with SC stopped at its minimum and at its cap; on a free core: scaled by the share of a core the runs got, "
        "CPU s / wall s):",
        "",
        markdown_table(["arm", "stage", "img/s", "s/step", "s per evaluation / probe", "projected min / seed",
                        "share of a core", "min / seed on a free core"], proj_rows),
        "",
        f"All arms x {proj['seeds']} seeds in one process (SC at its minimum, at its cap): "
        f"{bounds(proj['total_hours'])} h at these speeds, {bounds(proj['total_hours_free_core'])} h on a free core.",
        *harness.note_lines(cfg.get("notes")),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, results, errors = table_report.collect(NAME, args, arm_runs)
    report["arms"] = {arm: {"test_err_pct": summarize(list(e.values()), 3) if e else None} for arm, e in errors.items()}
    report["comparisons"] = [
        {**table_report.compare(errors, arm, base), "role": role}
        for role, pairs in (("fixed", COMPARISONS), ("reference", REFERENCE_COMPARISONS))
        for arm, base in pairs if arm in args.arms and base in args.arms]
    report["verdicts"] = {f"{c['arm']} vs {c['baseline']}": c["verdict"] for c in report["comparisons"]}

    def draw(figure_dir: Path) -> list[Path]:
        table = table_report.table_figure(errors, figure_dir / f"{NAME}.png",
                                          title="Fashion-MNIST, Table-2 protocol (4,000 labels), SC until convergence",
                                          comparison=COMPARISONS[0], paper=None)
        probes = table_report.probe_figures(results, [a for a in args.arms if a in SC_ARMS], figure_dir, NAME,
                                            title="SC pre-training on Fashion-MNIST")
        return ([table] if table else []) + probes

    table_report.publish(report, results, args, NAME, projection=projection, markdown_block=markdown_block, draw=draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
