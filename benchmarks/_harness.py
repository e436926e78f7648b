"""What the benchmark scripts share beyond measuring (that is ``common.py``): the flags, the one result cache,
Trainer runs, the report and its RESULTS.md block, and the models the step-timing benchmarks time.

- Flags: :func:`parser` gives every script ``--smoke``, ``--write-results`` and ``--data``;
  :func:`add_run_flags` gives the training benchmarks their seeds, thread, resume and directory flags;
  :func:`add_round_flags` / :func:`parse_round_flags` give the step-timing benchmarks (``overhead``,
  ``early_stop``) their cases, rounds, clock and thread flags.
- Cache: :class:`ResultCache` holds one JSON record per finished run, named by a hash of the run's TrainConfig
  fields (:func:`config_hash`). ``sc_ablation``, ``sample_efficiency`` and ``mnist_table3`` all read and write
  their results through it.
- Report: :func:`report_header` starts every script's JSON report, :func:`results_block` frames its RESULTS.md
  block, :func:`publish` prints the one and writes the other.
- Models: :func:`build_case` builds a step-timing case through the library's builders
  (``sclearn.backbones.build_backbone``, ``sclearn.builders.build_sc_model``), as the Trainer does. Data comes
  from ``sclearn.data.build_loaders`` and SC losses from ``sclearn.builders.build_sc_losses``: nothing in
  ``benchmarks/`` assembles them by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    BENCH_DIR,
    CLOCKS,
    command_line,
    fenced,
    machine_info,
    machine_line,
    now_utc,
    print_json,
    uptime,
    write_result_block,
)
from torch import Tensor, nn

from sclearn import MultiLayerSC, TrainConfig, Trainer
from sclearn.backbones import build_backbone
from sclearn.builders import build_sc_model
from sclearn.config import RESUMABLE_FIELDS

ROOT = BENCH_DIR.parent
FASHION_MNIST = "idx:/usr/share/datasets/fashion-mnist"
BIG = 10**6  # "no limit" for epochs and eval_every when a run is bounded by max_steps


# -- flags -------------------------------------------------------------------------------------------------
def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"distance\": \"cosine\"}'")
    return value


def parser(description: str, *, smoke: str, data: str | None = FASHION_MNIST, data_help: str | None = None,
           raw_description: bool = False) -> argparse.ArgumentParser:
    """A parser with the flags of every benchmark: ``--smoke`` (help: ``smoke``), ``--write-results`` and, unless
    ``data`` is None, ``--data`` (default ``data``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter
                                if raw_description else argparse.ArgumentDefaultsHelpFormatter)
    if data is not None:
        p.add_argument("--data", default=data, help=data_help or "data source for sclearn.data.load_image_dataset")
    p.add_argument("--smoke", action="store_true", help=smoke)
    p.add_argument("--write-results", action="store_true",
                   help="append (or replace) this configuration's block in benchmarks/RESULTS.md")
    return p


def add_run_flags(p: argparse.ArgumentParser, name: str, *, arms: Sequence[str], seeds_help: str) -> None:
    """The flags of a benchmark that trains arms x seeds through the Trainer and caches each run's result."""
    p.add_argument("--arms", nargs="+", choices=arms, default=list(arms), help="arms to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=seeds_help)
    p.add_argument("--batch-size", type=int, default=128, help="labelled batch (and the SC pre-training batch)")
    p.add_argument("--model-kwargs", type=json_object, default={},
                   help="JSON kwargs for timm.create_model('sc_mnist'), every arm, e.g. '{\"logit_act\": false}'")
    p.add_argument("--sc-args", type=json_object, default={},
                   help="JSON TrainConfig fields for the SC runs, e.g. '{\"distance\": \"cosine\", "
                   "\"temperature\": 0.2, \"pool\": \"mean\", \"patch_size\": 3}'")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP_NUM_THREADS)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--results-dir", type=Path, default=None,
                   help=f"per-run result JSON (default benchmarks/{name}_results; temporary with --smoke)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help=f"Trainer run directories (default runs/{name}; temporary with --smoke)")
    p.add_argument("--resume", action="store_true",
                   help="read back finished runs' results; continue killed runs from their last checkpoint")
    p.add_argument("--project-seeds", type=int, default=3, help="seeds of the full protocol for the projection")
    p.add_argument("--notes", default=None, help="a markdown file (the reading of the numbers) for RESULTS.md")


def set_run_dirs(args: argparse.Namespace, name: str, stack: contextlib.ExitStack) -> None:
    """Fill ``args.results_dir`` / ``args.runs_dir``: a temp dir (removed by ``stack``) for ``--smoke`` runs,
    else ``benchmarks/<name>_results`` and ``runs/<name>`` in the repository."""
    if args.smoke and (args.results_dir is None or args.runs_dir is None):
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sclearn-{name}-smoke-")))
        args.results_dir = args.results_dir or tmp / "results"
        args.runs_dir = args.runs_dir or tmp / "runs"
    args.results_dir = args.results_dir or BENCH_DIR / f"{name}_results"
    args.runs_dir = args.runs_dir or ROOT / "runs" / name


Runs = list[tuple[str, dict[str, Any]]]  # the (name, TrainConfig fields) of an arm's Trainer runs, in order


def run_arms(name: str, args: argparse.Namespace, runs_of: Callable[[str, argparse.Namespace, int], Runs],
             train: Callable[[str, int, Runs, Path, argparse.Namespace], dict[str, Any]]
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(report header, records) of a benchmark that trains ``args.arms`` x ``args.seeds`` through the Trainer.

    Threads set, run dirs filled (temporary ones for ``--smoke``, removed after); per seed and arm the record
    cached under the hash of ``runs_of(arm, args, seed)``, else ``train(arm, seed, runs, run_dir, args)`` in
    ``<runs_dir>/<key>``, read back with ``--resume``.
    """
    use_threads(args.threads)
    with contextlib.ExitStack() as stack:
        set_run_dirs(args, name, stack)
        report, cache, records = report_header(name, args), ResultCache(args.results_dir), []
        for seed in args.seeds:
            for arm in args.arms:
                runs = runs_of(arm, args, seed)
                key = arm_key(cache, arm, seed, runs)
                compute = functools.partial(train, arm, seed, runs, args.runs_dir / key, args)
                records.append(cache.run(key, compute, reuse=args.resume, label=name))
        return report, records


def arm_key(cache: ResultCache, arm: str, seed: int, runs: Runs) -> str:
    """The result-cache key of one arm and seed: ``<arm>_seed<seed>_<hash of its runs' fields>``."""
    return cache.key(f"{arm}_seed{seed}", [fields for _, fields in runs])


def read_arms(name: str, args: argparse.Namespace, runs_of: Callable[[str, argparse.Namespace, int], Runs]
              ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(report header, records, missing keys) of ``args.arms`` x ``args.seeds`` from the result cache alone:
    what :func:`run_arms` reads back with ``--resume``, and nothing is trained."""
    with contextlib.ExitStack() as stack:
        set_run_dirs(args, name, stack)
        report, cache = report_header(name, args), ResultCache(args.results_dir)
        records, missing = [], []
        for seed in args.seeds:
            for arm in args.arms:
                key = arm_key(cache, arm, seed, runs_of(arm, args, seed))
                found = cache.get(key)
                if found is None:
                    missing.append(key)
                else:
                    records.append(found)
        return report, records, missing


def runs_line(runs: Iterable[dict[str, Any]]) -> str:
    """When each run of a report ran, and the load it met."""
    return "Runs (date, 1-min load average at start / end of each run): " + "; ".join(
        f"{r['arm']} seed {r['seed']}: {r.get('date', '?')}, {r.get('load_start', '?')} / {r.get('load_end', '?')}"
        for r in runs) + "."


def use_threads(threads: int) -> None:
    """torch threads, and OMP_NUM_THREADS for the processes (loader workers) this one starts."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def note_lines(path: str | None) -> list[str]:
    """A blank line and the markdown of a ``--notes`` file, or nothing."""
    return ["", Path(path).read_text().strip()] if path else []


# -- the result cache --------------------------------------------------------------------------------------
# TrainConfig fields that never change what a run computes; init_from names the previous stage's run dir,
# whose own config is hashed with the run.
NOT_HASHED = frozenset(RESUMABLE_FIELDS | {"init_from"})


def portable(source: str) -> str:
    """A data source whose path lies in the repository, written relative to it (``idx:/repo/data/mnist`` ->
    ``idx:data/mnist``): the same run has the same key in every checkout."""
    kind, sep, target = source.partition(":")
    if sep and Path(target).is_absolute():
        with contextlib.suppress(ValueError):
            return f"{kind}:{Path(target).relative_to(ROOT)}"
    return source


def config_hash(configs: Sequence[dict[str, Any]]) -> str:
    """8 hex digits over every field of ``configs`` (TrainConfig keyword dicts, in order) that changes what the
    run computes. Only the fields given are hashed, so a new TrainConfig field left at its default keeps
    every earlier key."""
    keep = [{k: portable(v) if k == "data" and isinstance(v, str) else v
             for k, v in c.items() if k not in NOT_HASHED} for c in configs]
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:8]


class ResultCache:
    """Finished runs: one JSON record per run in ``directory``, ``<name>_<config hash>.json``.

    A changed setting gives a new key, so a stale result is never read back for it; an unchanged one is never
    trained twice. Records are written atomically (temp file + rename): a kill never leaves half a record.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(name: str, configs: Sequence[dict[str, Any]]) -> str:
        return f"{name}_{config_hash(configs)}"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "key": key}
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(self.path(key))
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record, in file-name order."""
        files = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        return [json.loads(p.read_text()) for p in files]

    def run(self, key: str, compute: Callable[[], dict[str, Any]], *, reuse: bool, label: str) -> dict[str, Any]:
        """The record of ``key``: read back when ``reuse`` and it exists, else ``compute()``d and stored."""
        found = self.get(key) if reuse else None
        print(f"[{label}] {key}: {'result exists, skipped' if found else 'running'}", file=sys.stderr)
        return found if found is not None else self.put(key, compute())


# -- Trainer runs ------------------------------------------------------------------------------------------
def train_once(fields: dict[str, Any], run_dir: Path, *, resume: bool) -> dict[str, Any]:
    """One Trainer run of ``TrainConfig(**fields)`` in ``run_dir``: its summary plus ``total_s``, ``setup_s``,
    ``continued`` (resumed from a checkpoint, so its timings cover part of the work) and ``reused``.

    ``resume``: a complete run (summary.json present) is read back, a killed one continues from its last
    checkpoint. Otherwise the directory is wiped first.
    """
    summary_path, timing_path = run_dir / "summary.json", run_dir / "bench_timing.json"
    if resume and summary_path.is_file():
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        return {**json.loads(summary_path.read_text()), **timing, "reused": True}
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    continued = resume and any((run_dir / "checkpoints").glob("ckpt-*"))
    cfg = TrainConfig(**{**fields, "output_dir": str(run_dir), "resume": resume})
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # accelerator.print -> keep stdout for the JSON report
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - start
        summary = trainer.fit()
    timing = {"total_s": round(time.perf_counter() - start, 2), "setup_s": round(setup_s, 2),
              "continued": continued}
    timing_path.write_text(json.dumps(timing))
    return {**summary, **timing, "reused": False}


def images_per_step(fields: dict[str, Any], stage: str) -> int:
    """Images one optimizer step of ``stage`` consumes (labelled + unlabelled)."""
    cfg = TrainConfig(**fields)  # the run's own mode: settings valid only for it (e.g. pretrain_patience) stay valid
    if stage == "joint":
        return cfg.batch_size + cfg.unlabeled_batch_size
    if stage == "pretrain":
        return cfg.pretrain_batch_size or cfg.batch_size
    return cfg.batch_size


def loop_timing(run_dir: Path, fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: {"loop_s", "s_per_step", "images_per_step"}} of the training loop, from the trainer's log windows
    in metrics.jsonl (stages with no window are left out).

    Each window logs ``img_per_s`` over the steps since the previous log line: loading, forward, backward,
    optimizer step, and whatever epoch-end work (checkpoint, evaluation) ran since that line. Set-up, the
    evaluation after the last step, and the export are in no window. The seconds are steps x batch / img/s, so a
    stage whose epochs end on a short batch is overstated by its missing images: prefer the Trainer's own
    ``train_loop_s`` in summary.json where it exists (``table_runs.stage_records`` does).
    """
    seconds: dict[str, float] = {}
    steps: dict[str, int] = {}
    path = run_dir / "metrics.jsonl"
    previous = 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if "img_per_s" not in record:
            continue
        n, previous, stage = record["step"] - previous, record["step"], record["stage"]
        if n > 0 and record["img_per_s"] > 0:
            seconds[stage] = seconds.get(stage, 0.0) + n * images_per_step(fields, stage) / record["img_per_s"]
            steps[stage] = steps.get(stage, 0) + n
    return {stage: {"loop_s": round(s, 2), "s_per_step": round(s / steps[stage], 4),
                    "images_per_step": images_per_step(fields, stage)} for stage, s in seconds.items()}


# -- the report ----------------------------------------------------------------------------------------------
def _portable_value(key: str, value: Any) -> Any:
    if isinstance(value, Path):
        with contextlib.suppress(ValueError):
            return str(value.resolve().relative_to(ROOT))
        return str(value)
    return portable(value) if key == "data" and isinstance(value, str) else value


def report_header(name: str, args: argparse.Namespace, config: dict[str, Any] | None = None,
                  device: torch.device | None = None) -> dict[str, Any]:
    """The keys every benchmark's JSON report starts with. ``config``: default ``vars(args)``; paths inside the
    repository are written relative to it."""
    config = {k: v for k, v in (vars(args) if config is None else config).items() if k != "write_results"}
    return {
        "benchmark": name,
        "command": command_line(),
        "date": now_utc(),
        "machine": machine_info(device or torch.device("cpu")),
        "uptime_start": uptime(),
        "config": {k: _portable_value(k, v) for k, v in config.items()},
    }


def results_block(report: dict[str, Any], title: str, lines: Iterable[str]) -> str:
    """A RESULTS.md block: the title, the run's command, date, machine and load, then ``lines`` (the script's
    own bullets, tables and notes), then the config as JSON."""
    return "\n".join([
        f"## {title}" + (" (smoke)" if report["config"].get("smoke") else ""),
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {machine_line(report['machine'])}",
        f"- Load: `{report['uptime_start']}` at start, `{report['uptime_end']}` at end",
        *lines,
        "",
        "Config:",
        "",
        fenced(json.dumps(report["config"], indent=1, default=str), "json"),
    ])


def publish(report: dict[str, Any], args: argparse.Namespace, key: str,
            render: Callable[[dict[str, Any]], str]) -> None:
    """Print the JSON report; with ``--write-results`` put ``render(report)`` into RESULTS.md under ``key``
    (``key-smoke`` for a smoke run, so it never replaces a real block)."""
    report["uptime_end"] = uptime()
    print_json(report)
    if args.write_results:
        write_result_block(key + ("-smoke" if args.smoke else ""), render(report))


# -- the step-timing benchmarks (overhead, early_stop) --------------------------------------------------------
@dataclass(frozen=True)
class StepCase:
    """A model timed on one batch of random images. ``layer=None``: the net's own ``sc_layer`` (Table-4 nets)."""

    model: str
    layer: str | None
    img_size: int
    batch_size: int
    num_classes: int = 10
    in_chans: int = 3


STEP_CASES: dict[str, StepCase] = {
    "resnet18_32": StepCase("resnet18", "layer3", 32, 128),
    "resnet18_96": StepCase("resnet18", "layer3", 96, 32),
    "sc_cifar10": StepCase("sc_cifar10", None, 32, 128),
    "sc_stl10": StepCase("sc_stl10", None, 96, 32),
}
SMOKE_BATCH = 4
SMOKE_ROUNDS = (f"tiny run for CI: batch {SMOKE_BATCH}, 2 measured rounds, 1 warm-up round (explicit "
                "--batch-size/--steps/--warmup still win)")


def add_round_flags(p: argparse.ArgumentParser, *, cases: Sequence[str], threads: int | None, clock: str,
                    max_foreign_cpu: float) -> None:
    """The flags of a benchmark that times kinds of training step in interleaved rounds (``common.run_rounds``)
    on :data:`STEP_CASES`; the defaults that differ between the scripts are arguments."""
    p.add_argument("--cases", nargs="+", choices=list(STEP_CASES), default=list(cases),
                   help="cases to run: " + "; ".join(f"{k} = {c.model} at {c.layer or 'its sc_layer'}, "
                                                     f"{c.img_size}px, batch {c.batch_size}"
                                                     for k, c in STEP_CASES.items()))
    p.add_argument("--steps", type=int, default=20,
                   help="clean measured rounds wanted; each round runs one step of every kind, so this is the "
                   "number of paired ratios (at least 10 for a result worth writing down)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured rounds before timing (one step of each kind)")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="give up collecting clean rounds after this many measured rounds and use them all, "
                   "flagging the case as disturbed (default: 4 x --steps; --smoke: --steps)")
    p.add_argument("--max-foreign-cpu", type=float, default=max_foreign_cpu,
                   help="a round is clean when other processes took at most this fraction of the machine's "
                   "CPU while it ran (from /proc/stat minus this process); only clean rounds are used when "
                   "there are --steps of them")
    p.add_argument("--threads", type=int, default=threads, help="torch.set_num_threads" + (
        "; default: leave torch's choice (usually the core count)" if threads is None else ""))
    p.add_argument("--clock", choices=CLOCKS, default=clock,
                   help="clock of the headline numbers (both are always in by_clock on CPU): wall = elapsed "
                   "time; cpu = this process's CPU time, robust to other processes when --threads 1, "
                   "but with more threads it also counts OpenMP spin-waiting; wall only on accelerators")
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, batch and patch positions")


def parse_round_flags(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, apply ``--smoke`` (:data:`SMOKE_ROUNDS`) and check the flags of :func:`add_round_flags`."""
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv
    if args.smoke:
        args.batch_size = args.batch_size or SMOKE_BATCH
        args.steps = args.steps if "--steps" in given else 2
        args.warmup = args.warmup if "--warmup" in given else 1
    if args.max_rounds is None:
        args.max_rounds = args.steps if args.smoke else 4 * args.steps
    if args.steps < 1 or args.warmup < 0 or args.max_rounds < args.steps:
        p.error("--steps must be >= 1, --warmup >= 0 and --max-rounds >= --steps")
    if args.batch_size is not None and args.batch_size < 2:
        p.error("--batch-size must be >= 2 (SC contrasts the other images of the batch)")
    return args


@dataclass
class BuiltCase:
    """A :class:`StepCase` built: the SC-wrapped backbone, an unwrapped twin with the same weights (copied before
    wrapping, so it carries no hooks), the SC layer, the config of the wrapper, and one batch: ``x`` (B, C, H, W)
    random images, ``y`` (B,) random labels."""

    model: MultiLayerSC
    twin: nn.Module
    layer: str
    config: TrainConfig
    x: Tensor
    y: Tensor

    def info(self) -> dict[str, Any]:
        return {"model": self.config.backbone, "layer": self.layer, "img_size": self.x.shape[-1],
                "batch_size": len(self.x)}


def build_case(case: StepCase, args: argparse.Namespace, **sc_fields: Any) -> BuiltCase:
    """``case`` built as the Trainer builds a model, seeded by ``args.seed``, batch ``args.batch_size`` or the
    case's; ``sc_fields``: the TrainConfig SC fields (``patch_size``, ``distance``, ``pool``...) of the wrapper."""
    torch.manual_seed(args.seed)
    backbone = build_backbone(case.model, num_classes=case.num_classes, in_chans=case.in_chans)
    layer = case.layer or backbone.sc_layer
    batch = args.batch_size or case.batch_size
    x = torch.randn(batch, case.in_chans, case.img_size, case.img_size)
    y = torch.randint(0, case.num_classes, (batch,))
    twin = copy.deepcopy(backbone)
    config = TrainConfig(backbone=case.model, layers=(layer,), **sc_fields)
    return BuiltCase(build_sc_model(config, backbone), twin, layer, config, x, y)


def each_case(label: str, cases: Sequence[str], measure: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """``measure(case)`` for every case, in order, each announced on stderr."""
    results = []
    for name in cases:
        print(f"[{label}] {name} ...", file=sys.stderr)
        results.append(measure(name))
    return results


def rounds_cell(result: dict[str, Any]) -> str:
    """A result's rounds for a table: "used (clean of measured)", flagged when the disturbed ones were kept."""
    r = result["rounds"]
    return f"{r['used']} ({r['clean']} clean of {r['run']})" + ("" if r["clean_only"] else " **disturbed**")


def foreign_cell(result: dict[str, Any]) -> str:
    """The share of the machine other processes took during a result's rounds."""
    return "?" if result["foreign_cpu_fraction"] is None else f"{result['foreign_cpu_fraction']:.0%}"
