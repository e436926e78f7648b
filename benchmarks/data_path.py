"""The data path, as a user waits for it: Trainer training img/s over the limit, on the memory and stream paths.

- **Ratio** (the headline): the Trainer's training img/s, read from its own ``metrics.jsonl``, divided by the
  *limit*: the same model's forward, backward and SGD step on pre-made in-memory tensors of the same shape,
  in the same process and thread count, with no data at all. Each repetition runs limit, trainer on one path,
  trainer on the other, limit (the path order alternates), so both sides of a ratio see the same machine.
  Target on the memory path: >= 0.95.
- **Loader img/s** of each path: ``build_loaders(...).train["labeled"]`` iterated alone (decode or index,
  transfer, batched augmentation, normalisation), and the old per-image pipeline
  (``with_image_transform(ds, build_transform(train=True))``) for reference.
- **Augmentation** of one batch: ``BatchAugment`` against ``kornia.augmentation`` (RandomCrop with reflect
  padding + RandomHorizontalFlip + Normalize) when kornia is importable (it is not a dependency).
- **Start-up**: ``load_image_dataset`` + ``semi_supervised_splits`` + ``build_loaders`` in a fresh process with
  empty caches (the first run: IDX parsing, and the memory path's decoding), then again (a second run).
- **Peak RSS** (``--rss``): a synthetic STL-10-sized set (100k x 3 x 96 x 96 PNGs) decoded by the memory path
  in one process, then read back and iterated for one epoch in another: peak, anonymous and file-backed RSS.
  File-backed pages are the memory-mapped cache, shared through the page cache by every process.

One torch thread throughout (``--threads``); the machine's load and the CPU share other processes took are
reported with every number, as this machine is shared.

Usage::

    python benchmarks/data_path.py --reps 3 --write-results            # about 40 min on 2 busy cores
    python benchmarks/data_path.py --rss --write-results               # + the STL-10-sized RSS probe
    python benchmarks/data_path.py --smoke --data idx:tests/fixture    # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` when run as a script

from common import (
    CpuMeter,
    command_line,
    fenced,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    mean_pm_std,
    now_utc,
    print_json,
    summarize,
    uptime,
    write_result_block,
)

DEFAULT_DATA = "idx:/usr/share/datasets/fashion-mnist"
BIG = 10**9
PATHS = ("memory", "stream")
PARTS = ("ratios", "loaders", "augment", "startup", "rss")


@dataclass(frozen=True)
class Case:
    backbone: str
    layers: tuple[str, ...]
    channels: int
    image_size: int | None
    mode: str


CASES: dict[str, Case] = {
    "sc_mnist/supervised": Case("sc_mnist", ("stages.1",), 1, None, "supervised"),
    "sc_mnist/joint": Case("sc_mnist", ("stages.1",), 1, None, "joint"),
    "resnet18_32/supervised": Case("resnet18", ("layer3",), 3, 32, "supervised"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Trainer img/s over the model's own limit on each data path, loader "
                                "img/s, augmentation cost, start-up and peak RSS; prints one JSON object.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="data source for sclearn.data.load_image_dataset")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="model/mode pairs")
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
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:4]),
                   help="what to measure; a run of startup/rss alone writes its own RESULTS.md block, so the two "
                   "halves can run at the same time")
    p.add_argument("--rss", action="store_true", help="also run the synthetic STL-10-sized peak-RSS probe (slow)")
    p.add_argument("--rss-images", type=int, default=100_000, help="images of the synthetic set")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    p.add_argument("--smoke", action="store_true", help="tiny run for CI (use with a small --data)")
    p.add_argument("--write-results", action="store_true", help="write this run's block in benchmarks/RESULTS.md")
    p.add_argument("--child", nargs=3, metavar=("JOB", "DIR", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.labels_per_class, args.log_every, args.windows, args.reps = 16, 10, 2, 2, 1
        args.cases, args.loader_batches, args.aug_iters, args.rss_images = ["sc_mnist/supervised"], 5, 5, 64
        args.loader_workers = [0]
    if args.rss or args.smoke:
        args.parts = sorted({*args.parts, "rss"}, key=PARTS.index)
    return args


def measured(stats_of: list[float]) -> dict[str, float]:
    return summarize(stats_of, digits=4)


# -- the limit and the Trainer ---------------------------------------------------------------------------------
def train_config(case: Case, args: argparse.Namespace, *, path: str, output_dir: str, steps: int):
    from sclearn import TrainConfig

    return TrainConfig(
        data=args.data, backbone=case.backbone, layers=case.layers, channels=case.channels,
        image_size=case.image_size, mode=case.mode, batch_size=args.batch_size, unlabeled_ratio=args.unlabeled_ratio,
        labels_per_class=args.labels_per_class if case.mode == "joint" else None, epochs=1, max_steps=steps,
        data_path=path, seed=args.seed, split_seed=args.seed, output_dir=output_dir, checkpoint_every=None,
        log_every=args.log_every, report_to="none", progress=False, eval_every=BIG, eval_test=False,
    )


class Limit:
    """The model's own speed: forward, backward and SGD on pre-made tensors (no data path at all)."""

    def __init__(self, case: Case, args: argparse.Namespace) -> None:
        from accelerate.utils import set_seed

        from sclearn import MultiLayerSC, SpatialContrastiveLoss
        from sclearn.backbones import build_backbone

        cfg = train_config(case, args, path="memory", output_dir="unused", steps=1)
        set_seed(cfg.seed)
        model: torch.nn.Module = build_backbone(cfg.backbone, num_classes=10, in_chans=cfg.channels)
        side = cfg.image_size or 28
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(cfg.batch_size, cfg.channels, side, side, generator=g)
        self.y = torch.randint(0, 10, (cfg.batch_size,), generator=g)
        self.xu = None
        if case.mode == "joint":
            loss = SpatialContrastiveLoss(cfg.patch_size, distance=cfg.distance, temperature=cfg.temperature,
                                          pool=cfg.pool, num_patches=cfg.num_patches, min_offset=cfg.min_offset)
            model = MultiLayerSC(model, list(cfg.layers), loss={cfg.layers[0]: loss})
            self.xu = torch.randn(cfg.unlabeled_batch_size, cfg.channels, side, side, generator=g)
        self.model = model.train()
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_for(case.mode), momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sc_weight = cfg.sc_weight
        self.images_per_step = cfg.batch_size + (cfg.unlabeled_batch_size if self.xu is not None else 0)

    def step(self) -> None:
        if self.xu is not None:
            out = self.model(torch.cat([self.x, self.xu]))
            loss = F.cross_entropy(out.logits[: self.x.shape[0]], self.y) + self.sc_weight * out.sc_loss
        else:
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def img_per_s(self, warmup: int, steps: int) -> float:
        for _ in range(warmup):
            self.step()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return self.images_per_step * steps / (time.perf_counter() - start)


def trainer_img_per_s(case: Case, args: argparse.Namespace, path: str) -> float:
    """Training img/s from the Trainer's own metrics (``img_per_s``) over the measured log windows."""
    import sclearn.train as sc_train

    warm, windows = args.warmup_windows * args.log_every, args.windows * args.log_every
    with tempfile.TemporaryDirectory(prefix="sclearn-datapath-") as out, contextlib.redirect_stdout(sys.stderr):
        trainer = sc_train.Trainer(train_config(case, args, path=path, output_dir=out, steps=warm + windows))
        if trainer._steps_per_epoch(case.mode) < warm + windows:
            raise ValueError("the run is longer than an epoch: an epoch end would fall inside the measured windows")
        trainer.fit()
        records = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in records if "img_per_s" in r and r["step"] > warm]
    if len(rates) != args.windows:
        raise RuntimeError(f"expected {args.windows} measured log windows, found {len(rates)}")
    # Equal images per window: the overall rate is the harmonic mean of the windows' rates.
    return len(rates) / sum(1.0 / r for r in rates)


def ratio_runs(case_name: str, args: argparse.Namespace) -> dict[str, Any]:
    case = CASES[case_name]
    limit_runs: list[float] = []
    trainer: dict[str, list[float]] = {p: [] for p in PATHS}
    ratios: dict[str, list[float]] = {p: [] for p in PATHS}
    foreign: list[float] = []
    for rep in range(args.reps):
        meter = CpuMeter.start()
        limit = Limit(case, args)
        steps = args.windows * args.log_every
        before = limit.img_per_s(args.log_every, steps)
        got = {}
        for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
            got[path] = trainer_img_per_s(case, args, path)
        after = limit.img_per_s(2, steps)
        lim = (before + after) / 2
        limit_runs += [before, after]
        for path in PATHS:
            trainer[path].append(got[path])
            ratios[path].append(got[path] / lim)
        f = meter.foreign_cpu_fraction()
        if f is not None:
            foreign.append(f)
        print(f"[{case_name} rep {rep}] limit {before:.0f}/{after:.0f} img/s, "
              + ", ".join(f"{p} {got[p]:.0f} img/s ({got[p] / lim:.3f})" for p in PATHS)
              + f", load {load_average()[0]}", file=sys.stderr, flush=True)
    return {"case": case_name, "images_per_step": Limit(case, args).images_per_step,
            "limit_img_per_s": measured(limit_runs), "trainer_img_per_s": {p: measured(v) for p, v in trainer.items()},
            "ratio": {p: measured(v) for p, v in ratios.items()},
            "foreign_cpu_fraction": measured(foreign) if foreign else None}


# -- loaders and augmentation ----------------------------------------------------------------------------------
def loader_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """img/s of the training loader alone: memory, stream (per worker count), and the old per-image pipeline."""
    from sclearn import data as sc_data

    case = CASES["sc_mnist/supervised"]
    dsd = sc_data.load_image_dataset(args.data)
    splits = sc_data.semi_supervised_splits(dsd, seed=args.seed)
    variants: dict[str, Any] = {}
    for path in PATHS:
        for workers in ((0,) if path == "memory" else tuple(args.loader_workers)):
            cfg = train_config(case, args, path=path, output_dir="unused", steps=1)
            cfg.num_workers = workers
            built = sc_data.build_loaders(cfg, splits)
            variants[f"{path}" + (f", {workers} workers" if path == "stream" else "")] = built.train["labeled"]
    mean, std = sc_data.normalization_stats(splits, channels=case.channels)
    tf = sc_data.build_transform(train=True, mean=mean, std=std, channels=case.channels, hflip=True, translate=2)
    variants["per-image build_transform (before)"] = sc_data.make_loader(
        sc_data.with_image_transform(splits.labeled, tf), args.batch_size, shuffle=True)
    out: dict[str, Any] = {}
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.reps):
        for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
            it = iter(variants[name])
            for _ in range(2):
                next(it)
            start = time.perf_counter()
            n = 0
            for _ in range(args.loader_batches):
                n += len(next(it)[1])
            runs[name].append(n / (time.perf_counter() - start))
    for name, v in runs.items():
        out[name] = measured(v)
    return out


def augmentation_cost(args: argparse.Namespace) -> dict[str, Any]:
    """ms per batch of the batched augmentation (uint8 -> normalised float), ours and kornia's."""
    from sclearn.data import BatchAugment

    shapes = {"64 x 1 x 28 x 28": (args.batch_size, 1, 28, 28), "64 x 3 x 32 x 32": (args.batch_size, 3, 32, 32),
              "512 x 3 x 32 x 32": (512, 3, 32, 32)}
    try:
        import kornia.augmentation as K
    except ImportError:
        K = None
    out: dict[str, Any] = {"kornia": None if K is None else __import__("kornia").__version__}
    for label, shape in shapes.items():
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        c = shape[1]
        ours = BatchAugment(mean=[0.5] * c, std=[0.25] * c, channels=c, translate=2, hflip=True)
        fns = {"BatchAugment": lambda ours=ours, images=images: ours(images)}
        if K is not None:
            seq = K.AugmentationSequential(K.RandomCrop(shape[2:], padding=2, padding_mode="reflect"),
                                           K.RandomHorizontalFlip(), K.Normalize(torch.full((c,), 0.5),
                                                                                 torch.full((c,), 0.25)))
            fns["kornia"] = lambda seq=seq, images=images: seq(images.float().div_(255))
        runs: dict[str, list[float]] = {k: [] for k in fns}
        for rep in range(args.reps):
            for name, fn in (fns.items() if rep % 2 == 0 else list(fns.items())[::-1]):
                fn()
                start = time.perf_counter()
                for _ in range(args.aug_iters):
                    fn()
                runs[name].append((time.perf_counter() - start) / args.aug_iters * 1e3)
        out[label] = {name: measured(v) for name, v in runs.items()}
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
    from sclearn import data as sc_data

    t0 = time.perf_counter()
    if job == "startup":
        dsd = sc_data.load_image_dataset(args.data)
        t1 = time.perf_counter()
        splits = sc_data.semi_supervised_splits(dsd, seed=args.seed)
        case = CASES["sc_mnist/supervised"]
        built = sc_data.build_loaders(train_config(case, args, path=path, output_dir="unused", steps=1), splits)
        t2 = time.perf_counter()
        return {"load_s": t1 - t0, "loaders_s": t2 - t1, "path": built.path}
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
            first = run_child("startup", Path(work), path, args)
            second = run_child("startup", Path(work), path, args)
        out[path] = {"first": first, "second": second}
    return out


def synthetic_stl(root: Path, n: int, seed: int = 0) -> None:
    """``root/stl/train-*.parquet``: ``n`` smooth 96 x 96 RGB PNGs (cheap to encode, like photos in size)."""
    import io

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


# -- report ----------------------------------------------------------------------------------------------------
def fmt(stats: dict[str, float] | None, digits: int = 0) -> str:
    return "—" if stats is None else mean_pm_std(stats, digits)


def results_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    title = ("Trainer img/s over the model's own limit, memory vs stream" if report["ratios"] else
             "loaders and batched augmentation" if report["loaders"] or report["augment"] else "start-up and RSS")
    lines = [
        f"## Data path: {title} ({report['date']})",
        "",
        f"`{report['command']}`",
        "",
        f"{machine_line(report['machine'])}; {cfg['threads']} torch thread. Load at start: {report['uptime_start']}; "
        f"at the end: {report['uptime_end']}.",
    ]
    if report["ratios"]:
        lines += [
            "",
            f"Batch {cfg['batch_size']} (joint: + {int(cfg['batch_size'] * cfg['unlabeled_ratio'])} unlabelled); "
            f"{cfg['reps']} repetitions of limit / memory / stream / limit (the path order alternates); "
            f"{cfg['windows']} log windows of {cfg['log_every']} steps measured per run after "
            f"{cfg['warmup_windows']} left out. Ratio = the Trainer's training img/s (from its `metrics.jsonl`) / "
            "the limit (the same model's forward, backward and SGD step on pre-made tensors, no data). Mean ± std "
            "over repetitions. Foreign CPU: the share of the machine other processes took meanwhile.",
            "",
            markdown_table(
                ["case", "images/step", "limit img/s", "memory img/s", "**memory ratio**", "stream img/s",
                 "stream ratio", "foreign CPU"],
                [[r["case"], r["images_per_step"], fmt(r["limit_img_per_s"]), fmt(r["trainer_img_per_s"]["memory"]),
                  f"**{fmt(r['ratio']['memory'], 3)}**", fmt(r["trainer_img_per_s"]["stream"]),
                  fmt(r["ratio"]["stream"], 3), fmt(r["foreign_cpu_fraction"], 2)] for r in report["ratios"]],
            ),
        ]
    if report["loaders"]:
        lines += ["", f"Loader alone (sc_mnist inputs, batch {cfg['batch_size']}, {cfg['loader_batches']} batches, "
                  "img/s):", "", markdown_table(["loader", "img/s"], [[k, fmt(v)] for k, v in report["loaders"].items()])]
    if report["augment"]:
        aug = {k: v for k, v in report["augment"].items() if k != "kornia"}
        lines += ["", f"One batch's augmentation (uint8 -> translate ±2 + flip + normalise, ms per batch; kornia "
                  f"{report['augment']['kornia']}):", "",
                  markdown_table(["batch", *next(iter(aug.values()))],
                                 [[label, *[fmt(s, 3) for s in v.values()]] for label, v in aug.items()])]
    if report["startup"]:
        lines += [
            "",
            "Start-up of `load_image_dataset` + `semi_supervised_splits` + `build_loaders` on the full data, in a "
            "fresh process (first run: empty caches; second run: the same caches), seconds:",
            "",
            markdown_table(["path", "first: load", "first: loaders", "second: load", "second: loaders"],
                           [[p, *(f"{v[run][k]:.1f}" for run in ("first", "second") for k in ("load_s", "loaders_s"))]
                            for p, v in report["startup"].items()]),
        ]
    if report["rss"]:
        r = report["rss"]
        f, s = r["first_run"], r["second_run"]
        lines += [
            "",
            f"Synthetic STL-10-sized set ({r['images']} x 3 x 96 x 96 PNGs, {f['bytes'] / 2**30:.2f} GiB decoded), "
            "memory path, GiB of resident memory (VmHWM: peak; RssAnon: private; RssFile: the memory-mapped cache, "
            "shared by every process of the machine through the page cache):",
            "",
            markdown_table(["run", "seconds", "peak (VmHWM)", "RssAnon", "RssFile"], [
                ["first: decode and cache", f"{f['decode_s']:.0f}", f["VmHWM"], f["RssAnon"], f["RssFile"]],
                ["second: read the cache + one epoch of batches", f"{s['decode_s']:.1f} + {s['epoch_s']:.1f}",
                 s["VmHWM"], s["RssAnon"], s["RssFile"]],
            ]),
        ]
    if report["ratios"]:
        lines += ["", "Raw ratios:", "", fenced(json.dumps(report["ratios"], indent=1), "json")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.child:
        job, work, path = args.child
        print(json.dumps(child(job, Path(work), path, args)))
        return 0
    import datasets

    datasets.disable_progress_bars()
    report: dict[str, Any] = {
        "benchmark": "data_path", "command": command_line(), "date": now_utc(),
        "machine": machine_info(torch.device("cpu")), "uptime_start": uptime(),
        "config": {k: v for k, v in vars(args).items() if k not in ("write_results", "child")},
    }
    parts = set(args.parts)
    report["ratios"] = [ratio_runs(name, args) for name in args.cases] if "ratios" in parts else None
    report["loaders"] = loader_throughput(args) if "loaders" in parts else None
    report["augment"] = augmentation_cost(args) if "augment" in parts else None
    report["startup"] = startup(args) if "startup" in parts else None
    report["rss"] = rss_probe(args) if "rss" in parts else None
    report["uptime_end"] = uptime()
    print_json(report)
    if args.write_results:
        key = "data_path" if parts & {"ratios", "loaders", "augment"} else "data_path_startup"
        write_result_block(key, results_block(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
