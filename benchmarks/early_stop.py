"""SC-only training steps stop after the SC layer: what that saves, and how close it gets to the floor.

Three kinds of SC-only training step (zero_grad, forward, SC loss, backward, SGD step) on one fixed batch,
interleaved round by round with the order rotated every round (``common.run_rounds``):

- ``early``: the Trainer's ``pretrain`` step through the public API: ``build_sc_model(TrainConfig(...),
  backbone)``, then ``model(x, compute_sc=True, return_logits=False).sc_loss``. The backbone stops once the SC
  layer has run.
- ``stem``: the floor, written by hand: only the modules up to the SC layer (resnet: ``conv1`` ... ``layer3``;
  the Table-4 nets: ``stages[: k + 1]``) on an unwrapped twin of the backbone (same weights, no hooks), then
  the same loss module on their output.
- ``full``: the forward SC-only steps ran before the early stop: ``model(x, compute_sc=True)`` runs the whole
  net (its logits unused), loss ``sc_loss`` alone.

Headlines per case, as paired ratios per round: ``early / stem`` (the early stop's own cost; target <= 1.05)
and ``full / early`` (the gain over the full forward). Mean ± std and median over rounds. Beside them, the same
two ratios of work: the matmul and convolution FLOPs of one step of each kind (forward and backward, counted by
``torch.utils.flop_counter``), which machine load cannot change; batch norm and element-wise ops are not counted.

On this shared machine use one torch thread and the process CPU clock (the defaults): other processes then
barely change a step's CPU time. Rounds during which other processes used more than ``--max-foreign-cpu`` of
the machine are dropped while there are enough clean ones (``common.run_rounds``).

Usage::

    python benchmarks/early_stop.py                       # the three cases, prints JSON
    python benchmarks/early_stop.py --steps 30 --write-results
    python benchmarks/early_stop.py --smoke               # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import CLOCK_WORDS, Step, markdown_table, mean_pm_std, run_rounds, training_step

from sclearn.builders import build_sc_losses
from sclearn.models.table4 import Table4Net

KINDS: tuple[str, ...] = ("early", "stem", "full")
RESNET_ORDER = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Time the SC-only (pretrain) step that stops after the SC layer against a hand-written "
                       "stem-only step and against the full forward (paired, interleaved); print one JSON object.",
                       data=None, smoke=harness.SMOKE_ROUNDS)
    harness.add_round_flags(p, cases=("resnet18_32", "sc_cifar10", "sc_stl10"), threads=1, clock="cpu",
                            max_foreign_cpu=0.15)
    return harness.parse_round_flags(p, argv)


def stem_of(net: nn.Module, layer: str) -> nn.Module:
    """By hand: the modules that run up to and including ``layer``, in order, and nothing after it."""
    if isinstance(net, Table4Net):  # stages, then head
        return net.stages[: int(layer.removeprefix("stages.")) + 1]
    if isinstance(net, timm.models.ResNet) and layer in RESNET_ORDER:
        return nn.Sequential(*(getattr(net, name) for name in RESNET_ORDER[: RESNET_ORDER.index(layer) + 1]))
    raise ValueError(f"no hand-written stem for {type(net).__name__} at {layer!r}")


def build_steps(name: str, args: argparse.Namespace) -> tuple[dict[str, Step], dict[str, Any]]:
    built = harness.build_case(harness.STEP_CASES[name], args, mode="pretrain")
    model, twin, layer, x = built.model.train(), built.twin.train(), built.layer, built.x
    stem, stem_loss = stem_of(twin, layer), build_sc_losses(built.config, [layer])[layer]
    sgd = {"lr": args.lr, "momentum": 0.9}
    opt_model, opt_twin = torch.optim.SGD(model.parameters(), **sgd), torch.optim.SGD(twin.parameters(), **sgd)
    steps = {
        "early": training_step(lambda: model(x, compute_sc=True, return_logits=False).sc_loss, opt_model),
        "stem": training_step(lambda: stem_loss(stem(x)), opt_twin),
        "full": training_step(lambda: model(x, compute_sc=True).sc_loss, opt_model),
    }
    return steps, {**built.info(), "loss": repr(stem_loss)}


def step_flops(step: Step) -> int:
    """Matmul and convolution FLOPs of one step, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    steps, info = build_steps(name, args)
    rounds = run_rounds(steps, list(KINDS), args, torch.device("cpu"))
    by_clock = rounds.by_clock({"early_over_stem": ("early", "stem"), "full_over_early": ("full", "early")})
    flops = {k: step_flops(steps[k]) for k in KINDS}
    return {
        "case": name, **info, "clock": args.clock, **by_clock[args.clock], "by_clock": by_clock,
        "gflop_per_step": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "flops_early_over_stem": round(flops["early"] / flops["stem"], 4),
        "flops_full_over_early": round(flops["full"] / flops["early"], 4),
        "loss_last": {k: float(steps[k]()) for k in KINDS},
        **rounds.record(),
    }


def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = []
    for r in report["results"]:
        ms = r["ms_per_step"]
        rows.append([
            f"{r['model']} @ {r['layer']}, {r['img_size']}px, batch {r['batch_size']}",
            f"**{mean_pm_std(r['early_over_stem'])}** ({r['early_over_stem']['median']:.3f})",
            f"**{mean_pm_std(r['full_over_early'])}** ({r['full_over_early']['median']:.3f})",
            f"{r['flops_early_over_stem']:.3f} / {r['flops_full_over_early']:.3f}",
            " / ".join(f"{ms[k]['median']:.1f}" for k in ("stem", "early", "full")),
            harness.rounds_cell(r), harness.foreign_cell(r),
            f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f}",
        ])
    return harness.results_block(report, "SC-only steps stop after the SC layer (early stop)", [
        f"- Steps: SC only, SGD; `early` = `model(x, compute_sc=True, return_logits=False)` (the Trainer's "
        f"pretrain step), `stem` = hand-written stem up to the SC layer + the same loss, `full` = the whole "
        f"forward (before the early stop). Paired ratios per round, order rotated each round, {cfg['warmup']} "
        f"warm-up rounds; clock: {CLOCK_WORDS[cfg['clock']]}; a round is clean when other processes used at most "
        f"{cfg['max_foreign_cpu']:.0%} of the CPU. FLOPs: matmul + convolution FLOPs of one step, forward and "
        "backward (torch.utils.flop_counter; batch norm and element-wise ops not counted). Target: early / stem "
        "≤ 1.05.",
        "",
        markdown_table(["case", "early / stem, mean ± std (median)", "full / early = gain, mean ± std (median)",
                        "FLOPs early / stem, full / early", "ms/step stem / early / full (median)", "rounds used",
                        "foreign CPU", "1-min load before → after"], rows),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = harness.report_header("early_stop", args)
    report["results"] = harness.each_case("early_stop", args.cases, lambda name: measure_case(name, args))
    harness.publish(report, args, "early_stop", markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
