"""Probe the representation of any sclearn run, checkpoint or exported backbone.

    python -m sclearn.probe runs/cifar10_two_stage --layer stages.1
    python -m sclearn.probe runs/x/checkpoints/ckpt-000003-step-900 --random-baseline

Trains a linear probe (multinomial logistic regression on standardised features) and a weighted kNN probe on
frozen features of the labelled split, and scores them on the test split. ``--random-baseline`` also probes
the same architecture at its random initialisation (same seed), which is what SC features should beat.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from . import data as sc_data
from .backbones import build_backbone, load_backbone_weights
from .cli import FlagParser, cli_errors
from .evaluation import extract_features, knn_probe, linear_probe
from .export import PROBE_FILE
from .rundir import read_run_config, run_dir_of


def probe_checkpoint(source: str | Path, *, layer: str | None = None, pool: int = 2, k: int = 20,
                     data: str | None = None, random_baseline: bool = False,
                     max_train: int | None = None) -> dict[str, Any]:
    """Linear and kNN probes of a run / checkpoint / exported backbone on its own data splits.

    Args:
        source: A run dir, a checkpoint dir inside it, or ``backbone.safetensors`` inside it.
        layer: The layer whose map is probed (2x2 average-pooled, flattened). Default: the run's first SC
            layer, else the backbone's globally pooled features.
        pool: Grid side of the pooled map.
        k: Neighbours of the kNN probe.
        data: Override the run's data source (e.g. a local copy).
        random_baseline: Also probe the randomly initialised net of the same architecture and seed.
        max_train: Cap the labelled images used to fit the probes.

    Returns:
        ``{"linear_top1", "knn_top1", "feature_dim", ...}`` plus ``random_*`` keys with ``random_baseline``.
    """
    for name, value in (("k", k), ("pool", pool), ("max_train", max_train)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r}: give an integer >= 1")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: give a run dir, a checkpoint dir or a backbone "
                                ".safetensors of an sclearn run")
    run_dir = run_dir_of(source if source.is_dir() else source.parent)
    if run_dir is None:
        raise FileNotFoundError(f"no config.json in {source} or its run dir: is it an sclearn run or checkpoint?")
    cfg = read_run_config(run_dir / "config.json")
    dsd = sc_data.load_image_dataset(data or cfg.data)
    indices = run_dir / "split_indices.json"
    splits = sc_data.semi_supervised_splits(dsd, protocol=cfg.protocol, labels_per_class=cfg.labels_per_class,
                                            val_per_class=cfg.val_per_class, seed=cfg.split_seed,
                                            train_split=cfg.train_split, test_split=cfg.test_split,
                                            indices_file=str(indices) if indices.is_file() else None)
    labeled = splits.labeled if max_train is None else splits.labeled.select(range(min(max_train, len(splits.labeled))))
    mean, std = sc_data.normalization_stats(splits, channels=cfg.channels)  # what the run trained on
    tf = sc_data.build_transform(train=False, image_size=cfg.image_size, mean=mean, std=std, channels=cfg.channels)
    loaders = {name: sc_data.make_loader(sc_data.with_image_transform(ds, tf), 256, shuffle=False)
               for name, ds in (("train", labeled), ("test", splits.test))}
    layer = layer or (cfg.layers[0] if cfg.layers else None)

    def probe(net: torch.nn.Module) -> dict[str, float]:
        ftr, ytr = extract_features(net, loaders["train"], layer=layer, pool=pool)
        fte, yte = extract_features(net, loaders["test"], layer=layer, pool=pool)
        return {"linear_top1": linear_probe(ftr, ytr, fte, yte), "feature_dim": ftr.shape[1],
                "knn_top1": knn_probe(ftr, ytr, fte, yte, k=k, num_classes=splits.num_classes)}

    torch.manual_seed(cfg.seed)
    net = build_backbone(cfg.backbone, num_classes=splits.num_classes, in_chans=cfg.channels, **cfg.model_kwargs)
    random_state = {k: v.clone() for k, v in net.state_dict().items()} if random_baseline else None
    load_backbone_weights(net, source)
    result: dict[str, Any] = {"source": str(source), "layer": layer, "num_train": len(labeled),
                              "num_test": len(splits.test), **probe(net)}
    if random_state is not None:
        net.load_state_dict(random_state)
        result.update({f"random_{k}": v for k, v in probe(net).items()})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = FlagParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", help="run dir, checkpoint dir, or backbone .safetensors of an sclearn run")
    parser.add_argument("--layer", help="layer to probe (default: the run's first SC layer)")
    parser.add_argument("--pool", type=int, default=2, help="average-pool the map to pool x pool cells")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the kNN probe")
    parser.add_argument("--data", help="override the run's data source")
    parser.add_argument("--max-train", type=int, help="cap the labelled images used to fit the probes")
    parser.add_argument("--random-baseline", action="store_true", help="also probe the random-init net")
    parser.add_argument("--save", action="store_true",
                        help="also write the result to the run's probe.json, which its model card shows "
                             "(python -m sclearn.export <run> rewrites the card)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    with cli_errors(parser.flags, debug=args.debug):
        result = probe_checkpoint(args.source, layer=args.layer, pool=args.pool, k=args.k, data=args.data,
                                  random_baseline=args.random_baseline, max_train=args.max_train)
        text = json.dumps(result, indent=2)
        print(text)
        if args.save:
            source = Path(args.source)
            (run_dir_of(source if source.is_dir() else source.parent) / PROBE_FILE).write_text(text + "\n")


if __name__ == "__main__":
    main()
