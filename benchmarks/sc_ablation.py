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
  ``search``  one seed (``--search-seed``), ``--labels-per-class`` (first value), val accuracy only. The search
              space is data, ``benchmarks/ablation_variants.json``: ``--round 1`` runs round 0 (the classifier
              head for both arms), round 1 (one SC factor at a time from a start config) and round 2 (the
              start config plus every single-factor change that beat it on val, best per factor group); each
              later round starts from the best SC config so far and runs the variants the file lists for it.
              Selection: best val accuracy.
  ``final``   ``--seeds`` (fresh seeds, not the search seed; seed = label subset + init), the selected SC
              config against supervised-only with its selected head; test accuracy reported once, at the
              end of training; mean +- std.
  ``probe``   SC pre-training (selected SC loss) for ``--probe-steps`` steps vs the same net at random
              init: a linear probe (and kNN) on frozen ``stages.1`` features, 2x2-pooled, per label budget.
- Raw JSON of every run goes to ``benchmarks/ablation_results/<stage>/``, through the benchmarks' result cache
  (a file per run, named by a hash of its TrainConfig); runs already there are not redone (``--force`` redoes
  them), so an interrupted search resumes.

Usage::

    python benchmarks/sc_ablation.py --stage search --labels-per-class 10 --steps 600 --jobs 2
    python benchmarks/sc_ablation.py --stage search --round 3 --labels-per-class 10 --steps 600
    python benchmarks/sc_ablation.py --stage final --labels-per-class 10 40 --seeds 1 2 3 --steps 600
    python benchmarks/sc_ablation.py --stage probe --labels-per-class 10 40 --seeds 1 2 3
    python benchmarks/sc_ablation.py --stage report --write-results
    python benchmarks/sc_ablation.py --smoke            # a few steps of each stage, < 60 s
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, `_harness` when run as a script

import _harness as harness
from common import markdown_table
from feature_diagnostics import relu_activity

from sclearn import TrainConfig, Trainer
from sclearn import data as sc_data
from sclearn.backbones import load_backbone_weights
from sclearn.evaluation import probe_representation
from sclearn.rundir import clear_run

RESULTS_DIR = harness.ROOT / "benchmarks" / "ablation_results"
VARIANTS: dict[str, Any] = json.loads((harness.ROOT / "benchmarks" / "ablation_variants.json").read_text())
HEADS: dict[str, dict[str, Any]] = VARIANTS["heads"]
ROUNDS: dict[int, dict[str, Any]] = {int(k): v for k, v in VARIANTS["rounds"].items()}
PROBE_LAYER, PROBE_POOL = "stages.1", 2

# Everything both arms share.
BASE: dict[str, Any] = dict(
    backbone="sc_mnist", channels=1, hflip=False, translate=2, batch_size=64, lr=0.05, schedule="cosine",
    momentum=0.9, weight_decay=5e-4, report_to="none", progress=False, checkpoint_every=None,
)
SC_KEYS = ("mode", "layers", "distance", "temperature", "pool", "patch_size", "min_offset", "projector_dim",
           "sc_weight", "rampup", "unlabeled_ratio", "head", "num_patches", "layer_patch_sizes",
           "pretrain_max_steps", "freeze", "pretrain_lr")
# Absent from round-1 records: TrainConfig defaults.
OPTIONAL_SC_KEYS = ("num_patches", "layer_patch_sizes", "pretrain_max_steps", "freeze")


# -- one run ---------------------------------------------------------------------------------------------
def train_fields(arm: str, p: dict[str, Any], *, lpc: int, seed: int, steps: int, data: str, val_per_class: int,
                 eval_test: bool) -> dict[str, Any]:
    """The TrainConfig fields of one run: arm ``supervised`` or ``sc`` with the SC params ``p``."""
    kw = dict(BASE, data=data, labels_per_class=lpc, val_per_class=val_per_class, split_seed=seed, seed=seed,
              max_steps=steps, epochs=harness.BIG, eval_every=harness.BIG, eval_test=eval_test,
              model_kwargs=dict(HEADS[p.get("head", "paper")]))
    if arm == "supervised":
        return dict(kw, mode="supervised", freeze=tuple(p.get("freeze") or ()))
    kw.update(mode=p["mode"], layers=tuple(p["layers"]), distance=p["distance"], temperature=p["temperature"],
              pool=p["pool"], patch_size=p["patch_size"], min_offset=p["min_offset"],
              projector_dim=p["projector_dim"], sc_weight=p["sc_weight"],
              sc_rampup_steps=round(p["rampup"] * steps), unlabeled_ratio=p["unlabeled_ratio"])
    for key in OPTIONAL_SC_KEYS:
        if p.get(key) is not None:
            kw[key] = tuple(p[key]) if isinstance(p[key], (list, tuple)) else p[key]
    if p["mode"] in ("two_stage", "pretrain"):  # SC batches as large as a joint step's, then the same CE
        kw.update(pretrain_epochs=harness.BIG, pretrain_lr=p.get("pretrain_lr") or kw["lr"],
                  pretrain_batch_size=round(64 * (1 + p["unlabeled_ratio"])))
    return kw


@contextlib.contextmanager
def scratch_trainer(spec: dict[str, Any]) -> Iterator[Trainer]:
    """A Trainer of the spec's fields in its scratch run dir, 1 torch thread; the run is deleted after.

    ``overwrite``: an earlier sclearn run there (left by a killed call) is deleted under the run dir's lock, so a
    run another process holds is never touched, and a dir with run files sclearn did not write raises. Only the
    run this Trainer locked is cleared after (``clear_run``: sclearn's own files, nothing else).
    """
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON report's
        trainer = Trainer(TrainConfig(**spec["fields"], output_dir=spec["run_dir"], overwrite=True))
        try:
            yield trainer
        finally:
            clear_run(spec["run_dir"])  # the empty dir and its lock file stay (the default work dir goes at exit)


def _last_train_record(metrics: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        rec = json.loads(line)
        if "event" not in rec:
            last = rec
    return last


def train_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one arm; its record: accuracies, final loss terms, dead ReLUs after an SC pre-training."""
    start = time.time()
    with scratch_trainer(spec) as trainer:
        summary = trainer.fit()
        cfg, dead = trainer.config, None
        if cfg.mode == "two_stage":  # what pre-training did to the ReLUs, on the val images (before fine-tuning)
            net = copy.deepcopy(trainer.backbone())
            load_backbone_weights(net, Path(spec["run_dir"]) / "pretrain_backbone.safetensors")
            dead = relu_activity(net, trainer.eval_loaders["val" if "val" in trainer.eval_loaders else "test"])
        last = _last_train_record(Path(spec["run_dir"]) / "metrics.jsonl")
    stage = cfg.stages[-1]
    res = summary["stages"][stage]
    return {
        "name": spec["name"], "arm": spec["arm"], "stage": spec["stage"], "labels_per_class": spec["lpc"],
        "seed": spec["seed"], "steps": spec["steps"], "params": spec["params"],
        "val_acc": res.get("val_acc"), "test_acc": res.get("test_acc"),
        "pretrain": summary["stages"].get("pretrain") if stage != "pretrain" else None,
        "final_train_terms": {k: last[k] for k in ("loss", "ce", "sc", "sc_weight") if k in last},
        "pretrain_relu": dead,
        "wall_time_s": round(time.time() - start, 1), "stage_wall_s": summary["wall_time_s"],
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }


def probe_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """SC pre-training vs the same net at its random init: linear + kNN probes on frozen features, per label
    budget (each its own labelled subset of the same seed)."""
    start = time.time()
    with scratch_trainer(spec) as trainer:
        random_net = copy.deepcopy(trainer.backbone())
        trainer.fit()
        cfg, sc_net = trainer.config, trainer.backbone()
    pretrain_s = time.time() - start
    dsd = sc_data.load_image_dataset(cfg.data)
    results: dict[str, Any] = {}
    for lpc in spec["lpcs"]:
        splits = sc_data.semi_supervised_splits(dsd, labels_per_class=lpc, seed=spec["seed"])
        probe = sc_data.build_loaders(cfg, splits).probe  # the labelled and test sets, whole and unaugmented
        results[str(lpc)] = {name: probe_representation(net, PROBE_LAYER, probe["bank"], probe["test"],
                                                        pool=PROBE_POOL)
                             for name, net in (("random", random_net), ("sc", sc_net))}
    return {"name": spec["name"], "stage": "probe", "seed": spec["seed"], "pretrain_steps": spec["steps"],
            "params": spec["params"], "layer": PROBE_LAYER, "pool": PROBE_POOL, "results": results,
            "pretrain_wall_s": round(pretrain_s, 1), "wall_time_s": round(time.time() - start, 1),
            "config": json.loads(json.dumps(cfg.to_dict(), default=str))}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """The record of one spec (read back from the cache unless --force). Runs in a worker process."""
    compute = probe_arm if spec["stage"] == "probe" else train_arm
    return harness.ResultCache(spec["results_dir"]).run(spec["key"], lambda: compute(spec), reuse=not spec["force"],
                                                        label="sc_ablation")


def _run_all(specs: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [run_one(s) for s in specs]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_one, specs))


# -- specs, selection ------------------------------------------------------------------------------------
def work_dir(args: argparse.Namespace) -> Path:
    """Where the scratch run dirs go: ``--work-dir``, or a new temporary directory of this process, made on first
    use and removed (it holds only what this process made) when the process exits."""
    if args.work_dir is None:
        args.work_dir = tempfile.mkdtemp(prefix="sc_ablation_runs_")
        atexit.register(shutil.rmtree, args.work_dir, ignore_errors=True)
    return Path(args.work_dir)


def _spec(args, stage: str, name: str, arm: str, params: dict[str, Any], lpc: int, seed: int,
          eval_test: bool) -> dict[str, Any]:
    tag = f"{name}__lpc{lpc}_seed{seed}_steps{args.steps}"
    fields = train_fields(arm, params, lpc=lpc, seed=seed, steps=args.steps, data=args.data,
                          val_per_class=args.val_per_class, eval_test=eval_test)
    return {"stage": stage, "name": name, "arm": arm, "params": params, "lpc": lpc, "seed": seed,
            "steps": args.steps, "fields": fields, "key": harness.ResultCache.key(tag, [fields]),
            "results_dir": str(args.results_dir / stage), "run_dir": str(work_dir(args) / stage / tag),
            "force": args.force}


def _probe_spec(args, name: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    tag, steps, lpcs = f"probe_{name}__seed{seed}_steps{args.probe_steps}", args.probe_steps, args.labels_per_class
    fields = train_fields("sc", {**params, "mode": "pretrain"}, lpc=lpcs[0], seed=seed, steps=steps,
                          data=args.data, val_per_class=0, eval_test=False)
    return {"stage": "probe", "name": tag, "params": params, "lpcs": lpcs, "seed": seed, "steps": steps,
            "fields": fields, "key": harness.ResultCache.key(tag, [fields, {"probe_labels_per_class": lpcs}]),
            "results_dir": str(args.results_dir / "probe"), "run_dir": str(work_dir(args) / "probe" / tag),
            "force": args.force}


def _load(results_dir: Path, stage: str) -> list[dict[str, Any]]:
    return harness.ResultCache(results_dir / stage).records()


def _sc_params(**changes) -> dict[str, Any]:
    return {**VARIANTS["sc_start"], **changes}


def best_heads(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per arm, the head with the best val accuracy in search round 0."""
    out = {}
    for arm in ("supervised", "sc"):
        rs = [r for r in records if r["arm"] == arm and r["name"].startswith("r0_")]
        rs.sort(key=lambda r: list(HEADS).index(r["params"]["head"]))  # ties go to the earlier head in HEADS
        if rs:
            out[arm] = max(rs, key=lambda r: r["val_acc"])["params"]["head"]
    return out


def run_search(args) -> None:
    """Rounds 0-2: heads, round 1's variants one at a time, then the combination of the winners."""
    lpc, seed, r1 = args.labels_per_class[0], args.search_seed, ROUNDS[1]
    recs = _run_all([_spec(args, "search", f"r0_{'sup' if arm == 'supervised' else 'sc'}_{head}", arm,
                           {"head": head} if arm == "supervised" else _sc_params(head=head), lpc, seed, False)
                     for arm in ("supervised", "sc") for head in HEADS], args.jobs)
    heads = best_heads(recs)
    start = _sc_params(head=heads["sc"])
    specs = [_spec(args, "search", f"r1_{v['name']}", "sc", {**start, **v["set"]}, lpc, seed, False)
             for v in r1["variants"]]
    ref = r1["reference"]
    specs.append(_spec(args, "search", ref["name"], "sc", {**start, **ref["set"]}, lpc, seed, False))
    val = {r["name"]: r["val_acc"] for r in _run_all(specs, args.jobs)}
    start_val = next(r for r in recs if r["name"] == f"r0_sc_{heads['sc']}")["val_acc"]
    combo, chosen = dict(start), []
    for group in dict.fromkeys(v["group"] for v in r1["variants"]):
        best = max((v for v in r1["variants"] if v["group"] == group), key=lambda v: val[f"r1_{v['name']}"])
        if val[f"r1_{best['name']}"] >= start_val + VARIANTS["combo_margin"]:
            combo.update(best["set"])
            chosen.append(best["name"])
    if len(chosen) >= 2:
        _run_all([_spec(args, "search", "r2_combo_" + "+".join(chosen), "sc", combo, lpc, seed, False)], 1)
    if args.confirm_top:  # re-rank the top SC configs and the supervised arm on a second seed (val only)
        top = sorted([r for r in _load(args.results_dir, "search") if r["arm"] == "sc" and r["seed"] == seed
                      and not r["name"].startswith("ref_")], key=lambda r: -r["val_acc"])[: args.confirm_top]
        sup = {"head": heads["supervised"]}
        specs = [_spec(args, "search", r["name"], "sc", r["params"], lpc, s, False) for r in top
                 for s in args.confirm_seeds]
        specs += [_spec(args, "search", f"r0_sup_{heads['supervised']}", "supervised", sup, lpc, s, False)
                  for s in args.confirm_seeds]
        _run_all(specs, args.jobs)


def run_round(args, number: int) -> None:
    """A later search round: the variants of ``ROUNDS[number]``, each from the best SC config chosen so far
    (``selection`` over the search runs of the base steps), less the round's ``base_drop`` keys, with its
    ``base_set`` laid over; supervised variants take the chosen supervised head. ``references``: also
    supervised-only and the chosen config itself at this round's ``--steps``."""
    rnd, lpc, seed = ROUNDS[number], args.labels_per_class[0], args.search_seed
    r1_steps = sorted({r["steps"] for r in _load(args.results_dir, "search") if r["name"].startswith("r1_")})
    if args.base_steps is None and not r1_steps:
        raise SystemExit(f"round {number} starts from round 1's choice, and {args.results_dir}/search has no "
                         "round-1 runs: run --stage search (--round 1) first, or pass --base-steps")
    sel = selection(args.results_dir, seed, steps=args.base_steps or r1_steps[0])
    sup_head = sel["heads"]["supervised"]
    base = {**{k: v for k, v in sel["sc_params"].items() if k not in rnd.get("base_drop", ())},
            **rnd.get("base_set", {})}
    specs = []
    if rnd.get("references"):
        specs += [_spec(args, "search", f"r0_sup_{sup_head}", "supervised", {"head": sup_head}, lpc, seed, False),
                  _spec(args, "search", sel["sc_name"], "sc", sel["sc_params"], lpc, seed, False)]
    for v in rnd["variants"]:
        if args.variants and v["name"] not in args.variants:
            continue
        supervised = v.get("arm", "sc") == "supervised"
        params = {"head": sup_head, **v["set"]} if supervised else {**base, **v["set"]}
        specs.append(_spec(args, "search", f"r{number}_{v['name']}", "supervised" if supervised else "sc", params,
                           lpc, seed, False))
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


def _chosen(args) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """(selection, SC config name, SC params): the search's choice, or --sc-config ("custom")."""
    sel = selection(args.results_dir, args.search_seed, steps=args.base_steps or args.steps)
    if args.sc_config:
        return sel, "custom", json.loads(args.sc_config)
    return sel, sel["sc_name"], sel["sc_params"]


def run_final(args) -> None:
    sel, sc_name, sc_params = _chosen(args)
    sup = sel["heads"]["supervised"]
    specs = []
    for lpc in args.labels_per_class:
        for seed in args.seeds:
            if "supervised" in args.arms:
                specs.append(_spec(args, "final", f"sup_{sup}", "supervised", {"head": sup}, lpc, seed, True))
            if "sc" in args.arms:
                specs.append(_spec(args, "final", f"sc_{sc_name}", "sc", sc_params, lpc, seed, True))
    _run_all(specs, args.jobs)


def run_probe(args) -> None:
    _, sc_name, sc_params = _chosen(args)
    _run_all([_probe_spec(args, sc_name, sc_params, seed) for seed in args.seeds], args.jobs)


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


def summarize_results(args) -> dict[str, Any]:
    """Selection, search table, final comparisons and probes, from the records in --results-dir."""
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
    return out



def _pct_rows(entry_name: str, arms: list[dict[str, Any]]) -> list[str]:
    return [f"- {entry_name} {a['name']}: "
            + ", ".join(f"seed {s}: {100 * t:.2f}" for s, t in zip(a["seeds"], a["test"])) for a in arms if a]


def markdown_block(report: dict[str, Any]) -> str:
    cfg, sel = report["config"], report.get("selection", {})
    lines = ["- Every run used 1 torch thread, 2 runs at a time, on a machine shared with other jobs (wall times "
             "are indicative).", "",
             "Protocol: Fashion-MNIST, the paper's MNIST net (`sc_mnist`), ±2 px shifts, no flips, SGD (0.9, wd 5e-4), "
             "lr 0.05 cosine, labelled batch 64; an SC arm is either joint training (CE + λ·SC) with an unlabelled "
             "batch of 128 from all 60k train images at every step, or two-stage (SC pre-training on batches of 192, "
             "then fine-tuning), with the same number of labelled optimizer steps as supervised-only. "
             "Choices on a 100/class validation split drawn from the non-labelled train images; test scored once at "
             "the end of each final run. The search rounds: `benchmarks/ablation_variants.json`.", ""]
    if report["search"]:
        lines += ["### Search (validation accuracy, %)", "",
                  f"Heads chosen: {sel.get('heads')}. SC config chosen: `{sel.get('sc_name')}` "
                  f"(ranked on {sel.get('ranked_on_seeds')} seed(s)).", ""]
        rows = [(s["name"], s["seed"], s["lpc"], s["steps"], f"{100 * s['val_acc']:.1f}",
                 f"{s['sc_final']:.3f}" if s["sc_final"] is not None else "-", s["wall_s"], s["params"])
                for s in report["search"]]
        lines += [markdown_table(["run", "seed", "labels/class", "steps", "val acc", "final SC loss", "wall s",
                                  "config"], rows), ""]
    finals = sorted(report["final"].items(), key=lambda kv: int(kv[0][3:]))
    if finals:
        lines += ["### Final (test accuracy, %, mean ± std over seeds)", ""]
        rows = []
        for key, entry in finals:
            sup = entry["supervised"] or {}
            rows += [(key[3:], f"{sup.get('name')}: {_ms(sup.get('test', []))}", f"{sc['name']}: {_ms(sc['test'])}",
                      sc.get("gain_pt"), sc.get("per_seed_gain_pt"), sc.get("two_std_pt"), sc.get("criterion_met"),
                      sc["seeds"], f"{statistics.mean(sup.get('wall_s', [0])):.0f} / {statistics.mean(sc['wall_s']):.0f}")
                     for sc in entry["sc_configs"].values()]
        lines += [markdown_table(["labels/class", "supervised only", "SC config", "gain (pt)", "gain per seed (pt)",
                                  "2·std (pt)", "SC > sup by > 2 std", "seeds", "wall s / run (sup / SC)"], rows), ""]
        lines += ["Per-seed test accuracies:", ""]
        lines += [line for key, entry in finals
                  for line in _pct_rows(key, [entry["supervised"], *entry["sc_configs"].values()])]
        lines.append("")
    probes = report["probe"]
    if probes:
        lines += ["### Linear probe on frozen `stages.1` features (test accuracy, %)", ""]
        rows = [(k.split("|")[0], k.split("|lpc")[1], _ms(d["random"]), _ms(d["sc"]), _ms(d["random_knn"]),
                 _ms(d["sc_knn"]), len(d["sc"]))
                for k, d in sorted(probes.items(), key=lambda kv: (kv[0].split("|")[0],
                                                                   int(kv[0].split("|lpc")[1])))]
        lines += [markdown_table(["probe run", "labels/class", "random init (linear)", "SC pre-trained (linear)",
                                  "random (kNN)", "SC (kNN)", "seeds"], rows), ""]
        for name in dict.fromkeys(k.split("|")[0] for k in probes):
            d = next(v for k, v in probes.items() if k.startswith(name + "|"))
            lines.append(f"- `{name}`: SC pre-training {d['steps']} steps of 192 images (lr 0.05 cosine), "
                         f"{statistics.mean(d['pretrain_wall_s']):.0f} s per seed; SC loss `{d['params']}` "
                         "(sc_weight/rampup unused in pre-training).")
        lines.append("")
    if sel.get("sc_params"):
        lines += [f"Chosen SC config: `{_describe(sel['sc_params'])}`", ""]
    if cfg.get("notes"):
        lines += [Path(cfg["notes"]).read_text().strip(), ""]
    lines += ["Commands:", "", "```", *cfg["commands"], "```"]
    return harness.results_block(report, "SC ablation (issue 8)", lines)


# -- main ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    rounds = "; ".join(f"{n} = {r['title']}" for n, r in ROUNDS.items())
    ap = harness.parser(__doc__, raw_description=True,
                        smoke="a few steps of search round 0, final and probe into a scratch results dir (CI, "
                        "< 60 s)")
    ap.add_argument("--stage", choices=("search", "final", "probe", "report"), default="search",
                    help="search: one seed, val only; final: --seeds, test once; probe: linear probe SC vs random; "
                         "report: only summarise the JSON already in --results-dir")
    ap.add_argument("--labels-per-class", type=int, nargs="+", default=[10],
                    help="label budgets; search uses the first one, final and probe use all (default: 10)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="seeds of the final/probe stage; a seed fixes the label subset and the init (default 1 2 3)")
    ap.add_argument("--search-seed", type=int, default=0, help="seed of the search stage (default 0)")
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), default=1,
                    help=f"search round of benchmarks/ablation_variants.json: {rounds} (default 1)")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="choose heads and the SC config among the search runs of this many steps (default: "
                         "--steps; search --round 3+: the steps of the round-1 search)")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="search --round 3+: only these variant names of the round (default: all)")
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
                    help="final/probe: a JSON dict of SC params (keys as sc_start) instead of the search's choice")
    ap.add_argument("--jobs", type=int, default=2, help="training processes at once, 1 torch thread each (default 2)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where raw JSON per run goes")
    ap.add_argument("--work-dir", default=None,
                    help="where the scratch run dirs go; each run's files are deleted after it (default: a new "
                         "temporary directory, removed at the end)")
    ap.add_argument("--force", action="store_true", help="redo runs whose JSON already exists")
    ap.add_argument("--notes", default=None, help="a markdown file appended to the RESULTS.md section")
    ap.add_argument("--commands", nargs="*", default=[],
                    help="the command lines to list in RESULTS.md (default: this one)")
    args = ap.parse_args(argv)
    args.commands = args.commands or ["python benchmarks/sc_ablation.py " + " ".join(sys.argv[1:])]
    return args


def run_smoke(args) -> None:
    """Search round 0's paper head for both arms, a frozen two-stage run (the later rounds' keys), final, probe."""
    args.steps, args.base_steps, args.probe_steps, args.val_per_class, args.jobs = 3, 3, 3, 5, 1
    args.labels_per_class, args.seeds = [2], [1]
    frozen = ["stages.0", "stages.1"]
    _run_all([_spec(args, "search", "r0_sup_paper", "supervised", {"head": "paper"}, 2, 0, False),
              _spec(args, "search", "r0_sc_paper", "sc", _sc_params(), 2, 0, False),
              _spec(args, "search", "r4_ft_freeze01", "sc",
                    _sc_params(mode="two_stage", pretrain_max_steps=2, freeze=frozen, num_patches=3), 2, 0, False),
              _spec(args, "search", "r4_sup_freeze01", "supervised", {"head": "paper", "freeze": frozen}, 2, 0,
                    False)], 1)
    run_final(args)
    run_probe(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        if args.smoke:
            args.results_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sc_ablation_smoke_")))
            run_smoke(args)
        elif args.stage == "search" and args.round == 1:
            run_search(args)
        elif args.stage == "search":
            run_round(args, args.round)
        elif args.stage == "final":
            run_final(args)
        elif args.stage == "probe":
            run_probe(args)
        scratch = {"work_dir"}  # where the deleted scratch runs were: no part of the results
        config = {k: v for k, v in vars(args).items() if k not in scratch}
        report = {**harness.report_header("sc_ablation", args, config), **summarize_results(args)}
    report["elapsed_s"] = round(time.time() - t0, 1)
    harness.publish(report, args, "sc-ablation-issue8", markdown_block)


if __name__ == "__main__":
    main()
