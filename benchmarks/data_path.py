"""The data path, as a user waits for it: Trainer training img/s over the limit, on the memory and stream paths.

- **Ratio** (the headline): the Trainer's training img/s, read from its own ``metrics.jsonl``, divided by the
  *limit*: the same network (``build_backbone`` + ``build_sc_model``, as the Trainer builds it) and SGD step on
  pre-made in-memory tensors of the same shape, in the same process and thread count, with no data at all. Each
  repetition runs limit, trainer on each path (the order rotates), limit, so both sides of a ratio see the same
  machine. Target on the memory path: >= 0.95.
- **Loader img/s** of each path, for the inputs of each model in ``--cases``: ``build_loaders(...).train
  ["labeled"]`` iterated alone (decode or index, transfer, batched augmentation, normalisation), and the
  per-image pipeline the Trainer used before the memory path (``with_image_transform(ds, build_transform(
  train=True))``) for reference; beside each, its img/s over each case's limit (the loader must outrun the model).
- **Augmentation** of one batch: ``BatchAugment`` against ``kornia.augmentation`` (RandomCrop with reflect
  padding + RandomHorizontalFlip + Normalize) when kornia is importable (it is not a dependency).
- **Start-up**: ``load_image_dataset`` + ``semi_supervised_splits`` + ``build_loaders`` in a fresh process with
  empty caches (the first run: IDX parsing, and the memory path's decoding), then again (a second run).
- **Peak RSS** (``--rss``): a synthetic STL-10-sized set (100k x 3 x 96 x 96 PNGs) decoded by the memory path
  in one process, then read back and iterated for one epoch in another: peak, anonymous and file-backed RSS.
  File-backed pages are the memory-mapped cache, shared through the page cache by every process.
- **Profile** (``--profile``): one ``Trainer.fit`` per case on the memory path under cProfile: ms per step in
  the public torch / accelerate / sclearn functions a step runs, the checkpoint (``Accelerator.save_state``) per
  save, and the functions with the most own time.

This script replaces two (their results stay in RESULTS.md as records):

- ``trainer_efficiency.py``: Trainer img/s over a bare PyTorch loop that read the same loader. The loader's cost
  was on both sides, so the ratio hid it; the ratio to the limit above does not. Its ``--profile`` and its
  epoch-end checkpoint cost are ``--profile`` here, through the Trainer's public API only.
- ``data_throughput.py``: the loader's img/s against the model's: the loader table above.

One torch thread throughout (``--threads``); the machine's load and the CPU share other processes took are
reported with every number, as this machine is shared.

Usage::

    python benchmarks/data_path.py --reps 3 --write-results            # about 40 min on 2 busy cores
    python benchmarks/data_path.py --rss --profile --write-results     # + the STL-10-sized RSS probe, profiles
    python benchmarks/data_path.py --smoke --data idx:tests/fixture    # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import (
    Contention,
    interleaved,
    markdown_table,
    mean_pm_std,
    rotated,
    summarize,
    training_step,
)

from sclearn import TrainConfig
from sclearn import data as sc_data
from sclearn.backbones import build_backbone
from sclearn.builders import build_sc_model

PATHS = ("memory", "stream")
MODELS: dict[str, dict[str, Any]] = {  # as TrainConfig fields
    "sc_mnist": dict(backbone="sc_mnist", layers=("stages.1",), channels=1, image_size=None),  # 1 x 28 x 28
    "resnet18_32": dict(backbone="resnet18", layers=("layer3",), channels=3, image_size=32),  # gray -> RGB, 32 px
}
CASES = [f"{model}/{mode}" for model in MODELS for mode in ("supervised", "joint")]
DEFAULT_CASES = ["sc_mnist/supervised", "sc_mnist/joint", "resnet18_32/supervised"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Trainer img/s over the model's own limit on each data path, loader img/s, augmentation "
                       "cost, start-up and peak RSS; prints one JSON object.",
                       smoke="tiny run for CI (use with a small --data): batch 16, 2 windows of 2 steps, 1 rep")
    p.add_argument("--cases", nargs="+", choices=CASES, default=DEFAULT_CASES, help="model/mode pairs: " + "; ".join(
        f"{k} = {m['backbone']} (SC at {', '.join(m['layers'])}, {m['channels']} channel(s), size "
        f"{m['image_size'] or 'native'})" for k, m in MODELS.items()))
    p.add_argument("--batch-size", type=int, default=64, help="labelled images per step")
    p.add_argument("--unlabeled-ratio", type=float, default=2.0, help="joint: unlabelled images per labelled one")
    p.add_argument("--labels-per-class", type=int, default=400, help="joint: labelled images per class")
    p.add_argument("--log-every", type=int, default=10, help="the Trainer's log window (steps)")
    p.add_argument("--warmup-windows", type=int, default=1, help="log windows left out at the start of a run")
    p.add_argument("--windows", type=int, default=6, help="measured log windows per run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of limit / memory / stream / limit")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP_NUM_THREADS)")
    p.add_argument("--loader-batches", type=int, default=100, help="batches per loader-throughput measurement")
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2],
                   help="num_workers of the streaming loader measurements")
    p.add_argument("--aug-iters", type=int, default=200, help="batches per augmentation measurement")
    p.add_argument("--rss", action="store_true", help="also run the synthetic STL-10-sized peak-RSS probe (slow)")
    p.add_argument("--rss-images", type=int, default=100_000, help="images of the synthetic set")
    p.add_argument("--profile", action="store_true",
                   help="also profile one Trainer run per case (cProfile): ms per step of its pieces, checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    p.add_argument("--child", nargs=3, metavar=("JOB", "DIR", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.labels_per_class, args.log_every, args.windows, args.reps = 16, 10, 2, 2, 1
        args.cases, args.loader_batches, args.aug_iters, args.rss_images = ["sc_mnist/supervised"], 5, 5, 64
        args.loader_workers = [0]
    return args


# -- the limit and the Trainer ---------------------------------------------------------------------------------
def train_fields(case: str, args: argparse.Namespace, *, path: str, steps: int) -> dict[str, Any]:
    """TrainConfig fields of a training run of ``case`` on data path ``path``, bounded by ``steps``: no
    evaluation, no step checkpoints, a log line every ``--log-every`` steps."""
    model, mode = case.split("/")
    return dict(
        data=args.data, **MODELS[model], mode=mode, batch_size=args.batch_size, unlabeled_ratio=args.unlabeled_ratio,
        labels_per_class=args.labels_per_class if mode == "joint" else None, epochs=1, max_steps=steps,
        data_path=path, seed=args.seed, split_seed=args.seed, checkpoint_every=None, log_every=args.log_every,
        report_to="none", progress=False, eval_every=harness.BIG, eval_test=False,
    )


class Limit:
    """The model's own speed: the Trainer's network and SGD step on pre-made tensors (no data path at all)."""

    def __init__(self, cfg: TrainConfig) -> None:
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.backbone, num_classes=10, in_chans=cfg.channels, **cfg.model_kwargs)
        model = (build_sc_model(cfg, backbone) if cfg.uses_sc else backbone).train()
        side = cfg.image_size or 28
        g = torch.Generator().manual_seed(0)
        n = cfg.batch_size + (cfg.unlabeled_batch_size if cfg.uses_sc else 0)  # joint: labelled + unlabelled
        x = torch.randn(n, cfg.channels, side, side, generator=g)
        y = torch.randint(0, 10, (cfg.batch_size,), generator=g)

        def loss() -> torch.Tensor:
            if not cfg.uses_sc:
                return F.cross_entropy(model(x), y)
            out = model(x)
            return F.cross_entropy(out.logits[: len(y)], y) + cfg.sc_weight * out.sc_loss

        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_for(cfg.mode), momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        self.model, self.x, self.y, self.images_per_step = model, x, y, n
        self.step = training_step(loss, opt)

    def img_per_s(self, warmup: int, steps: int) -> float:
        for _ in range(warmup):
            self.step()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return self.images_per_step * steps / (time.perf_counter() - start)


def train_logged(fields: dict[str, Any], profile: cProfile.Profile | None = None) -> list[dict[str, Any]]:
    """One Trainer run of ``fields`` in a temporary run dir (under ``profile`` if given): its log windows."""
    with tempfile.TemporaryDirectory(prefix="sclearn-datapath-") as out:
        with profile or contextlib.nullcontext():
            harness.train_once(fields, Path(out, "run"), resume=False)
        lines = Path(out, "run", "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "img_per_s" in r]


def trainer_img_per_s(case: str, args: argparse.Namespace, path: str) -> float:
    """Training img/s from the Trainer's own metrics (``img_per_s``) over the measured log windows."""
    warm = args.warmup_windows * args.log_every
    windows = train_logged(train_fields(case, args, path=path, steps=warm + args.windows * args.log_every))
    if len({w["epoch"] for w in windows}) > 1:
        raise ValueError("the run is longer than an epoch: an epoch end would fall inside the measured windows; "
                         "lower --windows or --log-every")
    rates = [w["img_per_s"] for w in windows if w["step"] > warm]
    if len(rates) != args.windows:
        raise RuntimeError(f"expected {args.windows} measured log windows, found {len(rates)}")
    # Equal images per window: the overall rate is the harmonic mean of the windows' rates.
    return len(rates) / sum(1.0 / r for r in rates)


def ratio_runs(case: str, args: argparse.Namespace) -> dict[str, Any]:
    limit = Limit(TrainConfig(**train_fields(case, args, path="memory", steps=1)))
    steps = args.windows * args.log_every
    limits: list[float] = []
    trainer: dict[str, list[float]] = {p: [] for p in PATHS}
    ratios: dict[str, list[float]] = {p: [] for p in PATHS}
    contention = Contention()
    for rep in range(args.reps):
        with contention.measure():
            before = limit.img_per_s(args.log_every, steps)
            got = {path: trainer_img_per_s(case, args, path) for path in rotated(PATHS, rep)}
            after = limit.img_per_s(2, steps)
        limits += [before, after]
        for path in PATHS:
            trainer[path].append(got[path])
            ratios[path].append(got[path] / ((before + after) / 2))
        print(f"[{case} rep {rep}] limit {before:.0f}/{after:.0f} img/s, " + ", ".join(
            f"{p} {got[p]:.0f} img/s ({ratios[p][-1]:.3f})" for p in PATHS), file=sys.stderr, flush=True)
    return {"case": case, "images_per_step": limit.images_per_step, "limit_img_per_s": summarize(limits, 4),
            "trainer_img_per_s": {p: summarize(v, 4) for p, v in trainer.items()},
            "ratio": {p: summarize(v, 4) for p, v in ratios.items()}, **contention.summary()}


# -- loaders and augmentation ----------------------------------------------------------------------------------
def loader_img_per_s(loader: Any, batches: int) -> float:
    """img/s of ``batches`` batches of ``loader``, after two."""
    it = iter(loader)
    for _ in range(2):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)[1])
    return n / (time.perf_counter() - start)


def loader_throughput(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{model: {loader: img/s}} of the training loader alone, for each model's inputs: memory, stream (per
    worker count), and the per-image pipeline of before the memory path."""
    splits = sc_data.semi_supervised_splits(sc_data.load_image_dataset(args.data), seed=args.seed)
    out = {}
    for model in dict.fromkeys(case.split("/")[0] for case in args.cases):
        fields = train_fields(f"{model}/supervised", args, path="memory", steps=1)
        variants: dict[str, Any] = {}
        for path, workers in [("memory", 0), *(("stream", w) for w in args.loader_workers)]:
            cfg = TrainConfig(**{**fields, "data_path": path, "num_workers": workers})
            variants[path + (f", {workers} workers" if path == "stream" else "")] = sc_data.build_loaders(
                cfg, splits).train["labeled"]
        mean, std = sc_data.normalization_stats(splits, channels=cfg.channels)
        tf = sc_data.build_transform(train=True, translate=cfg.translate, hflip=cfg.hflip, image_size=cfg.image_size,
                                     mean=mean, std=std, channels=cfg.channels)
        variants["per-image build_transform (before)"] = sc_data.make_loader(
            sc_data.with_image_transform(splits.labeled, tf), cfg.batch_size, shuffle=True)
        out[model] = interleaved({name: functools.partial(loader_img_per_s, loader, args.loader_batches)
                                  for name, loader in variants.items()}, args.reps)
    return out


def augmentation_cost(args: argparse.Namespace) -> dict[str, Any]:
    """ms per batch of the batched augmentation (uint8 -> normalised float), ours and kornia's."""
    try:
        import kornia
    except ImportError:
        kornia = None

    def ms_per_batch(fn: Any) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(args.aug_iters):
            fn()
        return (time.perf_counter() - start) / args.aug_iters * 1e3

    out: dict[str, Any] = {"kornia": None if kornia is None else kornia.__version__}
    for shape in ((args.batch_size, 1, 28, 28), (args.batch_size, 3, 32, 32), (512, 3, 32, 32)):
        images, c = torch.randint(0, 256, shape, dtype=torch.uint8), shape[1]
        ours = sc_data.BatchAugment(mean=[0.5] * c, std=[0.25] * c, channels=c, translate=2, hflip=True)
        fns = {"BatchAugment": functools.partial(ours, images)}
        if kornia is not None:
            aug = kornia.augmentation
            seq = aug.AugmentationSequential(aug.RandomCrop(shape[2:], padding=2, padding_mode="reflect"),
                                             aug.RandomHorizontalFlip(),
                                             aug.Normalize(torch.full((c,), 0.5), torch.full((c,), 0.25)))
            fns["kornia"] = lambda seq=seq, images=images: seq(images.float().div_(255))
        out[" x ".join(map(str, shape))] = interleaved({k: functools.partial(ms_per_batch, f) for k, f in fns.items()},
                                                       args.reps)
    return out


# -- start-up and RSS, each in a fresh process -----------------------------------------------------------------
def _memory_status() -> dict[str, float]:
    """Peak, anonymous and file-backed resident memory of this process, in GiB (Linux)."""
    status = Path("/proc/self/status")
    fields: dict[str, float] = {}
    for line in (status.read_text().splitlines() if status.is_file() else []):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 2**20, 3)
    return fields


def child(job: str, work: Path, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs in its own process (``--child``): one start-up or one RSS measurement; returns its JSON."""
    t0 = time.perf_counter()
    if job == "startup":
        dsd = sc_data.load_image_dataset(args.data)
        t1 = time.perf_counter()
        splits = sc_data.semi_supervised_splits(dsd, seed=args.seed)
        cfg = TrainConfig(**train_fields("sc_mnist/supervised", args, path=path, steps=1))
        built = sc_data.build_loaders(cfg, splits)
        return {"load_s": t1 - t0, "loaders_s": time.perf_counter() - t1, "path": built.path}
    ds = sc_data.load_image_dataset(f"parquet:{work / 'stl'}")["train"]
    t1 = time.perf_counter()
    stack = sc_data.decode_split(ds, image_size=96, channels=3)
    t2 = time.perf_counter()
    out = {"load_s": t1 - t0, "decode_s": t2 - t1, "bytes": stack.nbytes}
    if job == "rss-epoch":  # read every image once, in shuffled batches, as an epoch does
        perm = torch.randperm(len(stack))
        for start in range(0, len(stack), 256):
            stack.gather(perm[start : start + 256])
        out["epoch_s"] = time.perf_counter() - t2
    return {**out, **_memory_status()}


def run_child(job: str, work: Path, path: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "SCLEARN_CACHE": str(work / "sclearn"),
           "HF_DATASETS_CACHE": str(work / "hf"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    argv = [sys.executable, __file__, "--data", args.data, "--child", job, str(work), path]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in PATHS:
        with tempfile.TemporaryDirectory(prefix="sclearn-startup-") as work:
            out[path] = {run: run_child("startup", Path(work), path, args) for run in ("first", "second")}
    return out


def synthetic_stl(root: Path, n: int, seed: int = 0) -> None:
    """``root/stl/train-*.parquet``: ``n`` smooth 96 x 96 RGB PNGs (cheap to encode, like photos in size)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96]
    (root / "stl").mkdir(parents=True)
    per_file = 10_000
    for f, start in enumerate(range(0, n, per_file)):
        blobs = []
        for _ in range(start, min(n, start + per_file)):
            a, b, c = rng.integers(0, 256, 3)
            img = np.stack([(xx * 2 + a) % 256, (yy * 2 + b) % 256, ((xx + yy) + c) % 256], -1).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            blobs.append({"bytes": buf.getvalue(), "path": None})
        labels = rng.integers(0, 10, len(blobs))
        pq.write_table(pa.table({"image": pa.array(blobs), "label": pa.array(labels)}),
                       root / "stl" / f"train-{f:05d}-of-99999.parquet")


def rss_probe(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sclearn-rss-") as work:
        start = time.perf_counter()
        synthetic_stl(Path(work), args.rss_images, args.seed)
        made = time.perf_counter() - start
        first = run_child("rss-decode", Path(work), "memory", args)
        second = run_child("rss-epoch", Path(work), "memory", args)
    return {"images": args.rss_images, "make_pngs_s": made, "first_run": first, "second_run": second}


# -- profile of a Trainer run ----------------------------------------------------------------------------------
# (label, file suffix, function): public functions of the libraries that a Trainer step runs.
PIECES: list[tuple[str, str, str]] = [
    ("DataLoader __next__ (batching)", "torch/utils/data/dataloader.py", "__next__"),
    ("BatchAugment (device augmentation)", "sclearn/data/augment.py", "__call__"),
    ("Accelerator.backward", "accelerate/accelerator.py", "backward"),
    ("AcceleratedOptimizer.step", "accelerate/optimizer.py", "step"),
    ("Accelerator.save_state (checkpoint)", "accelerate/accelerator.py", "save_state"),
]


STEP_LIBRARIES = ("torch", "accelerate", "sclearn")  # in a function's file, or a built-in's name
Profile = dict[tuple[str, str], tuple[int, float, float]]  # (file, function) -> calls, own s, cumulative s


def profiled_run(case: str, args: argparse.Namespace, steps: int) -> Profile:
    """One Trainer run of ``case`` (memory path) of ``steps`` steps under cProfile."""
    prof = cProfile.Profile()
    train_logged(train_fields(case, args, path="memory", steps=steps), prof)
    out: Profile = {}
    for (file, _, name), (_, calls, own, cumulative, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        key = (file.replace(os.sep, "/"), name)
        c, o, k = out.get(key, (0, 0.0, 0.0))
        out[key] = (c + calls, o + own, k + cumulative)
    return out


def profile_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per training step, from two profiled runs: the run of all the steps minus the run of the warm-up steps
    alone, over the difference in steps. Set-up, the checkpoint at the end, export and figures cancel."""
    short = args.warmup_windows * args.log_every
    steps = short + args.windows * args.log_every
    base, run = profiled_run(case, args, short), profiled_run(case, args, steps)

    def per_step(key: tuple[str, str], i: int) -> float:
        return (run[key][i] - base.get(key, (0, 0.0, 0.0))[i]) / (steps - short)

    pieces = {}
    for label, suffix, func in PIECES:
        keys = [k for k in run if k[1] == func and k[0].endswith(suffix)]
        calls = sum(run[k][0] for k in keys)
        if calls:
            calls_per_step = sum(per_step(k, 0) for k in keys)
            pieces[label] = {"calls_per_step": round(calls_per_step, 2),  # the checkpoint: 0 (once per run)
                             "ms_per_step": round(1e3 * sum(per_step(k, 2) for k in keys), 3)
                             if calls_per_step > 0.5 else None,
                             "ms_per_call": round(1e3 * sum(run[k][2] for k in keys) / calls, 3)}
    # Functions of the step's libraries called at every step: the figures, drawn from a longer log, would not
    # cancel.
    top = sorted((k for k in run if per_step(k, 0) >= 1 and any(lib in "/".join(k) for lib in STEP_LIBRARIES)),
                 key=lambda k: -per_step(k, 1))[:12]
    return {"case": case, "steps": [short, steps], "pieces": pieces,
            "top_own_time": [{"function": f"{Path(k[0]).name}:{k[1]}", "ms_per_step": round(1e3 * per_step(k, 1), 3)}
                             for k in top]}


# -- report ----------------------------------------------------------------------------------------------------
def fmt(stats: dict[str, float] | None, digits: int = 0) -> str:
    return "—" if stats is None else mean_pm_std(stats, digits)


def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    limits = {r["case"]: r["limit_img_per_s"]["mean"] for r in report["ratios"]}

    def over_limits(model: str, img_per_s: float) -> str:
        return ", ".join(f"{c.split('/')[1]} {img_per_s / v:.1f}" for c, v in limits.items() if c.startswith(model + "/"))

    lines = [
        f"- {cfg['threads']} torch thread; batch {cfg['batch_size']} (joint: + "
        f"{int(cfg['batch_size'] * cfg['unlabeled_ratio'])} unlabelled); {cfg['reps']} repetitions of limit / "
        f"memory / stream / limit (the path order rotates); {cfg['windows']} log windows of {cfg['log_every']} "
        f"steps measured per run after {cfg['warmup_windows']} left out.",
        "- Ratio = the Trainer's training img/s (from its `metrics.jsonl`) / the limit (the same network's forward, "
        "backward and SGD step on pre-made tensors, no data). Mean ± std over repetitions. Foreign CPU: the share "
        "of the machine other processes took meanwhile.",
        "",
        markdown_table(
            ["case", "images/step", "limit img/s", "memory img/s", "**memory ratio**", "stream img/s", "stream ratio",
             "foreign CPU"],
            [[r["case"], r["images_per_step"], fmt(r["limit_img_per_s"]), fmt(r["trainer_img_per_s"]["memory"]),
              f"**{fmt(r['ratio']['memory'], 3)}**", fmt(r["trainer_img_per_s"]["stream"]), fmt(r["ratio"]["stream"], 3),
              fmt(r["foreign_cpu_fraction"], 2)] for r in report["ratios"]],
        ),
        "",
        f"Loader alone (batch {cfg['batch_size']}, {cfg['loader_batches']} batches), img/s, and over each case's limit "
        "img/s (the loader must outrun the model):",
        "",
        markdown_table(["inputs of", "loader", "img/s", "÷ limit"],
                       [[model, k, fmt(v), over_limits(model, v["mean"])]
                        for model, loaders in report["loaders"].items() for k, v in loaders.items()]),
        "",
        f"One batch's augmentation (uint8 -> translate ±2 + flip + normalise, ms; kornia {report['augment']['kornia']}):",
        "",
        markdown_table(["batch", *next(v for k, v in report["augment"].items() if k != "kornia")],
                       [[label, *[fmt(s, 3) for s in v.values()]] for label, v in report["augment"].items()
                        if label != "kornia"]),
        "",
        "Start-up of `load_image_dataset` + `semi_supervised_splits` + `build_loaders` on the full data, in a fresh "
        "process (first run: empty caches; second run: the same caches), seconds:",
        "",
        markdown_table(["path", "first: load", "first: loaders", "second: load", "second: loaders"],
                       [[p, *(f"{v[run][k]:.1f}" for run in ("first", "second") for k in ("load_s", "loaders_s"))]
                        for p, v in report["startup"].items()]),
    ]
    if report.get("rss"):
        r = report["rss"]
        f, s = r["first_run"], r["second_run"]
        lines += [
            "",
            f"Synthetic STL-10-sized set ({r['images']} x 3 x 96 x 96 PNGs, {f['bytes'] / 2**30:.2f} GiB decoded), "
            "memory path, GiB of resident memory (VmHWM peak; RssAnon private; RssFile the memory-mapped cache, "
            "shared by every process of the machine through the page cache):",
            "",
            markdown_table(["run", "seconds", "peak (VmHWM)", "RssAnon", "RssFile"], [
                ["first: decode and cache", f"{f['decode_s']:.0f}", f["VmHWM"], f["RssAnon"], f["RssFile"]],
                ["second: read the cache + one epoch of batches", f"{s['decode_s']:.1f} + {s['epoch_s']:.1f}",
                 s["VmHWM"], s["RssAnon"], s["RssFile"]],
            ]),
        ]
    for p in report.get("profile") or []:
        lines += ["", f"Profile of the Trainer, {p['case']}, memory path (cProfile, inflated by the profiler): per "
                  f"step = (run of {p['steps'][1]} steps - run of {p['steps'][0]}) / the difference, so set-up, "
                  "export and figures cancel; ms/call over every call (the checkpoint: one save per run); own time: "
                  "the functions of torch, accelerate and sclearn called at every step that take the most time themselves:", "",
                  markdown_table(["piece", "calls/step", "ms/step", "ms/call"],
                                 [[k, v["calls_per_step"], v["ms_per_step"] or "—", v["ms_per_call"]]
                                  for k, v in p["pieces"].items()]
                                 + [[f"own time: `{t['function']}`", "", t["ms_per_step"], ""]
                                    for t in p["top_own_time"][:6]])]
    return harness.results_block(report, "Data path: Trainer img/s over the model's own limit, memory vs stream", lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.use_threads(args.threads)
    if args.child:
        job, work, path = args.child
        print(json.dumps(child(job, Path(work), path, args)))
        return 0
    import datasets

    datasets.disable_progress_bars()
    report = harness.report_header("data_path", args, {k: v for k, v in vars(args).items() if k != "child"})
    report["ratios"] = [ratio_runs(case, args) for case in args.cases]
    report["loaders"] = loader_throughput(args)
    report["augment"] = augmentation_cost(args)
    report["startup"] = startup(args)
    report["rss"] = rss_probe(args) if args.rss or args.smoke else None
    report["profile"] = [profile_case(case, args) for case in args.cases] if args.profile or args.smoke else None
    harness.publish(report, args, "data_path", markdown_block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
