"""SC ablation on Fashion-MNIST with the paper's MNIST net (issue 8).

Question: is there a Spatial Contrasting configuration that beats supervised-only training at 10 and 40
labels per class by more than 2 std of the seed spread? And does SC pre-training give better frozen
features than random initialisation (linear probe)?

Protocol (every choice made on a validation split held out of the *train* set, never on test):

- Net ``sc_mnist`` (Table 4), ``translate=2``, no flips, SGD momentum 0.9, wd 5e-4, lr 0.05, cosine.
- Both arms: the same net and head, the same labelled batch (64), the same number of optimizer steps
  (``--steps``), the same schedule and augmentation. The SC arm (joint mode) adds an unlabelled batch of
  ``64 * unlabeled_ratio`` images to every step and the loss ``CE + lambda * SC``.
- Stages:
  ``search``  one seed (``--search-seed``), ``--labels-per-class`` (first value), val accuracy only.
              Round 0: the classifier head for both arms (paper head / paper head without the activation
              on the logits / GAP + linear). Round 1: one SC factor at a time from a start config.
              Round 2: the start config plus every single-factor change that beat it on val (best per
              factor group). Selection: best val accuracy.
  ``final``   ``--seeds`` (fresh seeds, not the search seed; seed = label subset + init), the selected SC
              config against supervised-only with its selected head; test accuracy reported once, at the
              end of training; mean +- std.
  ``probe``   SC pre-training (selected SC loss) for ``--probe-steps`` steps vs the same net at random
              init: a linear probe (and kNN) on frozen ``stages.1`` features, 2x2-pooled, per label budget.
- Raw JSON of every run goes to ``benchmarks/ablation_results/<stage>/``; runs already there are not
  redone (``--force`` redoes them), so an interrupted search resumes.

Usage::

    python benchmarks/sc_ablation.py --stage search --labels-per-class 10 --steps 600 --jobs 2
    python benchmarks/sc_ablation.py --stage final --labels-per-class 10 40 --seeds 1 2 3 --steps 600
    python benchmarks/sc_ablation.py --stage probe --labels-per-class 10 40 --seeds 1 2 3
    python benchmarks/sc_ablation.py --stage report --write-results
    python benchmarks/sc_ablation.py --smoke            # a few steps of each stage, < 60 s
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "ablation_results"
DEFAULT_DATA = "idx:/usr/share/datasets/fashion-mnist"

HEADS: dict[str, dict[str, Any]] = {
    "paper": {},  # Table 4: 1x1 conv 10, BN, ReLU, GAP (a ReLU on the class scores)
    "nologitact": {"logit_act": False},  # Table 4 head without the ReLU on the logits
    "linear": {"head": "linear"},  # GAP + Linear
}

# Everything both arms share.
BASE: dict[str, Any] = dict(
    backbone="sc_mnist", channels=1, hflip=False, translate=2, batch_size=64, lr=0.05, schedule="cosine",
    momentum=0.9, weight_decay=5e-4, eval_test=False, report_to="none", progress=False, checkpoint_every=None,
)

# The SC start point of the search. rampup is a fraction of --steps.
SC_START: dict[str, Any] = dict(
    mode="joint", layers=("stages.1",), distance="cosine", temperature=0.1, pool="mean", patch_size=3,
    min_offset=0, projector_dim=None, sc_weight=0.5, rampup=0.2, unlabeled_ratio=2.0, head="paper",
)

# Round 1: (factor group, variant name, changes to SC_START). One factor at a time. Trimmed to fit a
# 90-minute CPU budget (2 cores shared); also worth trying with more time: patch 4, min_offset 2,
# cosine T 0.3, sqeuclidean, SC on stages.1 + stages.2, no ramp-up.
SC_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("patch", "patch2", {"patch_size": 2}),
    ("patch", "patch5", {"patch_size": 5}),
    ("overlap", "disjoint", {"min_offset": "disjoint"}),
    ("distance", "cos_T0.05", {"temperature": 0.05}),
    ("distance", "l2_T1", {"distance": "l2", "temperature": 1.0}),
    ("pool", "flatten", {"pool": "flatten"}),
    ("projector", "proj64", {"projector_dim": 64}),
    ("layer", "layer2", {"layers": ("stages.2",)}),
    ("weight", "lam0.1", {"sc_weight": 0.1}),
    ("weight", "lam2", {"sc_weight": 2.0}),
    ("mode", "two_stage", {"mode": "two_stage"}),
]
# Round 3 (session 2): the factors round 1 had no time for, one at a time from the config round 1 chose
# (cosine, T 0.1, 3x3 mean patches, lambda 0.1 with a ramp). stages.0 is the 32 x 14 x 14 map.
R3_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("patch", "patch4", {"patch_size": 4}),
    ("overlap", "offset2", {"min_offset": 2}),
    ("patches", "P4", {"num_patches": 4}),
    ("distance", "cos_T0.3", {"temperature": 0.3}),
    ("distance", "sqeuclid_T1", {"distance": "sqeuclidean", "temperature": 1.0}),
    ("layer", "stage0_p5", {"layers": ("stages.0",), "patch_size": 5}),
    ("layer", "stage0+1", {"layers": ("stages.0", "stages.1"), "layer_patch_sizes": (5, 3)}),
    ("weight", "lam0.03", {"sc_weight": 0.03}),
    ("ramp", "noramp", {"rampup": 0.0}),
    ("unlabelled", "ratio4", {"unlabeled_ratio": 4.0}),
    ("projector", "proj64", {"projector_dim": 64}),
]
# Round 4 (session 2): the fine-tune protocol ("the protocol matters as much as the loss", FINDINGS.md).
# Two-stage from the round-1 choice's loss with a longer SC pre-training (PRETRAIN_R4 steps), then --steps of
# fine-tuning with the SC-trained early stages frozen (TrainConfig.freeze), against the same freezing on random
# weights (supervised arm): do SC features beat random ones when only the top of the net learns from labels?
PRETRAIN_R4 = 1500
FREEZE_01, FREEZE_0 = ("stages.0", "stages.1"), ("stages.0",)
R4_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("ft_freeze01", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4, "freeze": FREEZE_01}),
    ("sup_freeze01", "supervised", {"freeze": FREEZE_01}),
    ("ft_freeze0", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4, "freeze": FREEZE_0}),
    ("ft_l2mean_freeze01", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4, "freeze": FREEZE_01,
                                  "distance": "l2", "temperature": 1.0}),
    ("ft_nofreeze", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4}),
    ("sup_freeze0", "supervised", {"freeze": FREEZE_0}),
]
# Round 5 (session 2): round 4's SC-pretrained layers did worse than random ones, and SC pre-training left a
# third of the SC layer's ReLU channels dead (benchmarks/feature_diagnostics.py). Two ways to spare the backbone:
# a gentler pre-training lr, and a projector that takes the loss's geometry instead of the backbone's map.
# Every two-stage run now records the dead ReLU channels after pre-training.
R5_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("pre_ref", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4}),
    ("pre_lr0.01", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4, "pretrain_lr": 0.01}),
    ("pre_proj64", "sc", {"mode": "two_stage", "pretrain_max_steps": PRETRAIN_R4, "projector_dim": 64}),
]
# The paper-faithful reference (FINDINGS.md): L2, T=1, 5x5 flattened patches, lambda 1, no ramp.
PAPER_SC: dict[str, Any] = dict(distance="l2", temperature=1.0, pool="flatten", patch_size=5, min_offset=0,
                                projector_dim=None, sc_weight=1.0, rampup=0.0)
SC_KEYS = ("mode", "layers", "distance", "temperature", "pool", "patch_size", "min_offset", "projector_dim",
           "sc_weight", "rampup", "unlabeled_ratio", "head", "num_patches", "layer_patch_sizes",
           "pretrain_max_steps", "freeze", "pretrain_lr")
# Absent from round-1 records: TrainConfig defaults.
OPTIONAL_SC_KEYS = ("num_patches", "layer_patch_sizes", "pretrain_max_steps", "freeze")
COMBO_MARGIN = 0.005  # a round-1 change enters the round-2 combination if it beat the start by >= 0.5 pt


# -- one run ---------------------------------------------------------------------------------------------
def _train_config(spec: dict[str, Any]):
    from sclearn.config import TrainConfig

    arm, p, steps = spec["arm"], spec["params"], spec["steps"]
    kw = dict(BASE)
    kw.update(data=spec["data"], labels_per_class=spec["lpc"], val_per_class=spec["val_per_class"],
              split_seed=spec["seed"], seed=spec["seed"], max_steps=steps, epochs=10**6, eval_every=10**6,
              eval_test=spec["eval_test"], output_dir=spec["run_dir"],
              model_kwargs=dict(HEADS[p.get("head", "paper")]))
    if arm == "supervised":
        kw.update(mode="supervised", freeze=tuple(p.get("freeze") or ()))
        return TrainConfig(**kw)
    kw.update(mode=p["mode"], layers=tuple(p["layers"]), distance=p["distance"], temperature=p["temperature"],
              pool=p["pool"], patch_size=p["patch_size"], min_offset=p["min_offset"],
              projector_dim=p["projector_dim"], sc_weight=p["sc_weight"],
              sc_rampup_steps=round(p["rampup"] * steps), unlabeled_ratio=p["unlabeled_ratio"])
    for key in OPTIONAL_SC_KEYS:
        if p.get(key) is not None:
            kw[key] = tuple(p[key]) if isinstance(p[key], (list, tuple)) else p[key]
    if p["mode"] == "two_stage":  # SC pre-training on batches as large as a joint step's, then the same CE
        kw.update(pretrain_epochs=10**6, pretrain_lr=p.get("pretrain_lr") or kw["lr"],
                  pretrain_batch_size=round(64 * (1 + p["unlabeled_ratio"])))
    return TrainConfig(**kw)


def _last_train_record(metrics: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "event" not in rec:
                last = rec
    return last


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one arm, write its JSON record, return it. Runs in a worker process with 1 torch thread."""
    import shutil

    import torch

    torch.set_num_threads(1)
    from sclearn.train import Trainer

    out = Path(spec["out_json"])
    if out.is_file() and not spec["force"]:
        return json.loads(out.read_text())
    shutil.rmtree(spec["run_dir"], ignore_errors=True)
    cfg = _train_config(spec)
    start = time.time()
    trainer = Trainer(cfg)
    summary = trainer.fit()
    dead = None
    if cfg.mode == "two_stage":  # what pre-training did to the ReLUs, on the val images (before fine-tuning)
        sys.path.insert(0, str(BENCH_DIR))
        from feature_diagnostics import relu_activity

        from sclearn.backbones import load_backbone_weights

        net = copy.deepcopy(trainer.backbone())
        load_backbone_weights(net, Path(spec["run_dir"]) / "pretrain_backbone.safetensors")
        dead = relu_activity(net, trainer.eval_loaders["val" if "val" in trainer.eval_loaders else "test"])
    stage = cfg.stages[-1]
    res = summary["stages"][stage]
    last = _last_train_record(Path(spec["run_dir"]) / "metrics.jsonl")
    record = {
        "name": spec["name"], "arm": spec["arm"], "stage": spec["stage"], "labels_per_class": spec["lpc"],
        "seed": spec["seed"], "steps": spec["steps"], "params": spec["params"],
        "val_acc": res.get("val_acc"), "test_acc": res.get("test_acc"),
        "pretrain": summary["stages"].get("pretrain") if stage != "pretrain" else None,
        "final_train_terms": {k: last[k] for k in ("loss", "ce", "sc", "sc_weight") if k in last},
        "pretrain_relu": dead,
        "wall_time_s": round(time.time() - start, 1), "stage_wall_s": summary["wall_time_s"],
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(spec["run_dir"], ignore_errors=True)
    return record


def probe_one(spec: dict[str, Any]) -> dict[str, Any]:
    """SC pre-training vs random init, linear + kNN probe on frozen stages.1 features, per label budget."""
    import shutil

    import torch

    torch.set_num_threads(1)
    from sclearn import data as sc_data
    from sclearn.evaluation import probe_representation
    from sclearn.train import Trainer

    out = Path(spec["out_json"])
    if out.is_file() and not spec["force"]:
        return json.loads(out.read_text())
    shutil.rmtree(spec["run_dir"], ignore_errors=True)
    p = dict(spec["params"], mode="pretrain")
    cfg = _train_config(dict(spec, arm="sc", params=p, lpc=spec["lpcs"][0]))
    cfg.pretrain_epochs, cfg.pretrain_lr = 10**6, cfg.lr
    cfg.pretrain_batch_size = round(64 * (1 + p["unlabeled_ratio"]))
    start = time.time()
    trainer = Trainer(cfg)
    random_net = copy.deepcopy(trainer.backbone())
    trainer.fit()
    sc_net = trainer.backbone()
    pretrain_s = time.time() - start
    dsd = sc_data.load_image_dataset(spec["data"])
    results: dict[str, Any] = {}
    layer = "stages.1"
    for lpc in spec["lpcs"]:
        splits = sc_data.semi_supervised_splits(dsd, labels_per_class=lpc, seed=spec["seed"])
        mean, std = sc_data.normalization_stats(splits, channels=cfg.channels)
        tf = sc_data.build_transform(train=False, mean=mean, std=std, channels=1)

        def loader(ds, tf=tf):
            return sc_data.make_loader(sc_data.with_image_transform(ds, tf), 256, shuffle=False)

        results[str(lpc)] = {
            "random": probe_representation(random_net, layer, loader(splits.labeled), loader(splits.test)),
            "sc": probe_representation(sc_net, layer, loader(splits.labeled), loader(splits.test)),
        }
    record = {"name": spec["name"], "stage": "probe", "seed": spec["seed"], "pretrain_steps": spec["steps"],
              "params": spec["params"], "layer": layer, "pool": 2, "results": results,
              "pretrain_wall_s": round(pretrain_s, 1), "wall_time_s": round(time.time() - start, 1),
              "config": json.loads(json.dumps(cfg.to_dict(), default=str))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(spec["run_dir"], ignore_errors=True)
    return record


# -- specs, selection ------------------------------------------------------------------------------------
def _spec(args, stage: str, name: str, arm: str, params: dict[str, Any], lpc: int, seed: int,
          eval_test: bool) -> dict[str, Any]:
    tag = f"{name}__lpc{lpc}_seed{seed}_steps{args.steps}"
    return {"stage": stage, "name": name, "arm": arm, "params": params, "lpc": lpc, "seed": seed,
            "steps": args.steps, "data": args.data, "val_per_class": args.val_per_class, "eval_test": eval_test,
            "run_dir": str(Path(args.work_dir) / stage / tag), "out_json": str(args.results_dir / stage / f"{tag}.json"),
            "force": args.force}


def _run_all(specs: list[dict[str, Any]], jobs: int, fn=run_one) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [fn(s) for s in specs]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, specs))


def _load(results_dir: Path, stage: str) -> list[dict[str, Any]]:
    d = results_dir / stage
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def _sc_params(**changes) -> dict[str, Any]:
    p = dict(SC_START)
    p.update(changes)
    p["layers"] = list(p["layers"])
    return p


def best_heads(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per arm, the head with the best val accuracy in search round 0."""
    out = {}
    for arm in ("supervised", "sc"):
        rs = [r for r in records if r["arm"] == arm and r["name"].startswith("r0_")]
        rs.sort(key=lambda r: list(HEADS).index(r["params"]["head"]))  # ties go to the earlier head in HEADS
        if rs:
            out[arm] = max(rs, key=lambda r: r["val_acc"])["params"]["head"]
    return out


def best_sc(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    rs = [r for r in records if r["arm"] == "sc" and not r["name"].startswith("ref_")]
    return max(rs, key=lambda r: r["val_acc"]) if rs else None


def search_specs_round0(args, lpc: int, seed: int) -> list[dict[str, Any]]:
    specs = [_spec(args, "search", f"r0_sup_{h}", "supervised", {"head": h}, lpc, seed, False) for h in HEADS]
    specs += [_spec(args, "search", f"r0_sc_{h}", "sc", _sc_params(head=h), lpc, seed, False) for h in HEADS]
    return specs


def run_search(args) -> None:
    lpc, seed = args.labels_per_class[0], args.search_seed
    recs = _run_all(search_specs_round0(args, lpc, seed), args.jobs)
    heads = best_heads(recs)
    start = _sc_params(head=heads["sc"])
    r1 = [_spec(args, "search", f"r1_{name}", "sc", _sc_params(head=heads["sc"], **ch), lpc, seed, False)
          for _, name, ch in SC_VARIANTS]
    r1.append(_spec(args, "search", "ref_paper_sc", "sc", _sc_params(head=heads["sc"], **PAPER_SC), lpc, seed,
                    False))
    r1_recs = _run_all(r1, args.jobs)
    start_val = next(r for r in recs if r["name"] == f"r0_sc_{heads['sc']}")["val_acc"]
    combo = dict(start)
    chosen = []
    for group in dict.fromkeys(g for g, _, _ in SC_VARIANTS):
        members = [(n, ch) for g, n, ch in SC_VARIANTS if g == group]
        scored = [(next(r for r in r1_recs if r["name"] == f"r1_{n}")["val_acc"], n, ch) for n, ch in members]
        best_val, best_name, best_ch = max(scored, key=lambda t: t[0])
        if best_val >= start_val + COMBO_MARGIN:
            combo.update(best_ch)
            chosen.append(best_name)
    if len(chosen) >= 2:
        combo["layers"] = list(combo["layers"])
        _run_all([_spec(args, "search", "r2_combo_" + "+".join(chosen), "sc", combo, lpc, seed, False)], 1)
    if args.confirm_top:  # re-rank the top SC configs and the supervised arm on a second seed (val only)
        rec = _load(args.results_dir, "search")
        top = sorted([r for r in rec if r["arm"] == "sc" and r["seed"] == seed and not r["name"].startswith("ref_")],
                     key=lambda r: -r["val_acc"])[: args.confirm_top]
        sup = {"head": heads["supervised"]}
        specs = [_spec(args, "search", r["name"], "sc", r["params"], lpc, s, False) for r in top
                 for s in args.confirm_seeds]
        specs += [_spec(args, "search", f"r0_sup_{heads['supervised']}", "supervised", sup, lpc, s, False)
                  for s in args.confirm_seeds]
        _run_all(specs, args.jobs)


def run_search_round3(args) -> None:
    """Round 3: R3_VARIANTS from the config chosen so far, plus supervised-only at the same step budget."""
    lpc, seed = args.labels_per_class[0], args.search_seed
    recs = _load(args.results_dir, "search")
    r1_steps = sorted({r["steps"] for r in recs if r["name"].startswith("r1_")})
    if args.base_steps is None and not r1_steps:
        raise SystemExit(f"round 3 starts from round 1's choice, and {args.results_dir}/search has no round-1 "
                         "runs: run --stage search (--round 1) first, or pass --base-steps")
    sel = selection(args.results_dir, seed, steps=args.base_steps or r1_steps[0])
    base = dict(sel["sc_params"])
    heads = sel["heads"]
    specs = [_spec(args, "search", f"r0_sup_{heads['supervised']}", "supervised", {"head": heads["supervised"]},
                   lpc, seed, False),
             _spec(args, "search", sel["sc_name"], "sc", base, lpc, seed, False)]
    for _, name, ch in R3_VARIANTS:
        if args.variants and name not in args.variants:
            continue
        p = dict(base, **ch)
        p["layers"] = list(p["layers"])
        if p.get("layer_patch_sizes") is not None:
            p["layer_patch_sizes"] = list(p["layer_patch_sizes"])
        specs.append(_spec(args, "search", f"r3_{name}", "sc", p, lpc, seed, False))
    _run_all(specs, args.jobs)


def run_search_round4(args, variants: list[tuple[str, str, dict[str, Any]]] | None = None, tag: str = "r4") -> None:
    """Round 4 (and 5): R4_VARIANTS (fine-tune protocols) from the best SC config so far.

    "Best so far" is ``selection`` over every search run of the base steps when the round starts (round 4 ran
    from round 3's sqeuclidean choice, round 5 likewise). Protocol keys of that config (freeze, pre-training
    lr and length, projector) are cleared first, so each variant states its whole protocol.
    """
    lpc, seed = args.labels_per_class[0], args.search_seed
    recs = _load(args.results_dir, "search")
    r1_steps = sorted({r["steps"] for r in recs if r["name"].startswith("r1_")})
    if args.base_steps is None and not r1_steps:
        raise SystemExit("round 4 starts from round 1's choice: run --stage search (--round 1) first")
    sel = selection(args.results_dir, seed, steps=args.base_steps or r1_steps[0])
    specs = []
    for name, arm, ch in variants or R4_VARIANTS:
        if args.variants and name not in args.variants:
            continue
        if arm == "supervised":
            p = {"head": sel["heads"]["supervised"], **ch}
        else:
            base = {k: v for k, v in sel["sc_params"].items()
                    if k not in ("freeze", "pretrain_lr", "pretrain_max_steps")}
            base["projector_dim"] = None
            p = dict(base, **ch)
            p["layers"] = list(p["layers"])
        if p.get("freeze"):
            p["freeze"] = list(p["freeze"])
        specs.append(_spec(args, "search", f"{tag}_{name}", arm, p, lpc, seed, False))
    _run_all(specs, args.jobs)


def selection(results_dir: Path, search_seed: int, steps: int | None) -> dict[str, Any]:
    """Heads and SC config chosen on val among the search runs of ``steps`` optimizer steps (None: all).

    With confirmation seeds, SC configs are ranked by mean val.
    """
    all_recs = _load(results_dir, "search")
    recs = [r for r in all_recs if steps is None or r["steps"] == steps]
    if all_recs and not recs:
        raise SystemExit(f"no search runs of {steps} steps in {results_dir}/search (there are runs of "
                         f"{sorted({r['steps'] for r in all_recs})} steps): pass --base-steps")
    heads = best_heads([r for r in recs if r["seed"] == search_seed])
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if r["arm"] == "sc" and not r["name"].startswith("ref_"):
            by_name.setdefault(r["name"], []).append(r)
    nseeds = max((len(v) for v in by_name.values()), default=0)
    pool = {k: v for k, v in by_name.items() if len(v) == nseeds}
    name = max(pool, key=lambda k: statistics.mean(r["val_acc"] for r in pool[k])) if pool else None
    return {"heads": heads, "sc_name": name, "sc_params": pool[name][0]["params"] if name else None,
            "ranked_on_seeds": nseeds}


def run_final(args) -> None:
    sel = selection(args.results_dir, args.search_seed, steps=args.base_steps or args.steps)
    if args.sc_config:
        sel["sc_params"], sel["sc_name"] = json.loads(args.sc_config), "custom"
    specs = []
    for lpc in args.labels_per_class:
        for seed in args.seeds:
            if "supervised" in args.arms:
                specs.append(_spec(args, "final", f"sup_{sel['heads']['supervised']}", "supervised",
                                   {"head": sel["heads"]["supervised"]}, lpc, seed, True))
            if "sc" in args.arms:
                specs.append(_spec(args, "final", f"sc_{sel['sc_name']}", "sc", sel["sc_params"], lpc, seed, True))
    _run_all(specs, args.jobs)


def run_probe(args) -> None:
    sel = selection(args.results_dir, args.search_seed, steps=args.base_steps or args.steps)
    params = json.loads(args.sc_config) if args.sc_config else sel["sc_params"]
    steps = args.probe_steps
    specs = []
    for seed in args.seeds:
        tag = f"probe_{sel['sc_name'] if not args.sc_config else 'custom'}__seed{seed}_steps{steps}"
        specs.append({"name": tag, "params": params, "lpcs": args.labels_per_class, "seed": seed, "steps": steps,
                      "data": args.data, "val_per_class": 0, "eval_test": False, "force": args.force,
                      "run_dir": str(Path(args.work_dir) / "probe" / tag),
                      "out_json": str(args.results_dir / "probe" / f"{tag}.json")})
    _run_all(specs, args.jobs, fn=probe_one)


# -- report ----------------------------------------------------------------------------------------------
def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    v = [100 * x for x in values]
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def _describe(p: dict[str, Any]) -> str:
    if "mode" not in p:
        return f"head={p['head']}" + (f", freeze={p['freeze']}" if p.get("freeze") else "")
    return ", ".join(f"{k}={p[k]}" for k in SC_KEYS if k in p)


def report(args) -> dict[str, Any]:
    search, final, probe = (_load(args.results_dir, s) for s in ("search", "final", "probe"))
    sel = selection(args.results_dir, args.search_seed, steps=args.base_steps or args.steps) if search else {}
    out: dict[str, Any] = {"selection": sel, "search": [], "final": {}, "probe": {}}
    for r in sorted(search, key=lambda r: (r["steps"], r["seed"], r["name"])):
        out["search"].append({"name": r["name"], "seed": r["seed"], "lpc": r["labels_per_class"], "steps": r["steps"],
                              "val_acc": r["val_acc"], "wall_s": r["wall_time_s"],
                              "sc_final": r["final_train_terms"].get("sc"), "params": _describe(r["params"])})
    # final[lpcN] = {"supervised": runs, "sc_configs": {name: runs + comparison}}: one entry per SC config sent
    # to the final stage (each round's choice), each compared with the same supervised runs.
    for r in final:
        entry = out["final"].setdefault(f"lpc{r['labels_per_class']}", {"supervised": None, "sc_configs": {}})
        if r["arm"] == "supervised":
            entry["supervised"] = entry["supervised"] or {"name": r["name"], "test": [], "val": [], "seeds": [],
                                                          "wall_s": []}
            arm = entry["supervised"]
        else:
            arm = entry["sc_configs"].setdefault(r["name"], {"name": r["name"], "test": [], "val": [], "seeds": [],
                                                             "wall_s": []})
        arm["test"].append(r["test_acc"]); arm["val"].append(r["val_acc"])
        arm["seeds"].append(r["seed"]); arm["wall_s"].append(r["wall_time_s"])
    for entry in out["final"].values():
        if entry["supervised"] is None:
            continue
        sup_by_seed = dict(zip(entry["supervised"]["seeds"], entry["supervised"]["test"]))
        for arm in entry["sc_configs"].values():
            sup = [sup_by_seed[s] for s in arm["seeds"] if s in sup_by_seed]  # the same seeds (label subsets)
            sc = [t for s, t in zip(arm["seeds"], arm["test"]) if s in sup_by_seed]
            if not sc:
                continue
            pooled = max(statistics.stdev(sup) if len(sup) > 1 else 0.0, statistics.stdev(sc) if len(sc) > 1 else 0.0)
            gain = statistics.mean(sc) - statistics.mean(sup)
            arm["gain_pt"] = round(100 * gain, 2)
            arm["two_std_pt"] = round(200 * pooled, 2)
            arm["per_seed_gain_pt"] = [round(100 * (a - b), 2) for a, b in zip(sc, sup)]
            # "beats by more than 2 std of the seed spread": the larger of the two arms' seed std
            arm["criterion_met"] = bool(gain > 2 * pooled) if len(sc) >= 2 else None
    for r in probe:
        for lpc, res in r["results"].items():
            key = f"{r['name'].split('__')[0]}_{r['pretrain_steps']}steps|lpc{lpc}"
            d = out["probe"].setdefault(key, {"random": [], "sc": [], "random_knn": [], "sc_knn": [],
                                              "params": _describe(r["params"]), "steps": r["pretrain_steps"],
                                              "pretrain_wall_s": []})
            d["pretrain_wall_s"].append(r["pretrain_wall_s"])
            d["random"].append(res["random"]["linear_top1"]); d["sc"].append(res["sc"]["linear_top1"])
            d["random_knn"].append(res["random"]["knn_top1"]); d["sc_knn"].append(res["sc"]["knn_top1"])
    if args.write_results:
        write_markdown(args, out, search, final, probe)
    return out


def write_markdown(args, out, search, final, probe) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    import torch
    from common import machine_info, machine_line, markdown_table, now_utc, write_result_block

    lines = ["## SC ablation (issue 8)", "",
             f"Written by `benchmarks/sc_ablation.py` on {now_utc()}. Machine: "
             f"{machine_line(machine_info(torch.device('cpu')))}; every run used 1 torch thread, 2 runs at a time, "
             "on a machine shared with other jobs (wall times are indicative).", "",
             "Protocol: Fashion-MNIST, the paper's MNIST net (`sc_mnist`), ±2 px shifts, no flips, SGD (0.9, wd 5e-4), "
             "lr 0.05 cosine, labelled batch 64; an SC arm is either joint training (CE + λ·SC) with an unlabelled "
             "batch of 128 from all 60k train images at every step, or two-stage (SC pre-training on batches of 192, "
             "then fine-tuning), with the same number of labelled optimizer steps as supervised-only. "
             "Choices on a 100/class validation split drawn from the non-labelled train images; test scored once at "
             "the end of each final run.", ""]
    sel = out.get("selection", {})
    if search:
        lines += ["### Search (validation accuracy, %)", "",
                  f"Heads chosen: {sel.get('heads')}. SC config chosen: `{sel.get('sc_name')}` "
                  f"(ranked on {sel.get('ranked_on_seeds')} seed(s)).", ""]
        rows = [(s["name"], s["seed"], s["lpc"], s["steps"], f"{100 * s['val_acc']:.1f}",
                 f"{s['sc_final']:.3f}" if s["sc_final"] is not None else "-", s["wall_s"], s["params"])
                for s in out["search"]]
        lines += [markdown_table(["run", "seed", "labels/class", "steps", "val acc", "final SC loss", "wall s", "config"],
                                 rows), ""]
    if out["final"]:
        lines += ["### Final (test accuracy, %, mean ± std over seeds)", ""]
        rows = []
        for key in sorted(out["final"], key=lambda k: int(k[3:])):
            entry = out["final"][key]
            sup = entry["supervised"] or {}
            for sc in entry["sc_configs"].values():
                rows.append((key[3:], f"{sup.get('name')}: {_ms(sup.get('test', []))}",
                             f"{sc['name']}: {_ms(sc['test'])}", sc.get("gain_pt"), sc.get("per_seed_gain_pt"),
                             sc.get("two_std_pt"), sc.get("criterion_met"), sc["seeds"],
                             f"{statistics.mean(sup.get('wall_s', [0])):.0f} / {statistics.mean(sc['wall_s']):.0f}"))
        lines += [markdown_table(["labels/class", "supervised only", "SC config", "gain (pt)", "gain per seed (pt)",
                                  "2·std (pt)", "SC > sup by > 2 std", "seeds", "wall s / run (sup / SC)"], rows), ""]
        lines += ["Per-seed test accuracies:", ""]
        for key in sorted(out["final"], key=lambda k: int(k[3:])):
            entry = out["final"][key]
            for a in [entry["supervised"], *entry["sc_configs"].values()]:
                if a:
                    lines.append(f"- {key} {a['name']}: "
                                 + ", ".join(f"seed {s}: {100 * t:.2f}" for s, t in zip(a["seeds"], a["test"])))
        lines.append("")
    if out["probe"]:
        lines += ["### Linear probe on frozen `stages.1` features (test accuracy, %)", ""]
        rows = [(k.split("|")[0], k.split("|lpc")[1], _ms(d["random"]), _ms(d["sc"]), _ms(d["random_knn"]),
                 _ms(d["sc_knn"]), len(d["sc"]))
                for k, d in sorted(out["probe"].items(), key=lambda kv: (kv[0].split("|")[0], int(kv[0].split("|lpc")[1])))]
        lines += [markdown_table(["probe run", "labels/class", "random init (linear)", "SC pre-trained (linear)",
                                  "random (kNN)", "SC (kNN)", "seeds"], rows), ""]
        for name in dict.fromkeys(k.split("|")[0] for k in out["probe"]):
            d = next(v for k, v in out["probe"].items() if k.startswith(name + "|"))
            lines.append(f"- `{name}`: SC pre-training {d['steps']} steps of 192 images (lr 0.05 cosine), "
                         f"{statistics.mean(d['pretrain_wall_s']):.0f} s per seed; SC loss `{d['params']}` "
                         "(sc_weight/rampup unused in pre-training).")
        lines.append("")
    if sel.get("sc_params"):
        lines += [f"Chosen SC config: `{_describe(sel['sc_params'])}`", ""]
    if args.notes:
        lines += [Path(args.notes).read_text().strip(), ""]
    lines += ["Commands:", "", "```", *args.commands, "```"]
    write_result_block("sc-ablation-issue8", "\n".join(lines))


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("search", "final", "probe", "report"), default="search",
                    help="search: one seed, val only; final: --seeds, test once; probe: linear probe SC vs random; "
                         "report: only summarise the JSON already in --results-dir")
    ap.add_argument("--labels-per-class", type=int, nargs="+", default=[10],
                    help="label budgets; search uses the first one, final and probe use all (default: 10)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="seeds of the final/probe stage; a seed fixes the label subset and the init (default 1 2 3)")
    ap.add_argument("--search-seed", type=int, default=0, help="seed of the search stage (default 0)")
    ap.add_argument("--round", type=int, choices=(1, 3, 4, 5), default=1,
                    help="search: 1 = rounds 0-2 (heads, one factor at a time, combination); 3 = R3_VARIANTS from "
                         "the config chosen so far, with supervised-only at the same --steps; 4 = R4_VARIANTS, "
                         "fine-tune protocols (longer SC pre-training, frozen early stages); 5 = R5_VARIANTS, "
                         "pre-training that spares the backbone (lower lr, projector) (default 1)")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="choose heads and the SC config among the search runs of this many steps (default: "
                         "--steps; search --round 3: the steps of the round-1 search)")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="search --round 3 / 4: only these R3_VARIANTS / R4_VARIANTS names (default: all)")
    ap.add_argument("--confirm-top", type=int, default=0,
                    help="search: re-run the N best SC configs and the supervised arm on --confirm-seeds (val only)")
    ap.add_argument("--confirm-seeds", type=int, nargs="+", default=[1], help="seeds for --confirm-top (default 1)")
    ap.add_argument("--arms", nargs="+", choices=("supervised", "sc"), default=["supervised", "sc"],
                    help="final: which arms to run (default both)")
    ap.add_argument("--steps", type=int, default=600,
                    help="optimizer steps of every arm (two_stage: per stage) (default 600)")
    ap.add_argument("--probe-steps", type=int, default=600, help="SC pre-training steps of the probe stage")
    ap.add_argument("--val-per-class", type=int, default=100, help="validation images per class (default 100)")
    ap.add_argument("--sc-config", default=None,
                    help="final/probe: a JSON dict of SC params (keys as SC_START) instead of the search's choice")
    ap.add_argument("--jobs", type=int, default=2, help="training processes at once, 1 torch thread each (default 2)")
    ap.add_argument("--data", default=DEFAULT_DATA, help=f"dataset source for sclearn (default {DEFAULT_DATA})")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where raw JSON per run goes")
    ap.add_argument("--work-dir", default="/tmp/sc_ablation_runs", help="scratch run directories (deleted after)")
    ap.add_argument("--force", action="store_true", help="redo runs whose JSON already exists")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps of search round 0, final and probe into a scratch results dir (CI, < 60 s)")
    ap.add_argument("--write-results", action="store_true",
                    help="put the tables into benchmarks/RESULTS.md (section 'SC ablation (issue 8)')")
    ap.add_argument("--notes", default=None, help="a markdown file appended to the RESULTS.md section")
    ap.add_argument("--commands", nargs="*", default=[],
                    help="the command lines to list in RESULTS.md (default: this one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
    args.commands = args.commands or ["python benchmarks/sc_ablation.py " + " ".join(sys.argv[1:])]
    t0 = time.time()
    if args.smoke:
        import tempfile

        args.results_dir = Path(tempfile.mkdtemp(prefix="sc_ablation_smoke_"))
        args.steps, args.base_steps, args.probe_steps, args.val_per_class, args.jobs = 3, 3, 3, 5, 1
        args.labels_per_class, args.seeds = [2], [1]
        lpc = 2
        specs = [_spec(args, "search", "r0_sup_paper", "supervised", {"head": "paper"}, lpc, 0, False),
                 _spec(args, "search", "r0_sc_paper", "sc", _sc_params(), lpc, 0, False),
                 # the round-3/4 code paths: optional SC keys, a short pre-training, frozen stages
                 _spec(args, "search", "r4_ft_freeze01", "sc",
                       _sc_params(mode="two_stage", pretrain_max_steps=2, freeze=list(FREEZE_01), num_patches=3),
                       lpc, 0, False),
                 _spec(args, "search", "r4_sup_freeze01", "supervised", {"head": "paper", "freeze": list(FREEZE_01)},
                       lpc, 0, False)]
        _run_all(specs, 1)
        run_final(args)
        run_probe(args)
        summary = report(args)
    elif args.stage == "search" and args.round == 3:
        run_search_round3(args)
        summary = report(args)
    elif args.stage == "search" and args.round == 4:
        run_search_round4(args)
        summary = report(args)
    elif args.stage == "search" and args.round == 5:
        run_search_round4(args, R5_VARIANTS, "r5")
        summary = report(args)
    elif args.stage == "search":
        run_search(args)
        summary = report(args)
    elif args.stage == "final":
        run_final(args)
        summary = report(args)
    elif args.stage == "probe":
        run_probe(args)
        summary = report(args)
    else:
        summary = report(args)
    summary["elapsed_s"] = round(time.time() - t0, 1)
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
