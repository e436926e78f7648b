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
import copy
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import CpuMeter, load_average, markdown_table, mean_pm_std, rotated, summarize, wait_until_quiet

from sclearn import MultiLayerSC, SpatialContrastiveLoss, TrainConfig, resolve_patch_size
from sclearn.backbones import build_backbone
from sclearn.losses import DISTANCES
from sclearn.sampling import POOLS

KINDS: tuple[str, ...] = ("ce", "joint", "plain")
CLOCKS: tuple[str, ...] = ("wall", "cpu")
CLOCK_WORDS = {"wall": "wall time", "cpu": "process CPU time"}
SMOKE_BATCH = 4


@dataclass(frozen=True)
class Case:
    """One benchmark configuration. ``layer=None`` means the net's own ``sc_layer`` (Table-4 nets)."""

    model: str
    layer: str | None
    img_size: int
    batch_size: int
    num_classes: int = 10
    in_chans: int = 3


CASES: dict[str, Case] = {
    "resnet18_32": Case("resnet18", "layer3", 32, 128),
    "resnet18_96": Case("resnet18", "layer3", 96, 32),
    "sc_cifar10": Case("sc_cifar10", None, 32, 128),
    "sc_stl10": Case("sc_stl10", None, 96, 32),
}


# -- argument parsing ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Time a joint CE+SC training step against a plain CE step (paired, interleaved) and print "
                       "one JSON object with machine, config and per-case results.", data=None,
                       smoke=f"tiny run for CI: batch {SMOKE_BATCH}, 2 measured rounds, 1 warm-up round (explicit "
                       "--batch-size/--steps/--warmup still win)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                   help="cases to run: " + "; ".join(
                       f"{k} = {c.model} at {c.layer or 'its sc_layer'}, {c.img_size}px, batch {c.batch_size}"
                       for k, c in CASES.items()))
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--steps", type=int, default=20,
                   help="clean measured rounds wanted; each round runs one step of every kind, so this is the "
                   "number of paired ratios (at least 10 for a result worth writing down)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured rounds before timing (one step of each kind)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default: leave torch's choice (usually the core count)")
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size")
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
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, batch and patch positions")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="give up collecting clean rounds after this many measured rounds and use them all, "
                   "flagging the case as disturbed (default: 4 x --steps; --smoke: --steps)")
    p.add_argument("--max-foreign-cpu", type=float, default=0.05,
                   help="a round is clean when other processes took at most this fraction of the machine's "
                   "CPU while it ran (from /proc/stat minus this process); only clean rounds are used when "
                   "there are --steps of them")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="clock of the headline numbers (both are always in by_clock on CPU): wall = elapsed "
                   "time; cpu = this process's CPU time, robust to other processes when --threads 1, "
                   "but with more threads it also counts OpenMP spin-waiting; wall only on accelerators")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each case, wait up to this long for a 3 s window in which other processes "
                   "use less than --max-foreign-cpu of the machine")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size = args.batch_size or SMOKE_BATCH
        if "--steps" not in (argv if argv is not None else sys.argv):
            args.steps = 2
        if "--warmup" not in (argv if argv is not None else sys.argv):
            args.warmup = 1
    if args.clock == "cpu" and not args.device.startswith("cpu"):
        p.error("--clock cpu only makes sense with --device cpu")
    if args.max_rounds is None:
        args.max_rounds = args.steps if args.smoke else 4 * args.steps
    if args.steps < 1 or args.warmup < 0 or args.max_rounds < args.steps:
        p.error("--steps must be >= 1, --warmup >= 0 and --max-rounds >= --steps")
    if args.batch_size is not None and args.batch_size < 2:
        p.error("--batch-size must be >= 2 (SC contrasts the other images of the batch)")
    return args


# -- model and steps -----------------------------------------------------------------------------------
def make_loss(args: argparse.Namespace, layer: str) -> SpatialContrastiveLoss:
    """The SC loss under test; the default is the paper's (L2, T = 1, flattened 0.55-side patches)."""
    cfg = TrainConfig(patch_size=args.patch_size, distance=args.distance, pool=args.pool)
    return harness.sc_losses(cfg, [layer])[layer]


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


Step = Callable[[], Tensor]


def make_step(
    forward: Callable[[Tensor], tuple[Tensor, Tensor | None]],
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Step:
    """One full training step: zero_grad, forward, CE (+ SC), backward, SGD step. Returns the loss."""

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits, sc_loss = forward(x)
            loss = F.cross_entropy(logits, y)
            if sc_loss is not None:
                loss = loss + sc_loss
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@dataclass
class Setup:
    """A built case: its step kinds, a way to free every gradient, and facts about it."""

    steps: dict[str, Step]
    free_grads: Callable[[], None]
    info: dict[str, Any]


def build_steps(case: Case, args: argparse.Namespace, device: torch.device) -> Setup:
    """The three step kinds of one case, sharing one batch, plus the case's SC geometry."""
    torch.manual_seed(args.seed)
    backbone = build_backbone(case.model, num_classes=case.num_classes, in_chans=case.in_chans)
    layer = case.layer or backbone.sc_layer
    batch = args.batch_size or case.batch_size
    x = torch.randn(batch, case.in_chans, case.img_size, case.img_size)
    y = torch.randint(0, case.num_classes, (batch,))
    twin = copy.deepcopy(backbone)  # copied before wrapping, so it carries no hooks
    loss = make_loss(args, layer)
    geometry = sc_geometry(backbone, layer, x, loss)
    wrapper = MultiLayerSC(backbone, layers=[layer], loss=loss)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    wrapper.to(device, memory_format=fmt).train()
    twin.to(device, memory_format=fmt).train()
    x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
    run_wrapper: nn.Module = torch.compile(wrapper) if args.compile else wrapper
    run_twin: nn.Module = torch.compile(twin) if args.compile else twin
    sgd = {"lr": args.lr, "momentum": 0.9}
    opt_wrapper = torch.optim.SGD(wrapper.parameters(), **sgd)
    opt_twin = torch.optim.SGD(twin.parameters(), **sgd)

    def autocast() -> contextlib.AbstractContextManager:
        if args.amp == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def ce_forward(inp: Tensor) -> tuple[Tensor, None]:
        return run_wrapper(inp, compute_sc=False).logits, None

    def joint_forward(inp: Tensor) -> tuple[Tensor, Tensor]:
        out = run_wrapper(inp)
        return out.logits, out.sc_loss

    def plain_forward(inp: Tensor) -> tuple[Tensor, None]:
        return run_twin(inp), None

    steps = {
        "ce": make_step(ce_forward, opt_wrapper, x, y, autocast),
        "joint": make_step(joint_forward, opt_wrapper, x, y, autocast),
        "plain": make_step(plain_forward, opt_twin, x, y, autocast),
    }
    info = {"model": case.model, "layer": layer, "img_size": case.img_size, "batch_size": batch, **geometry}

    def free_grads() -> None:
        opt_wrapper.zero_grad(set_to_none=True)
        opt_twin.zero_grad(set_to_none=True)

    return Setup(steps, free_grads, info)


# -- timing --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Step, device: torch.device) -> dict[str, float]:
    """Seconds of one step on both clocks, with the accelerator drained before and after.

    ``wall``: elapsed time. ``cpu``: CPU time of this process, all threads (``time.process_time``). With
    one thread the CPU clock hardly notices other processes; with several it also counts the time OpenMP
    threads spin at barriers. On an accelerator only ``wall`` means anything.
    """
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    synchronize(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


Times = dict[str, dict[str, list[float]]]  # clock -> kind -> seconds per step, in round order


@dataclass
class Rounds:
    """Measured rounds: per-step seconds of the rounds used, and how they were chosen."""

    times: Times
    run: int  # rounds measured in all
    clean: int  # rounds during which other processes took at most --max-foreign-cpu of the machine
    used_clean_only: bool  # True: ``times`` holds the clean rounds only; False: every round

    @property
    def disturbed(self) -> bool:
        return not self.used_clean_only


def run_rounds(steps: dict[str, Step], kinds: list[str], args: argparse.Namespace,
               device: torch.device) -> Rounds:
    """Warm-up rounds, then measured rounds until ``args.steps`` of them were clean (other processes
    took at most ``--max-foreign-cpu`` of the machine while they ran) or ``--max-rounds`` ran.

    With enough clean rounds only those are kept; otherwise every round is, and the case is flagged.
    Each round is one step of every kind, so dropping a round keeps the pairing intact.
    """
    for r in range(args.warmup):
        for kind in rotated(kinds, r):
            steps[kind]()
    rounds: list[tuple[dict[str, dict[str, float]], bool]] = []
    while sum(clean for _, clean in rounds) < args.steps and len(rounds) < args.max_rounds:
        meter = CpuMeter.start()
        measured = {kind: time_step(steps[kind], device) for kind in rotated(kinds, len(rounds))}
        foreign = meter.foreign_cpu_fraction()
        rounds.append((measured, foreign is None or foreign <= args.max_foreign_cpu))
    num_clean = sum(clean for _, clean in rounds)
    clean_only = num_clean >= args.steps
    kept = [m for m, clean in rounds if clean or not clean_only]
    times: Times = {c: {kind: [m[kind][c] for m in kept] for kind in kinds} for c in CLOCKS}
    return Rounds(times, len(rounds), num_clean, clean_only)


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(times[num], times[den])]


def timing_summary(times: dict[str, list[float]], kinds: list[str]) -> dict[str, Any]:
    """ms per step and the paired ratios, for one clock."""
    out: dict[str, Any] = {"ms_per_step": {k: summarize([1000 * t for t in times[k]], 2) for k in kinds}}
    out["ratio_joint_over_ce"] = summarize(paired_ratios(times, "joint", "ce"), 4)
    # Interference only ever adds time, so the ratio of the fastest steps is a second, contention-robust
    # estimate (it needs enough rounds for each kind to get one undisturbed step).
    out["ratio_of_min_times_joint_over_ce"] = round(min(times["joint"]) / min(times["ce"]), 4)
    if "plain" in kinds:
        out["ratio_ce_over_plain"] = summarize(paired_ratios(times, "ce", "plain"), 4)
        out["ratio_joint_over_plain"] = summarize(paired_ratios(times, "joint", "plain"), 4)
    return out


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
    setup = build_steps(CASES[name], args, device)
    steps = setup.steps
    kinds = ["ce", "joint"] if args.no_plain else list(KINDS)
    if args.wait_quiet > 0:
        wait_until_quiet(args.max_foreign_cpu, args.wait_quiet)
    load_before = load_average()
    meter = CpuMeter.start()
    rounds = run_rounds(steps, kinds, args, device)
    foreign = meter.foreign_cpu_fraction()
    clocks = ["wall"] if device.type != "cpu" else list(CLOCKS)
    by_clock = {clock: timing_summary(rounds.times[clock], kinds) for clock in clocks}
    result: dict[str, Any] = {"case": name, **setup.info, "clock": args.clock, **by_clock[args.clock]}
    result["by_clock"] = by_clock
    result["rounds"] = {"run": rounds.run, "clean": rounds.clean, "used": len(rounds.times["wall"]["ce"]),
                        "clean_only": rounds.used_clean_only}
    result["loss_last"] = {k: float(steps[k]()) for k in ("ce", "joint")}  # also proves the steps run
    if args.profile:
        result["profile"] = profile_sc_ops(steps, args.profile, device)
    if not args.no_memory:
        result["peak_memory"] = measure_memory(steps, kinds, device, setup.free_grads)
    result["foreign_cpu_fraction"] = foreign  # over all measured rounds, clean or not
    result["disturbed"] = rounds.disturbed
    result["loadavg_before"], result["loadavg_after"] = list(load_before), list(load_average())
    return result


# -- report --------------------------------------------------------------------------------------------
def config_of(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "cases": {k: asdict(CASES[k]) for k in args.cases},
        "batch_size_override": args.batch_size,
        "steps": args.steps,
        "max_rounds": args.max_rounds,
        "max_foreign_cpu": args.max_foreign_cpu,
        "warmup": args.warmup,
        "smoke": args.smoke,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "loss": repr(make_loss(args, "layer")),
        "optimizer": f"SGD(lr={args.lr}, momentum=0.9)",
        "seed": args.seed,
        "clock": args.clock,
        "profile_steps": args.profile,
        "order": "rounds of one step per kind, order rotated every round; ratio per round, then median",
        "memory": None if args.no_memory else (
            "cuda max_memory_allocated per step" if device.type == "cuda"
            else "torch.profiler profile_memory: peak live bytes allocated during the step, from its start"),
    }


def result_key(args: argparse.Namespace, device: torch.device) -> str:
    """Block key in RESULTS.md: one block per device, threads, clock, flags and case subset."""
    parts = ["overhead", device.type]
    if device.type == "cpu":
        parts += [f"{torch.get_num_threads()}threads", f"{args.clock}clock"]
    parts += [flag for flag, on in (("bf16", args.amp == "bf16"), ("channels_last", args.channels_last),
                                    ("compile", args.compile), ("profile", bool(args.profile))) if on]
    if list(args.cases) != list(CASES):  # a subset of the cases gets its own block
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
            f"{r['foreign_cpu_fraction']:.0%}" if r["foreign_cpu_fraction"] is not None else "?",
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
        "- Rounds used (clean / measured): " + ", ".join(
            f"{r['case']} {r['rounds']['used']} ({r['rounds']['clean']} / {r['rounds']['run']})"
            + ("" if r["rounds"]["clean_only"] else " **disturbed: all rounds used**")
            for r in report["results"]),
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
    report["results"] = []
    for name in args.cases:
        print(f"[overhead] {name} ...", file=sys.stderr)
        report["results"].append(measure_case(name, args, device))
    report["max_rss_mib"] = max_rss_mib()
    harness.publish(report, args, result_key(args, device), lambda r: markdown_block(r, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
