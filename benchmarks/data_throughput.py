"""Data throughput: the training loader's img/s against the img/s the model consumes (target: loader >= 3x).

- Loader: built exactly as ``Trainer`` builds its training loader: ``semi_supervised_splits`` (all labels),
  the trainer's normalisation (``dataset_stats``), ``build_transform(train=True, translate=2, hflip=True)``,
  ``with_image_transform``, ``make_loader(shuffle=True, num_workers=N)`` and ``resumable_loader``. Timed over
  ``--batches`` batches after ``--warmup`` batches (so worker start-up is excluded; it is reported on its
  own as ``first_batch_s``). Each image is PNG-decoded, converted, augmented and normalised.
- Model: one training step (forward, backward, SGD step) on a real batch, ``--steps`` steps after
  ``--warmup``. ``supervised``: CE on ``batch`` images; ``joint``: ``MultiLayerSC`` over ``batch`` labelled +
  ``2 * batch`` unlabelled images, CE + SC (as the trainer's joint step). img/s counts every image the step
  consumes, so the ratio says whether the loader keeps up whatever the mode.

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
import json
import os
import subprocess
import sys
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
    write_result_block,
)

DEFAULT_DATA = "idx:/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Case:
    backbone: str
    layer: str
    channels: int
    image_size: int | None


CASES: dict[str, Case] = {
    "sc_mnist": Case("sc_mnist", "stages.1", 1, None),  # 1 x 28 x 28, no resize
    "resnet18_32": Case("resnet18", "layer3", 3, 32),  # grayscale -> RGB, resized to 32 x 32
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training-loader img/s vs model img/s (fwd+bwd+step); prints one JSON object.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="data source for sclearn.data.load_image_dataset")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                   help="; ".join(f"{k} = {c.backbone}, {c.channels} channel(s), size {c.image_size or 'native'}"
                                  for k, c in CASES.items()))
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
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: batch 16, 3 batches/steps, 1 warm-up, 1 rep (use a small --data)")
    p.add_argument("--write-results", action="store_true",
                   help="append (or replace) this run's block in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.batches, args.steps, args.warmup, args.reps = 16, 3, 3, 1, 1
    return args


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(map(str, load_average()))


def trainer_config(case: Case, args: argparse.Namespace):
    from sclearn import TrainConfig

    return TrainConfig(data=args.data, backbone=case.backbone, layers=(case.layer,), channels=case.channels,
                       image_size=case.image_size, translate=args.translate, hflip=not args.no_hflip,
                       batch_size=args.batch_size, seed=args.seed)


def make_train_loader(case: Case, args: argparse.Namespace, splits, num_workers: int):
    """The trainer's training loader (Trainer._make_loaders), labelled split, ``num_workers`` workers."""
    from sclearn import data as sc_data
    from sclearn.batching import resumable_loader

    cfg = trainer_config(case, args)
    mean, std = sc_data.normalization_stats(splits, channels=cfg.channels)
    tf = sc_data.build_transform(train=True, translate=cfg.translate, hflip=cfg.hflip, image_size=cfg.image_size,
                                 mean=mean, std=std, channels=cfg.channels)
    base = sc_data.make_loader(sc_data.with_image_transform(splits.labeled, tf), cfg.batch_size, shuffle=True,
                               num_workers=num_workers, seed=cfg.seed)
    return resumable_loader(base, seed=cfg.seed, drop_last=False)


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


class ModelStep:
    """One training step of the case's model in a mode, on fixed real batches."""

    def __init__(self, case: Case, mode: str, args: argparse.Namespace, batch: torch.Tensor, labels: torch.Tensor,
                 num_classes: int) -> None:
        from sclearn import MultiLayerSC, SpatialContrastiveLoss
        from sclearn.backbones import build_backbone

        torch.manual_seed(args.seed)
        cfg = trainer_config(case, args)
        model: torch.nn.Module = build_backbone(case.backbone, num_classes=num_classes, in_chans=case.channels)
        self.joint = mode == "joint"
        if self.joint:
            loss = SpatialContrastiveLoss(cfg.patch_size, distance=cfg.distance, temperature=cfg.temperature,
                                          pool=cfg.pool, num_patches=cfg.num_patches, min_offset=cfg.min_offset)
            model = MultiLayerSC(model, [case.layer], loss={case.layer: loss})
            unl = batch.repeat(2, 1, 1, 1)[torch.randperm(2 * batch.shape[0])]
            self.x = torch.cat([batch, unl])
        else:
            self.x = batch
        self.y, self.n_lab = labels, batch.shape[0]
        self.model = model.train()
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def __call__(self) -> None:
        if self.joint:
            out = self.model(self.x)
            loss = F.cross_entropy(out.logits[: self.n_lab], self.y) + out.sc_loss
        else:
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, args: argparse.Namespace) -> dict[str, float]:
        for _ in range(args.warmup):
            self()
        t = time.perf_counter()
        for _ in range(args.steps):
            self()
        elapsed = time.perf_counter() - t
        return {"img_per_s": args.steps * self.x.shape[0] / elapsed, "ms_per_step": 1e3 * elapsed / args.steps}


def measure_case(name: str, args: argparse.Namespace, dsd) -> dict[str, Any]:
    from sclearn import data as sc_data

    case = CASES[name]
    splits = sc_data.semi_supervised_splits(dsd, labels_per_class=None, seed=args.seed)
    loaders = {w: make_train_loader(case, args, splits, w) for w in args.num_workers}
    x, y = next(iter(loaders[args.num_workers[0]]))
    steps = {m: ModelStep(case, m, args, x, y, splits.num_classes) for m in args.modes}
    kinds = [("loader", w) for w in args.num_workers] + [("model", m) for m in args.modes]
    raw: dict[str, list[dict[str, float]]] = {f"{k}:{v}": [] for k, v in kinds}
    foreign, loads = [], []
    for rep in range(args.reps):
        order = kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]
        meter = CpuMeter.start()
        for kind, v in order:
            print(f"[data_throughput] {name} rep {rep + 1}/{args.reps}: {kind} {v}", file=sys.stderr)
            r = time_loader(loaders[v], args, epoch=rep) if kind == "loader" else steps[v].time(args)
            raw[f"{kind}:{v}"].append(r)
        f = meter.foreign_cpu_fraction()
        if f is not None:
            foreign.append(f)
        loads.append(load_average()[0])
    for loader in loaders.values():  # shut persistent workers down
        loader._iterator = None
    loader_stats = {str(w): {"img_per_s": summarize([r["img_per_s"] for r in raw[f"loader:{w}"]], 1),
                             "first_batch_s": summarize([r["first_batch_s"] for r in raw[f"loader:{w}"]], 3)}
                    for w in args.num_workers}
    model_stats = {m: {"img_per_s": summarize([r["img_per_s"] for r in raw[f"model:{m}"]], 1),
                       "ms_per_step": summarize([r["ms_per_step"] for r in raw[f"model:{m}"]], 2),
                       "images_per_step": steps[m].x.shape[0]} for m in args.modes}
    ratios = {f"workers{w}/{m}": summarize([lo["img_per_s"] / mo["img_per_s"]
                                            for lo, mo in zip(raw[f"loader:{w}"], raw[f"model:{m}"])], 2)
              for w in args.num_workers for m in args.modes}
    return {"case": name, "backbone": case.backbone, "channels": case.channels,
            "image_size": case.image_size or int(x.shape[-1]), "loader": loader_stats, "model": model_stats,
            "ratio_loader_over_model": ratios, "foreign_cpu_fraction": summarize(foreign, 3) if foreign else None,
            "loadavg_1min": summarize(loads, 2)}


def markdown_block(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
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
    lines = [
        "## Data throughput: training loader img/s vs model img/s" + (" (smoke)" if cfg["smoke"] else ""),
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {machine_line(machine)}",
        f"- Load: `{report['uptime_start']}` at start, `{report['uptime_end']}` at end",
        (f"- Loader = the trainer's (make_loader + resumable_loader, PNG decode + translate {cfg['translate']} + "
        f"{'no flip' if cfg['no_hflip'] else 'hflip'} + normalise), batch {cfg['batch_size']}, {cfg['batches']} "
        f"batches after {cfg['warmup']}; model = fwd+bwd+SGD step, {cfg['steps']} steps after {cfg['warmup']}, "
        f"{cfg['threads']} torch thread(s); {cfg['reps']} repetitions, medians. Target: ratio >= 3."),
        "",
        markdown_table(["case", "workers", "model mode", "loader img/s", "model img/s", "ratio (median)",
                        "ratio mean ± std", ">= 3", "foreign CPU"], rows),
        "",
        "Config:",
        "",
        fenced(json.dumps({k: v for k, v in cfg.items()}, indent=1), "json"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    from sclearn import data as sc_data

    report: dict[str, Any] = {
        "benchmark": "data_throughput",
        "command": command_line(),
        "date": now_utc(),
        "machine": machine_info(torch.device("cpu")),
        "uptime_start": uptime(),
        "config": {k: v for k, v in vars(args).items() if k != "write_results"},
        "results": [],
    }
    with contextlib.redirect_stdout(sys.stderr):
        dsd = sc_data.load_image_dataset(args.data)
        for name in args.cases:
            report["results"].append(measure_case(name, args, dsd))
    report["uptime_end"] = uptime()
    print_json(report)
    if args.write_results:
        write_result_block("data_throughput" + ("-smoke" if args.smoke else ""), markdown_block(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
