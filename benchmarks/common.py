"""Measuring helpers shared by the benchmark scripts: machine description, CPU-contention accounting, timing
(training steps, interleaved rounds), statistics, JSON output and result blocks in ``benchmarks/RESULTS.md``
(no sclearn import; what the scripts share on top of it, flags, result cache and models, is in ``_harness.py``).

Every benchmark prints one JSON object (machine, config, results) on stdout and, when asked, writes the
same facts as a markdown block into RESULTS.md, next to the exact command that produced them. A block is
delimited by HTML comments carrying a key, so running the same benchmark again replaces its block instead
of appending a second one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"


# -- machine -----------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing package is just "not installed"
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, library versions, accelerator, load."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": _package_version("timm"),
        "sclearn": _package_version("sclearn"),
        "device": str(device),
        "loadavg_at_start": list(load_average()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(machine: dict[str, Any]) -> str:
    """One human line, e.g. "AMD EPYC, 2 cores, torch 2.4 (2 threads), device cpu"."""
    line = (
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), timm {machine['timm']}, device {machine['device']}"
    )
    if "gpu" in machine:
        line += f" ({machine['gpu']}, CUDA {machine['cuda']})"
    return line


# -- CPU contention ----------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (zeros where the OS has none). They include this process."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (0.0, 0.0, 0.0)


def uptime() -> str:
    """``uptime``'s line (load averages with a clock), or the load averages alone."""
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(map(str, load_average()))


def _system_busy_seconds() -> float | None:
    """CPU-seconds all processes spent busy since boot, from /proc/stat (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / ticks


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system  # all threads of this process


@dataclass
class CpuMeter:
    """Measures how much CPU *other* processes took while a benchmark ran.

    ``foreign_cpu_fraction`` is (busy CPU-seconds of the whole machine - this process's CPU-seconds)
    / (wall seconds x cores): 0 on an otherwise idle machine, 0.5 when others kept half the cores busy.
    Anything above a few percent means the timings were disturbed. Linux only (None elsewhere).
    """

    wall: float
    system: float | None
    own: float

    @classmethod
    def start(cls) -> CpuMeter:
        return cls(time.perf_counter(), _system_busy_seconds(), _own_cpu_seconds())

    def foreign_cpu_fraction(self) -> float | None:
        end_system = _system_busy_seconds()
        if self.system is None or end_system is None:
            return None
        wall = time.perf_counter() - self.wall
        foreign = (end_system - self.system) - (_own_cpu_seconds() - self.own)
        return round(max(0.0, foreign) / (wall * usable_cores()), 3) if wall > 0 else None


@dataclass
class Contention:
    """How busy the machine was during each measured stretch: other processes' CPU share and the 1-min load."""

    foreign: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        meter = CpuMeter.start()
        yield
        fraction = meter.foreign_cpu_fraction()
        if fraction is not None:
            self.foreign.append(fraction)
        self.loads.append(load_average()[0])

    def summary(self) -> dict[str, Any]:
        return {"foreign_cpu_fraction": summarize(self.foreign, 3) if self.foreign else None,
                "loadavg_1min": summarize(self.loads, 2)}


def rotated(items: Sequence[Any], r: int) -> list[Any]:
    """``items`` rotated by ``r``, so that round r of an interleaved measurement starts with item r."""
    k = r % len(items)
    return [*items[k:], *items[:k]]


def wait_until_quiet(max_foreign: float, timeout_s: float, window_s: float = 3.0) -> float | None:
    """Sleep until other processes use less than ``max_foreign`` of the machine over a ``window_s``
    window, or ``timeout_s`` has passed. Returns the last measured foreign fraction (None off Linux)."""
    deadline = time.monotonic() + timeout_s
    while True:
        meter = CpuMeter.start()
        time.sleep(window_s)
        foreign = meter.foreign_cpu_fraction()
        if foreign is None or foreign < max_foreign or time.monotonic() >= deadline:
            return foreign


# -- timing ------------------------------------------------------------------------------------------
Step = Callable[[], Tensor]  # one training step; returns its (detached) loss
CLOCKS: tuple[str, ...] = ("wall", "cpu")
CLOCK_WORDS = {"wall": "wall time", "cpu": "process CPU time"}


def training_step(loss_of: Callable[[], Tensor], opt: torch.optim.Optimizer,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Step:
    """One training step: zero_grad, ``loss_of()`` (forward and loss, under ``autocast()``), backward, optimizer
    step."""

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


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
    """Measured rounds: per-step seconds of the rounds used, how they were chosen, and the machine meanwhile."""

    times: Times
    run: int  # rounds measured in all
    clean: int  # rounds during which other processes took at most --max-foreign-cpu of the machine
    used_clean_only: bool  # True: ``times`` holds the clean rounds only; False: every round
    foreign_cpu_fraction: float | None  # other processes' share of the machine over all rounds
    loadavg_before: list[float]
    loadavg_after: list[float]

    @property
    def disturbed(self) -> bool:
        return not self.used_clean_only

    def by_clock(self, ratios: dict[str, tuple[str, str]], clocks: Sequence[str] = CLOCKS) -> dict[str, Any]:
        """Per clock: ``ms_per_step`` of each kind, and each of ``ratios`` (name: (numerator kind, denominator
        kind)) paired per round, summarised."""
        return {c: {"ms_per_step": {k: summarize([1000 * t for t in ts], 2) for k, ts in self.times[c].items()},
                    **{name: summarize(paired_ratios(self.times[c], num, den), 4)
                       for name, (num, den) in ratios.items()}}
                for c in clocks}

    def record(self) -> dict[str, Any]:
        """The facts of the rounds for a JSON report."""
        used = len(next(iter(self.times["wall"].values())))
        return {"rounds": {"run": self.run, "clean": self.clean, "used": used, "clean_only": self.used_clean_only},
                "foreign_cpu_fraction": self.foreign_cpu_fraction, "disturbed": self.disturbed,
                "loadavg_before": self.loadavg_before, "loadavg_after": self.loadavg_after}


def run_rounds(steps: dict[str, Step], kinds: list[str], args: Any, device: torch.device) -> Rounds:
    """``args.warmup`` warm-up rounds, then measured rounds until ``args.steps`` of them were clean (other
    processes took at most ``args.max_foreign_cpu`` of the machine while they ran) or ``args.max_rounds`` ran.

    A round is one step of every kind, the order rotated every round. With enough clean rounds only those are
    kept; otherwise every round is, and the result is flagged ``disturbed``. Dropping whole rounds keeps the
    pairing intact.
    """
    for r in range(args.warmup):
        for kind in rotated(kinds, r):
            steps[kind]()
    load_before, overall = load_average(), CpuMeter.start()
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
    return Rounds(times, len(rounds), num_clean, clean_only, overall.foreign_cpu_fraction(), list(load_before),
                  list(load_average()))


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per round: the ``num`` kind's time over the ``den`` kind's."""
    return [a / b for a, b in zip(times[num], times[den])]


def interleaved(measurements: dict[str, Callable[[], float]], reps: int, digits: int = 4) -> dict[str, dict[str, float]]:
    """Every measurement once per repetition, the order rotated each repetition; :func:`summarize` per name."""
    values: dict[str, list[float]] = {name: [] for name in measurements}
    for rep in range(reps):
        for name in rotated(list(measurements), rep):
            values[name].append(measurements[name]())
    return {name: summarize(v, digits) for name, v in values.items()}


# -- statistics --------------------------------------------------------------------------------------
def summarize(values: Sequence[float], digits: int | None = None) -> dict[str, float]:
    """Median, mean, sample std, min, max (rounded to ``digits`` if given) and count of a non-empty
    sequence."""
    if not values:
        raise ValueError("cannot summarize an empty sequence")
    vals = [float(v) for v in values]
    stats = {
        "median": statistics.median(vals),
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
    }
    if digits is not None:
        stats = {k: round(v, digits) for k, v in stats.items()}
    return {**stats, "n": len(vals)}


def mean_pm_std(stats: dict[str, float], digits: int = 3) -> str:
    """"1.012 ± 0.004" from a :func:`summarize` result."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


# -- output ------------------------------------------------------------------------------------------
def command_line() -> str:
    """The command that is running, as a copy-pasteable shell line relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(BENCH_DIR.parent)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def print_json(obj: Any) -> None:
    """Print ``obj`` as one indented JSON document on stdout (NaN/inf are refused: they are not JSON)."""
    json.dump(obj, sys.stdout, indent=2, allow_nan=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    """``value`` as report text; ``-`` where it is unknown (None), e.g. the share of a core of a resumed run."""
    return "-" if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; a None cell shows as ``-``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def write_result_block(key: str, body: str, path: Path = RESULTS_MD) -> None:
    """Put ``body`` into RESULTS.md between markers named ``key``: replaces an existing block with the
    same key, or appends a new one at the end (creating the file with a title if needed).

    The file is locked (``flock``) while it is rewritten, so benchmarks finishing together do not lose
    each other's blocks.
    """
    start, end = _markers(key)
    block = f"{start}\n{body.strip()}\n{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", flags=re.DOTALL)
    with open(path, "a+", encoding="utf-8") as fh:
        _lock(fh)
        fh.seek(0)
        text = fh.read() or "# Benchmark results\n\nWritten by the scripts in `benchmarks/`.\n"
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block
        fh.seek(0)
        fh.truncate()
        fh.write(text)  # append mode writes at the end, which is 0 after the truncate


def _lock(fh: Any) -> None:
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
    except ImportError:  # not POSIX: no lock
        pass


def fenced(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text}\n```"

