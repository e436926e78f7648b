"""Training-step overhead of Spatial Contrasting: (CE + SC step time) / (CE step time).

For each case the same ``MultiLayerSC``-wrapped model runs three kinds of training step, interleaved
round by round (the order rotates every round, so no kind always follows the same one):

- ``ce``:    ``wrapper(x, compute_sc=False)`` -> CE(logits) -> backward -> SGD step. The hooks are
             registered but dormant: this is the plain backbone's training step.
- ``joint``: ``wrapper(x)`` in train mode -> CE(out.logits) + out.sc_loss -> backward -> SGD step.
- ``plain``: an unwrapped twin of the backbone (same weights, no hooks, own SGD) -> CE -> backward ->
             step; it checks that dormant hooks cost nothing (``ce / plain`` ~ 1.0).

Every step uses the same batch. The headline number is the median over rounds of ``joint / ce`` measured
within the round (a paired ratio: slow drifts of the machine cancel). Mean ± std of the ratios and the
absolute ms per step are reported beside it.

On a shared machine, rounds during which other processes took more than ``--max-foreign-cpu`` of the CPU
(measured from /proc/stat) are dropped, and measuring goes on until ``--steps`` clean rounds were seen or
``--max-rounds`` ran; then every round is used and the case is flagged ``disturbed``. With several torch
threads a competing process can slow a step many-fold (OpenMP threads wait for each other at every op), so
on a busy machine ``--threads 1 --clock cpu`` (process CPU time) is the more robust measurement.

Peak memory is measured after timing, one extra step of each kind:
- CUDA: ``torch.cuda.max_memory_allocated`` during the step (absolute, and above the step's start).
- CPU: the peak, during the step, of bytes allocated through PyTorch's CPU allocator and still alive
  (``torch.profiler`` with ``profile_memory=True``), counted from the step's start: what the step adds
  on top of weights, optimizer state and batch. Memory that oneDNN or other libraries allocate outside
  PyTorch's allocator is not seen. The process's max RSS is reported too, but it is a whole-run high-water
  mark, not a per-step figure.

Usage::

    python benchmarks/overhead.py                      # all cases, prints JSON
    python benchmarks/overhead.py --cases resnet18_32 --steps 30 --write-results
    python benchmarks/overhead.py --smoke              # seconds; what CI runs
    python benchmarks/overhead.py --device cuda --amp bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import (
    CLOCK_WORDS,
    CLOCKS,
    Step,
    markdown_table,
    mean_pm_std,
    run_rounds,
    synchronize,
    training_step,
    wait_until_quiet,
)

from sclearn import SpatialContrastiveLoss, resolve_patch_size
from sclearn.builders import build_sc_losses
from sclearn.config import TrainConfig
from sclearn.losses import DISTANCES
from sclearn.sampling import POOLS

KINDS: tuple[str, ...] = ("ce", "joint", "plain")


# -- argument parsing ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Time a joint CE+SC training step against a plain CE step (paired, interleaved) and print "
                       "one JSON object with machine, config and per-case results.", data=None,
                       smoke=harness.SMOKE_ROUNDS)
    harness.add_round_flags(p, cases=harness.STEP_CASES, threads=None, clock="wall", max_foreign_cpu=0.05)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--channels-last", action="store_true", help="models and batch in channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the wrapper and the plain twin")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: forward and losses under torch.autocast(dtype=bfloat16); the SC distances "
                   "are computed in fp32 regardless (sclearn disables autocast there)")
    p.add_argument("--no-plain", action="store_true",
                   help="skip the unwrapped twin (saves a third of the time; no dormant-hook check)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also run STEPS steps of ce and of joint under torch.profiler and charge the joint "
                   "step's extra op calls at their mean time: SC's cost as work, free of timing noise; 0: off")
    p.add_argument("--patch-size", type=float, default=0.55,
                   help="SpatialContrastiveLoss patch_size (fraction of the map side)")
    p.add_argument("--distance", choices=DISTANCES, default="l2",
                   help="SpatialContrastiveLoss distance")
    p.add_argument("--pool", choices=POOLS, default="flatten", help="SpatialContrastiveLoss pool")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each case, wait up to this long for a 3 s window in which other processes "
                   "use less than --max-foreign-cpu of the machine")
    args = harness.parse_round_flags(p, argv)
    if args.clock == "cpu" and not args.device.startswith("cpu"):
        p.error("--clock cpu only makes sense with --device cpu")
    return args


# -- model and steps -----------------------------------------------------------------------------------
def sc_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The SC loss under test, as TrainConfig fields; the default is the paper's (L2, T = 1, flattened 0.55-side
    patches)."""
    return dict(patch_size=args.patch_size, distance=args.distance, pool=args.pool)


def sc_geometry(backbone: nn.Module, layer: str, x: Tensor, loss: SpatialContrastiveLoss) -> dict[str, Any]:
    """Shape of the hooked map and of the patch vectors, from one no-grad forward on two images."""
    seen: dict[str, tuple[int, ...]] = {}
    module = dict(backbone.named_modules())[layer]

    def record(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        seen["shape"] = tuple(output.shape)

    handle = module.register_forward_hook(record)
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(x[:2])
    finally:
        handle.remove()
        backbone.train(was_training)
    _, c, h, w = seen["shape"]
    ph, pw = resolve_patch_size(loss.patch_size, h, w)
    dim = c if loss.pool == "mean" else c * ph * pw
    return {"sc_map_chw": [c, h, w], "patch_cells": [ph, pw], "patch_dim": dim}


@dataclass
class Setup:
    """A built case: its step kinds, a way to free every gradient, and facts about it."""

    steps: dict[str, Step]
    free_grads: Callable[[], None]
    info: dict[str, Any]


def build_steps(case: harness.StepCase, args: argparse.Namespace, device: torch.device) -> Setup:
    """The three step kinds of one case, sharing one batch, plus the case's SC geometry."""
    built = harness.build_case(case, args, **sc_fields(args))
    wrapper, twin, layer = built.model, built.twin, built.layer
    geometry = sc_geometry(wrapper.backbone, layer, built.x, wrapper.loss_for(layer))  # hooks dormant here
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    wrapper.to(device, memory_format=fmt).train()
    twin.to(device, memory_format=fmt).train()
    x, y = built.x.to(device).contiguous(memory_format=fmt), built.y.to(device)
    run_wrapper: nn.Module = torch.compile(wrapper) if args.compile else wrapper
    run_twin: nn.Module = torch.compile(twin) if args.compile else twin
    sgd = {"lr": args.lr, "momentum": 0.9}
    opt_wrapper = torch.optim.SGD(wrapper.parameters(), **sgd)
    opt_twin = torch.optim.SGD(twin.parameters(), **sgd)

    def autocast() -> contextlib.AbstractContextManager:
        if args.amp == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def joint_loss() -> Tensor:
        out = run_wrapper(x)
        return F.cross_entropy(out.logits, y) + out.sc_loss

    steps = {
        "ce": training_step(lambda: F.cross_entropy(run_wrapper(x, compute_sc=False).logits, y), opt_wrapper,
                            autocast),
        "joint": training_step(joint_loss, opt_wrapper, autocast),
        "plain": training_step(lambda: F.cross_entropy(run_twin(x), y), opt_twin, autocast),
    }

    def free_grads() -> None:
        opt_wrapper.zero_grad(set_to_none=True)
        opt_twin.zero_grad(set_to_none=True)

    return Setup(steps, free_grads, {**built.info(), **geometry})


# -- profile -------------------------------------------------------------------------------------------
SC_SPANS = ("sclearn.sc_sample", "sclearn.sc_score")


def profile_sc_ops(steps: dict[str, Step], n: int, device: torch.device) -> dict[str, Any]:
    """Where SC's time goes, from torch.profiler op counts and times: a measure of work, not of machine noise.

    The ce and joint steps run the same backbone ops the same number of times; SC adds calls (its sampling
    and scoring, and their backward, which reuses op names such as ``aten::sum`` or ``aten::copy_``). Each
    op name's extra calls in the joint step are charged at that op's mean self time in the joint step, so
    timing noise on the backbone's own ops (same counts in both) cancels instead of being charged to SC.

    Per step, in ms: ``step_op_ms``: summed self time of all ops (CPU, or the device on CUDA) of each kind;
    ``sc_ms``: the extra calls' time, i.e. SC's cost; ``sc_forward_ms``: time inside the ``sclearn.sc_*``
    spans (sampling in the hook, scoring; absent under ``--compile``, which may drop the spans);
    ``top_sc_ops``: the op names SC's extra calls cost most in.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def self_ms(e) -> float:
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3 / n

    per_name: dict[str, dict[str, tuple[int, float]]] = {}
    sc_forward = 0.0
    for kind in ("ce", "joint"):
        steps[kind]()  # one unprofiled step: lazy allocations out of the way
        synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(n):
                steps[kind]()
            synchronize(device)
        averages = [e for e in prof.key_averages() if e.device_type.name == "CPU"]
        per_name[kind] = {e.key: (e.count, self_ms(e)) for e in averages if e.key not in SC_SPANS}
        if kind == "joint":
            total = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)
            sc_forward = sum(total(e) for e in averages if e.key in SC_SPANS) / 1e3 / n
    extra: dict[str, float] = {}
    for name, (count, ms) in per_name["joint"].items():
        added = count - per_name["ce"].get(name, (0, 0.0))[0]
        if added > 0 and count:
            extra[name] = ms * added / count
    ce_ms = sum(ms for _, ms in per_name["ce"].values())
    joint_ms = sum(ms for _, ms in per_name["joint"].values())
    sc_ms = sum(extra.values())
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:6]
    return {
        "steps": n,
        "clock": "device" if cuda else "cpu",
        "step_op_ms": {"ce": round(ce_ms, 3), "joint": round(joint_ms, 3)},
        "op_ratio_joint_over_ce": round(joint_ms / ce_ms, 4) if ce_ms else None,
        "sc_ms": round(sc_ms, 3),
        "sc_forward_ms": round(sc_forward, 3),
        "sc_share_of_ce_step": round(sc_ms / ce_ms, 4) if ce_ms else None,
        "top_sc_ops": [[k, round(v, 3)] for k, v in top],
    }


# -- memory --------------------------------------------------------------------------------------------
def _cpu_step_peak_bytes(step: Step) -> int:
    """Peak of live bytes allocated through PyTorch's CPU allocator during ``step``, from its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name == "CPU"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def step_peak_memory(step: Step, device: torch.device) -> dict[str, float]:
    """Peak memory of one step, in MiB (see the module docstring for what each number means)."""
    mib = 2.0**20
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": round(peak / mib, 1), "peak_above_start_mib": round((peak - base) / mib, 1)}
    return {"peak_above_start_mib": round(_cpu_step_peak_bytes(step) / mib, 1)}


def measure_memory(steps: dict[str, Step], kinds: list[str], device: torch.device,
                   zero_grads: Callable[[], None]) -> dict[str, dict[str, float]]:
    """One step of each kind, gradients freed before each so that every kind starts from the same state."""
    out = {}
    for kind in kinds:
        zero_grads()
        out[kind] = step_peak_memory(steps[kind], device)
    return out


def max_rss_mib() -> float:
    """This process's max resident set size so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- one case ------------------------------------------------------------------------------------------
def measure_case(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build, warm up, time and (optionally) memory-profile one case."""
    setup = build_steps(harness.STEP_CASES[name], args, device)
    steps = setup.steps
    kinds = ["ce", "joint"] if args.no_plain else list(KINDS)
    if args.wait_quiet > 0:
        wait_until_quiet(args.max_foreign_cpu, args.wait_quiet)
    rounds = run_rounds(steps, kinds, args, device)
    clocks = ["wall"] if device.type != "cpu" else list(CLOCKS)
    ratios = {"ratio_joint_over_ce": ("joint", "ce")}
    if "plain" in kinds:
        ratios.update(ratio_ce_over_plain=("ce", "plain"), ratio_joint_over_plain=("joint", "plain"))
    by_clock = rounds.by_clock(ratios, clocks)
    for clock, times in rounds.times.items():
        # Interference only ever adds time, so the ratio of the fastest steps is a second, contention-robust
        # estimate (it needs enough rounds for each kind to get one undisturbed step).
        if clock in by_clock:
            by_clock[clock]["ratio_of_min_times_joint_over_ce"] = round(min(times["joint"]) / min(times["ce"]), 4)
    result: dict[str, Any] = {"case": name, **setup.info, "clock": args.clock, **by_clock[args.clock]}
    result["by_clock"] = by_clock
    result["loss_last"] = {k: float(steps[k]()) for k in ("ce", "joint")}  # also proves the steps run
    if args.profile:
        result["profile"] = profile_sc_ops(steps, args.profile, device)
    if not args.no_memory:
        result["peak_memory"] = measure_memory(steps, kinds, device, setup.free_grads)
    result.update(rounds.record())  # foreign CPU share: over all measured rounds, clean or not
    return result


# -- report --------------------------------------------------------------------------------------------
def config_of(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The flags, with what they resolve to: the cases, the thread count, the loss and how memory is measured."""
    memory = None if args.no_memory else ("cuda max_memory_allocated per step" if device.type == "cuda" else
                                          "torch.profiler profile_memory: peak live bytes allocated during the step")
    return {**vars(args), "cases": {k: asdict(harness.STEP_CASES[k]) for k in args.cases}, "device": str(device),
            "threads": torch.get_num_threads(), "memory": memory,
            "loss": repr(build_sc_losses(TrainConfig(**sc_fields(args)), ["layer"])["layer"])}


def result_key(args: argparse.Namespace, device: torch.device) -> str:
    """Block key in RESULTS.md: one block per device, threads, clock, flags and case subset."""
    parts = ["overhead", device.type]
    if device.type == "cpu":
        parts += [f"{torch.get_num_threads()}threads", f"{args.clock}clock"]
    parts += [flag for flag, on in (("bf16", args.amp == "bf16"), ("channels_last", args.channels_last),
                                    ("compile", args.compile), ("profile", bool(args.profile))) if on]
    if list(args.cases) != list(harness.STEP_CASES):  # a subset of the cases gets its own block
        parts.append("+".join(args.cases))
    return "-".join(parts)


def _mem_cell(result: dict[str, Any], kind: str) -> str:
    mem = result.get("peak_memory", {}).get(kind)
    if not mem:
        return "-"
    if "peak_mib" in mem:
        return f"{mem['peak_mib']:.0f} ({mem['peak_above_start_mib']:+.0f})"
    return f"+{mem['peak_above_start_mib']:.1f}"


def profile_lines(results: list[dict[str, Any]]) -> list[str]:
    """The profiler's attribution as a small table (empty without --profile)."""
    rows = []
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        rows.append([
            r["case"], f"{prof['step_op_ms']['ce']:.1f} / {prof['step_op_ms']['joint']:.1f}",
            f"{prof['op_ratio_joint_over_ce']:.3f}", f"{prof['sc_ms']:.3f}", f"{prof['sc_forward_ms']:.3f}",
            f"**{100 * prof['sc_share_of_ce_step']:.2f}%**",
            ", ".join(f"{k} {v:.3f}" for k, v in prof["top_sc_ops"][:3]),
        ])
    if not rows:
        return []
    steps, clock = results[0]["profile"]["steps"], results[0]["profile"]["clock"]
    return [
        "",
        f"Profiler attribution ({steps} steps of each kind under torch.profiler, {clock} op time, ms per step). "
        "SC cost = the joint step's extra op calls (same op name, more calls than in the CE step) at that op's "
        "mean self time in the joint step: the backbone's ops run equally often in both kinds, so their timing "
        "noise cancels. It is an estimate: an upper bound when SC's calls of an op are smaller than the backbone's calls of the same op, as for an extra call of an op the backbone runs on big maps (e.g. "
        "`aten::fill_` zeroing the gradient of the gathered map, `aten::clamp_min`) is charged the big calls' "
        "mean. SC forward = time inside the `sclearn.sc_sample` / `sclearn.sc_score` spans, measured directly (Python in the hook included), a cross-check on the forward half of SC cost. "
        "\"all ops\" and their ratio are raw op-time sums and carry the machine's noise.",
        "",
        markdown_table(["case", "all ops CE / joint", "all ops joint/CE", "SC cost", "SC forward",
                        "SC cost / CE step", "largest SC costs (op, ms)"], rows),
    ]


def markdown_block(report: dict[str, Any], device: torch.device) -> str:
    """The RESULTS.md block: title, command, machine, table, config."""
    config = report["config"]
    rows = []
    for r in report["results"]:
        ratio, ms = r["ratio_joint_over_ce"], r["ms_per_step"]
        c, mh, mw = r["sc_map_chw"]
        rows.append([
            f"{r['model']} @ {r['layer']}, {r['img_size']}px, batch {r['batch_size']}",
            f"{c}×{mh}×{mw} → {r['patch_cells'][0]}×{r['patch_cells'][1]} (D={r['patch_dim']})",
            f"**{ratio['median']:.3f}**",
            mean_pm_std(ratio),
            f"{r['ratio_of_min_times_joint_over_ce']:.3f}",
            f"{ms['ce']['median']:.1f}",
            f"{ms['joint']['median']:.1f}",
            f"{r['ratio_ce_over_plain']['median']:.3f}" if "ratio_ce_over_plain" in r else "-",
            f"{_mem_cell(r, 'ce')} / {_mem_cell(r, 'joint')}",
            harness.foreign_cell(r),
        ])
    mem_unit = ("MiB, max allocated (above step start)" if device.type == "cuda"
                else "MiB allocated by the step above its start, torch.profiler")
    table = markdown_table(
        ["case", "SC map → patch", "joint/CE median", "joint/CE mean ± std", "min joint / min CE", "CE ms/step",
         "joint ms/step",
         "dormant/plain", f"peak mem CE / joint ({mem_unit})", "foreign CPU"],
        rows,
    )
    return harness.results_block(report, f"SC training-step overhead, {device.type}", [
        "- Rounds used: " + ", ".join(f"{r['case']} {harness.rounds_cell(r)}" for r in report["results"]),
        (
            f"- Ratios are per round (CE step, joint step, plain step, order rotated each round), "
            f"{config['warmup']} warm-up rounds; a round is clean when other processes used at most "
            f"{config['max_foreign_cpu']:.0%} of the CPU during it; ms/step are medians; "
            f"clock: {CLOCK_WORDS[config['clock']]}. "
            f"\"foreign CPU\" is the share of the machine other processes used over all rounds of the case."
        ),
        "",
        table,
        *profile_lines(report["results"]),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = harness.report_header("overhead", args, config_of(args, device), device)
    report["results"] = harness.each_case("overhead", args.cases, lambda name: measure_case(name, args, device))
    report["max_rss_mib"] = max_rss_mib()
    harness.publish(report, args, result_key(args, device), lambda r: markdown_block(r, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
