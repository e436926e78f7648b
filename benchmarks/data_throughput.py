"""Data throughput: the training loader's img/s against the img/s the model consumes (target: loader >= 3x).

- Loader: the Trainer's training loader (``_harness.loader``: the Trainer's normalisation,
  ``build_transform(train=True, translate=2, hflip=True)``, ``make_loader(shuffle=True, num_workers=N)`` and
  ``resumable_loader``) of the labelled split of ``semi_supervised_splits`` (all labels). Timed over
  ``--batches`` batches after ``--warmup`` batches (so worker start-up is excluded; it is reported on its
  own as ``first_batch_s``). Each image is PNG-decoded, converted, augmented and normalised.
- Model: one hand-written training step (``_harness.BareStep``: forward, backward, SGD step) on a real batch,
  ``--steps`` steps after ``--warmup``. ``supervised``: CE on ``batch`` images; ``joint``: ``MultiLayerSC`` over
  ``batch`` labelled + ``2 * batch`` unlabelled images, CE + SC (as the trainer's joint step). img/s counts
  every image the step consumes, so the ratio says whether the loader keeps up whatever the mode.

Every repetition measures every loader setting and every model mode once, in a rotated order; the ratio
``loader img/s / model img/s`` is paired within the repetition and the median over repetitions reported.

Usage::

    python benchmarks/data_throughput.py                               # sc_mnist + resnet18_32, workers 0 and 2
    python benchmarks/data_throughput.py --reps 5 --write-results
    python benchmarks/data_throughput.py --smoke --data idx:tests/fixture
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` and `_harness` when run as a script

import _harness as harness
from common import Contention, markdown_table, mean_pm_std, rotated, summarize

from sclearn import TrainConfig
from sclearn import data as sc_data

CASES = harness.MODEL_CASES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser("Training-loader img/s vs model img/s (fwd+bwd+step); prints one JSON object.",
                       smoke="tiny run for CI: batch 16, 3 batches/steps, 1 warm-up, 1 rep (use a small --data)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                   help=harness.describe_cases(CASES))
    p.add_argument("--modes", nargs="+", choices=["supervised", "joint"], default=["supervised", "joint"],
                   help="model steps to time (joint: batch labelled + 2*batch unlabelled images, CE + SC)")
    p.add_argument("--num-workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    p.add_argument("--batch-size", type=int, default=128, help="images per loader batch (labelled batch)")
    p.add_argument("--batches", type=int, default=30, help="measured loader batches per repetition")
    p.add_argument("--steps", type=int, default=10, help="measured model steps per repetition")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured batches / steps before each measurement")
    p.add_argument("--reps", type=int, default=3, help="repetitions (each measures every setting once)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for the model (loader workers are single-threaded)")
    p.add_argument("--translate", type=int, default=2, help="augmentation: max shift in pixels")
    p.add_argument("--no-hflip", action="store_true", help="augmentation: no horizontal flips")
    p.add_argument("--seed", type=int, default=0, help="seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.batches, args.steps, args.warmup, args.reps = 16, 3, 3, 1, 1
    return args


def train_config(case: str, args: argparse.Namespace, mode: str = "supervised") -> TrainConfig:
    return TrainConfig(data=args.data, **CASES[case], mode=mode, translate=args.translate, hflip=not args.no_hflip,
                       batch_size=args.batch_size, seed=args.seed)


def time_loader(loader, args: argparse.Namespace, epoch: int) -> dict[str, float]:
    need = args.warmup + args.batches
    if len(loader) < need:
        raise ValueError(f"the loader has {len(loader)} batches per epoch, fewer than {need}; lower --batches")
    loader.batch_sampler.set_position(epoch, 0)  # a different shuffle each repetition
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        next(it)
    images, t = 0, time.perf_counter()
    for _ in range(args.batches):
        x, _y = next(it)
        images += x.shape[0]
    elapsed = time.perf_counter() - t
    del it  # persistent workers stay alive with the loader
    return {"img_per_s": images / elapsed, "first_batch_s": first}


def time_model(step: harness.BareStep, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
               args: argparse.Namespace) -> dict[str, float]:
    """img/s and ms/step of ``step`` on one fixed real batch (labelled images, labels, unlabelled images)."""
    for _ in range(args.warmup):
        step(*batch)
    t = time.perf_counter()
    images = sum(step(*batch) for _ in range(args.steps))
    elapsed = time.perf_counter() - t
    return {"img_per_s": images / elapsed, "ms_per_step": 1e3 * elapsed / args.steps}


def measure_case(name: str, args: argparse.Namespace, dsd) -> dict[str, Any]:
    splits = sc_data.semi_supervised_splits(dsd, labels_per_class=None, seed=args.seed)
    cfg = train_config(name, args)
    loaders = {w: harness.loader(cfg, splits, splits.labeled, train=True, resumable=True, num_workers=w)
               for w in args.num_workers}
    x, y = next(iter(loaders[args.num_workers[0]]))
    unlabeled = x.repeat(2, 1, 1, 1)[torch.randperm(2 * len(x))]  # a joint step's 2 x batch unlabelled images
    batches = {m: (x, y, unlabeled if m == "joint" else None) for m in args.modes}
    steps = {m: harness.BareStep(train_config(name, args, m), splits.num_classes) for m in args.modes}
    kinds = [("loader", w) for w in args.num_workers] + [("model", m) for m in args.modes]
    raw: dict[str, list[dict[str, float]]] = {f"{k}:{v}": [] for k, v in kinds}
    contention = Contention()
    for rep in range(args.reps):
        with contention.measure():
            for kind, v in rotated(kinds, rep):
                print(f"[data_throughput] {name} rep {rep + 1}/{args.reps}: {kind} {v}", file=sys.stderr)
                r = (time_loader(loaders[v], args, epoch=rep) if kind == "loader"
                     else time_model(steps[v], batches[v], args))
                raw[f"{kind}:{v}"].append(r)
    for loader in loaders.values():  # shut persistent workers down
        loader._iterator = None
    loader_stats = {str(w): {"img_per_s": summarize([r["img_per_s"] for r in raw[f"loader:{w}"]], 1),
                             "first_batch_s": summarize([r["first_batch_s"] for r in raw[f"loader:{w}"]], 3)}
                    for w in args.num_workers}
    model_stats = {m: {"img_per_s": summarize([r["img_per_s"] for r in raw[f"model:{m}"]], 1),
                       "ms_per_step": summarize([r["ms_per_step"] for r in raw[f"model:{m}"]], 2),
                       "images_per_step": len(x) * (3 if m == "joint" else 1)} for m in args.modes}
    ratios = {f"workers{w}/{m}": summarize([lo["img_per_s"] / mo["img_per_s"]
                                            for lo, mo in zip(raw[f"loader:{w}"], raw[f"model:{m}"])], 2)
              for w in args.num_workers for m in args.modes}
    return {"case": name, "backbone": cfg.backbone, "channels": cfg.channels,
            "image_size": cfg.image_size or int(x.shape[-1]), "loader": loader_stats, "model": model_stats,
            "ratio_loader_over_model": ratios, **contention.summary()}


def markdown_block(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = []
    for r in report["results"]:
        for key, ratio in r["ratio_loader_over_model"].items():
            w, mode = key.split("/")
            w = w.removeprefix("workers")
            lo, mo = r["loader"][w]["img_per_s"], r["model"][mode]["img_per_s"]
            rows.append([f"{r['case']} ({r['channels']}×{r['image_size']}²)", w, mode,
                         f"{lo['median']:.0f}", f"{mo['median']:.0f}", f"**{ratio['median']:.2f}**",
                         mean_pm_std(ratio, 2), "yes" if ratio["median"] >= 3 else "**no**",
                         f"{r['foreign_cpu_fraction']['median']:.0%}" if r["foreign_cpu_fraction"] else "?"])
    return harness.results_block(report, "Data throughput: training loader img/s vs model img/s", [
        (f"- Loader = the trainer's (make_loader + resumable_loader, PNG decode + translate {cfg['translate']} + "
         f"{'no flip' if cfg['no_hflip'] else 'hflip'} + normalise), batch {cfg['batch_size']}, {cfg['batches']} "
         f"batches after {cfg['warmup']}; model = fwd+bwd+SGD step, {cfg['steps']} steps after {cfg['warmup']}, "
         f"{cfg['threads']} torch thread(s); {cfg['reps']} repetitions, medians. Target: ratio >= 3."),
        "",
        markdown_table(["case", "workers", "model mode", "loader img/s", "model img/s", "ratio (median)",
                        "ratio mean ± std", ">= 3", "foreign CPU"], rows),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.use_threads(args.threads)
    report = harness.report_header("data_throughput", args)
    with contextlib.redirect_stdout(sys.stderr):
        dsd = sc_data.load_image_dataset(args.data)
        report["results"] = [measure_case(name, args, dsd) for name in args.cases]
    harness.publish(report, args, "data_throughput", markdown_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
