"""SC-only training steps stop after the SC layer: what that saves, and how close it gets to the floor.

Three kinds of SC-only training step (zero_grad, forward, SC loss, backward, SGD step) on one fixed batch,
interleaved round by round with the order rotated every round (``overhead.run_rounds``):

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
the machine are dropped while there are enough clean ones (``overhead.run_rounds``).

Usage::

    python benchmarks/early_stop.py                       # the three cases, prints JSON
    python benchmarks/early_stop.py --steps 30 --write-results
    python benchmarks/early_stop.py --smoke               # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, `overhead` when run as a script

from common import (
    CpuMeter,
    command_line,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    mean_pm_std,
    now_utc,
    print_json,
    summarize,
    write_result_block,
)
from overhead import CASES, CLOCK_WORDS, CLOCKS, Step, paired_ratios, run_rounds

from sclearn.builders import build_sc_losses, build_sc_model
from sclearn.config import TrainConfig
from sclearn.models.table4 import Table4Net

KINDS: tuple[str, ...] = ("early", "stem", "full")
DEFAULT_CASES = ("resnet18_32", "sc_cifar10", "sc_stl10")
SMOKE_BATCH = 4
RESNET_ORDER = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time the SC-only (pretrain) step that stops after the SC layer against a hand-written "
        "stem-only step and against the full forward (paired, interleaved); print one JSON object.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(DEFAULT_CASES),
                   help="cases (as in overhead.py): " + "; ".join(
                       f"{k} = {c.model} at {c.layer or 'its sc_layer'}, {c.img_size}px, batch {c.batch_size}"
                       for k, c in CASES.items()))
    p.add_argument("--steps", type=int, default=20, help="clean measured rounds wanted (one step of each kind)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="stop collecting clean rounds after this many and use them all (default: 4 x --steps)")
    p.add_argument("--max-foreign-cpu", type=float, default=0.15,
                   help="a round is clean when other processes took at most this share of the machine's CPU")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--clock", choices=CLOCKS, default="cpu",
                   help="clock of the headline ratios (both are in by_clock): cpu = this process's CPU time")
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, batch and patch positions")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny run for the tests: batch {SMOKE_BATCH}, 2 rounds, 1 warm-up round")
    p.add_argument("--write-results", action="store_true",
                   help="also write the results block into benchmarks/RESULTS.md (replacing an earlier one)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.steps, args.warmup = args.batch_size or SMOKE_BATCH, 2, 1
    args.max_rounds = args.max_rounds or (args.steps if args.smoke else 4 * args.steps)
    if args.steps < 1 or args.warmup < 0 or args.max_rounds < args.steps:
        p.error("--steps must be >= 1, --warmup >= 0 and --max-rounds >= --steps")
    if args.batch_size is not None and args.batch_size < 2:
        p.error("--batch-size must be >= 2 (SC contrasts the other images of the batch)")
    return args


def stem_of(net: nn.Module, layer: str) -> nn.Module:
    """By hand: the modules that run up to and including ``layer``, in order, and nothing after it."""
    if isinstance(net, Table4Net):  # stages, then head
        return net.stages[: int(layer.removeprefix("stages.")) + 1]
    if isinstance(net, timm.models.ResNet) and layer in RESNET_ORDER:
        return nn.Sequential(*(getattr(net, name) for name in RESNET_ORDER[: RESNET_ORDER.index(layer) + 1]))
    raise ValueError(f"no hand-written stem for {type(net).__name__} at {layer!r}")


def sc_step(loss_of: Any, opt: torch.optim.Optimizer, x: Tensor) -> Step:
    """One SC-only training step; ``loss_of(x)`` is the kind's forward and SC loss."""

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def build_steps(name: str, args: argparse.Namespace) -> tuple[dict[str, Step], dict[str, Any]]:
    case = CASES[name]
    torch.manual_seed(args.seed)
    backbone = timm.create_model(case.model, num_classes=case.num_classes, in_chans=case.in_chans)
    layer = case.layer or backbone.sc_layer
    config = TrainConfig(mode="pretrain", backbone=case.model, layers=(layer,))
    twin = copy.deepcopy(backbone).train()  # before wrapping: no hooks
    model = build_sc_model(config, backbone).train()
    stem, stem_loss = stem_of(twin, layer), build_sc_losses(config, [layer])[layer]
    batch = args.batch_size or case.batch_size
    x = torch.randn(batch, case.in_chans, case.img_size, case.img_size)
    sgd = {"lr": args.lr, "momentum": 0.9}
    opt_model, opt_twin = torch.optim.SGD(model.parameters(), **sgd), torch.optim.SGD(twin.parameters(), **sgd)
    steps = {
        "early": sc_step(lambda inp: model(inp, compute_sc=True, return_logits=False).sc_loss, opt_model, x),
        "stem": sc_step(lambda inp: stem_loss(stem(inp)), opt_twin, x),
        "full": sc_step(lambda inp: model(inp, compute_sc=True).sc_loss, opt_model, x),
    }
    info = {"model": case.model, "layer": layer, "img_size": case.img_size, "batch_size": batch,
            "loss": repr(stem_loss)}
    return steps, info


def step_flops(step: Step) -> int:
    """Matmul and convolution FLOPs of one step, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    steps, info = build_steps(name, args)
    load_before, meter = load_average(), CpuMeter.start()
    rounds = run_rounds(steps, list(KINDS), args, torch.device("cpu"))
    foreign = meter.foreign_cpu_fraction()
    by_clock = {}
    for clock in CLOCKS:
        times = rounds.times[clock]
        by_clock[clock] = {
            "ms_per_step": {k: summarize([1000 * t for t in times[k]], 2) for k in KINDS},
            "early_over_stem": summarize(paired_ratios(times, "early", "stem"), 4),
            "full_over_early": summarize(paired_ratios(times, "full", "early"), 4),
        }
    flops = {k: step_flops(steps[k]) for k in KINDS}
    return {
        "case": name, **info, "clock": args.clock, **by_clock[args.clock], "by_clock": by_clock,
        "gflop_per_step": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "flops_early_over_stem": round(flops["early"] / flops["stem"], 4),
        "flops_full_over_early": round(flops["full"] / flops["early"], 4),
        "rounds": {"run": rounds.run, "clean": rounds.clean, "used": len(rounds.times["cpu"]["early"]),
                   "clean_only": rounds.used_clean_only},
        "loss_last": {k: float(steps[k]()) for k in KINDS},
        "foreign_cpu_fraction": foreign,
        "loadavg_before": list(load_before), "loadavg_after": list(load_average()),
    }


def markdown_block(report: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for r in report["results"]:
        ms = r["ms_per_step"]
        rows.append([
            f"{r['model']} @ {r['layer']}, {r['img_size']}px, batch {r['batch_size']}",
            f"**{mean_pm_std(r['early_over_stem'])}** ({r['early_over_stem']['median']:.3f})",
            f"**{mean_pm_std(r['full_over_early'])}** ({r['full_over_early']['median']:.3f})",
            f"{r['flops_early_over_stem']:.3f} / {r['flops_full_over_early']:.3f}",
            " / ".join(f"{ms[k]['median']:.1f}" for k in ("stem", "early", "full")),
            f"{r['rounds']['used']} ({r['rounds']['clean']} clean of {r['rounds']['run']})"
            + ("" if r["rounds"]["clean_only"] else " **disturbed**"),
            f"{r['foreign_cpu_fraction']:.0%}" if r["foreign_cpu_fraction"] is not None else "?",
            f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f}",
        ])
    table = markdown_table(
        ["case", "early / stem, mean ± std (median)", "full / early = gain, mean ± std (median)",
         "FLOPs early / stem, full / early",
         "ms/step stem / early / full (median)", "rounds used", "foreign CPU", "1-min load before → after"],
        rows,
    )
    machine = report["machine"]
    return "\n".join([
        "## SC-only steps stop after the SC layer (early stop)" + (" (smoke)" if args.smoke else ""),
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {machine_line(machine)}; load average at start {machine['loadavg_at_start']} (shared machine)",
        f"- Steps: SC only, SGD; `early` = `model(x, compute_sc=True, return_logits=False)` (the Trainer's "
        f"pretrain step), `stem` = hand-written stem up to the SC layer + the same loss, `full` = the whole "
        f"forward (before the early stop). Paired ratios per round, order rotated each round, {args.warmup} "
        f"warm-up rounds; clock: {CLOCK_WORDS[args.clock]}; a round is clean when other processes used at most "
        f"{args.max_foreign_cpu:.0%} of the CPU. FLOPs: matmul + convolution FLOPs of one step, forward and backward "
        f"(torch.utils.flop_counter; batch norm and element-wise ops not counted). Target: early / stem ≤ 1.05.",
        "",
        table,
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "early_stop", "command": command_line(), "date": now_utc(),
        "machine": machine_info(torch.device("cpu")),
        "config": {k: v for k, v in vars(args).items() if k != "write_results"}, "results": [],
    }
    for name in args.cases:
        print(f"[early_stop] {name} ...", file=sys.stderr)
        report["results"].append(measure_case(name, args))
    print_json(report)
    if args.write_results:
        key = "early_stop" + ("-smoke" if args.smoke else "")
        write_result_block(key, markdown_block(report, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
