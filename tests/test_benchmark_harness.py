"""The benchmark harness: result cache keys, the cache itself, the committed results it must keep finding, the
timing read from a run's log, the RESULTS.md publishing, and the library builders the hand-written loops use."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import balanced_labels, pattern_images
from tests.test_benchmark_scripts import BENCH, ROOT, load_script

load_script("common.py")  # puts benchmarks/ on sys.path, where the scripts find `_harness`
harness = importlib.import_module("_harness")


# -- keys ----------------------------------------------------------------------------------------------------
def test_config_hash_covers_what_changes_the_computation_and_nothing_else() -> None:
    run = {"data": "idx:/data/x", "lr": 0.1, "mode": "supervised", "seed": 0}
    key = harness.config_hash([run])
    assert len(key) == 8 and int(key, 16) >= 0
    assert harness.config_hash([dict(reversed(run.items()))]) == key  # field order is irrelevant
    plumbing = {"output_dir": "/tmp/a", "resume": True, "num_workers": 4, "log_every": 5, "report_to": "none",
                "checkpoint_every": 10, "keep_checkpoints": 1, "progress": False, "init_from": "/tmp/pre"}
    assert harness.config_hash([{**run, **plumbing}]) == key
    for field, value in [("lr", 0.01), ("seed", 1), ("mode", "joint"), ("data", "idx:/data/y")]:
        assert harness.config_hash([{**run, field: value}]) != key, field
    assert harness.config_hash([run, run]) != key  # a two-run arm is not its first run


def test_data_inside_the_repository_hashes_the_same_in_every_checkout() -> None:
    inside = f"idx:{ROOT / 'data' / 'mnist'}"
    assert harness.portable(inside) == "idx:data/mnist"
    assert harness.config_hash([{"data": inside}]) == harness.config_hash([{"data": "idx:data/mnist"}])
    for kept in ("idx:/usr/share/datasets/fashion-mnist", "uoft-cs/cifar10", "parquet:rel/dir"):
        assert harness.portable(kept) == kept


# -- the cache -----------------------------------------------------------------------------------------------
def test_result_cache_computes_once_and_reads_back(tmp_path: Path) -> None:
    cache = harness.ResultCache(tmp_path / "results")
    key = cache.key("arm_seed0", [{"lr": 0.1}])
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"acc": 0.5 + len(calls)}

    first = cache.run(key, compute, reuse=True, label="t")
    assert first == {"acc": 1.5, "key": key} and cache.get(key) == first
    assert cache.run(key, compute, reuse=True, label="t") == first and len(calls) == 1  # read back
    assert cache.run(key, compute, reuse=False, label="t")["acc"] == 2.5  # redone on request
    assert [p.name for p in (tmp_path / "results").iterdir()] == [f"{key}.json"]  # no temp file left
    cache.put(cache.key("a_first", [{}]), {"acc": 0.0})
    assert [r["acc"] for r in cache.records()] == [0.0, 2.5]  # file-name order
    assert harness.ResultCache(tmp_path / "none").records() == []


def test_sample_efficiency_finds_every_committed_result() -> None:
    se = load_script("sample_efficiency.py")
    args = se.parse_args(["--steps", "3000", "--seeds", "0", "1", "2", "--batch-size", "64", "--common-args",
                          '{"lr": 0.05, "schedule": "cosine"}', "--sc-args",
                          '{"layers": ["stages.1"], "distance": "cosine", "temperature": 0.1, "pool": "mean", '
                          '"patch_size": 3, "sc_weight": 0.1, "sc_rampup_steps": 600, "unlabeled_ratio": 2.0}'])
    cache = harness.ResultCache(BENCH / "sample_efficiency_results")
    for seed in (0, 1, 2):
        for arm in se.ARMS:
            key = cache.key(f"{arm}_seed{seed}", [f for _, f in se.arm_runs(arm, args, seed)])
            assert cache.get(key) is not None and cache.get(key)["key"] == key, key


def test_sc_ablation_search_rounds_in_the_variants_file_rerun_to_the_committed_runs(monkeypatch) -> None:
    """Every round of ablation_variants.json, replayed from the choice it started from, asks only for the
    committed runs: the rounds that were code are now data, and nothing they ran would be trained again."""
    ab = load_script("sc_ablation.py")
    asked: list[str] = []

    def committed(specs, jobs):
        asked.extend(s["key"] for s in specs)
        found = [harness.ResultCache(s["results_dir"]).get(s["key"]) for s in specs]
        missing = [s["key"] for s, r in zip(specs, found) if r is None]
        assert not missing, f"not among the committed results: {missing}"
        return found

    monkeypatch.setattr(ab, "_run_all", committed)
    ab.run_search(ab.parse_args(["--stage", "search"]))
    real_selection = ab.selection
    search = harness.ResultCache(BENCH / "ablation_results" / "search").records()
    for number, started_from in ((3, "r1_lam0.1"), (4, "r3_sqeuclid_T1"), (5, "r3_sqeuclid_T1")):
        params = next(r["params"] for r in search if r["name"] == started_from and r["steps"] == 600)
        monkeypatch.setattr(ab, "selection", lambda *a, p=params, n=started_from, **k: {
            "heads": {"supervised": "paper", "sc": "paper"}, "sc_name": n, "sc_params": p})
        ab.run_round(ab.parse_args(["--stage", "search", "--round", str(number)]), number)
    monkeypatch.setattr(ab, "selection", real_selection)  # the final choice: r5_pre_proj64
    ab.run_round(ab.parse_args(["--round", "3", "--steps", "1500", "--base-steps", "600", "--variants", "none"]), 3)
    ab.run_final(ab.parse_args(["--stage", "final", "--labels-per-class", "10", "40"]))
    ab.run_probe(ab.parse_args(["--stage", "probe", "--labels-per-class", "10", "40", "--probe-steps", "1500"]))
    assert {k.split("_")[0] for k in asked} == {"r0", "r1", "ref", "r2", "r3", "r4", "r5", "sup", "sc", "probe"}
    assert len(asked) == len(set(asked)) + 2  # round 3 at 600 steps re-asks round 0's supervised run and r1_lam0.1


def test_every_variant_of_the_variants_file_is_a_valid_run() -> None:
    ab = load_script("sc_ablation.py")
    assert sorted(ab.ROUNDS) == [1, 3, 4, 5]
    for number, rnd in ab.ROUNDS.items():
        names = [v["name"] for v in rnd["variants"]]
        assert len(names) == len(set(names)), number
        for v in rnd["variants"]:
            base = {"head": "paper"} if v.get("arm") == "supervised" else ab._sc_params()
            fields = ab.train_fields(v.get("arm", "sc"), {**base, **v["set"]}, lpc=10, seed=0, steps=600,
                                     data="idx:x", val_per_class=100, eval_test=False)
            harness.TrainConfig(**fields)  # raises on a bad field or value


# -- timing from the trainer's log ---------------------------------------------------------------------------
def test_loop_timing_from_the_log_windows(tmp_path: Path) -> None:
    lines = [{"step": 20, "stage": "pretrain", "img_per_s": 100.0}, {"event": "epoch_end", "step": 20},
             {"step": 50, "stage": "pretrain", "img_per_s": 300.0},
             {"step": 60, "stage": "finetune", "img_per_s": 50.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    fields = {"batch_size": 10, "pretrain_batch_size": 30, "mode": "two_stage"}
    timing = harness.loop_timing(tmp_path, fields)
    # pretrain: 20 steps x 30 images at 100 img/s + 30 x 30 at 300 = 6 + 3 s; finetune: 10 x 10 at 50 = 2 s
    assert timing == {"pretrain": {"loop_s": 9.0, "s_per_step": 0.18, "images_per_step": 30},
                      "finetune": {"loop_s": 2.0, "s_per_step": 0.2, "images_per_step": 10}}
    assert harness.loop_timing(tmp_path / "missing", fields) == {}


# -- report --------------------------------------------------------------------------------------------------
def test_publish_prints_the_report_and_writes_a_smoke_block_under_its_own_key(monkeypatch, capsys) -> None:
    written = {}
    monkeypatch.setattr(harness, "write_result_block", lambda key, body: written.update({key: body}))
    args = argparse.Namespace(smoke=True, write_results=False, data=f"idx:{ROOT / 'data'}", out=ROOT / "runs" / "x")
    report = harness.report_header("demo", args)
    assert report["config"] == {"smoke": True, "data": "idx:data", "out": "runs/x"}  # portable paths
    harness.publish(report, args, "demo", lambda r: harness.results_block(r, "Demo", ["- a line"]))
    assert json.loads(capsys.readouterr().out)["benchmark"] == "demo" and not written
    args.write_results = True
    harness.publish(report, args, "demo", lambda r: harness.results_block(r, "Demo", ["- a line"]))
    (key, body), = written.items()
    assert key == "demo-smoke"
    assert body.startswith("## Demo (smoke)\n") and f"- Command: `{report['command']}`" in body
    assert "- a line\n\nConfig:" in body and json.dumps(report["config"], indent=1) in body


# -- library builders ----------------------------------------------------------------------------------------
def test_loader_normalises_as_the_trainer_does(idx_dir: Path) -> None:
    from sclearn import data as sc_data

    cfg = harness.TrainConfig(data=f"idx:{idx_dir}", channels=1, translate=2, batch_size=16)
    splits = sc_data.semi_supervised_splits(sc_data.load_image_dataset(cfg.data), labels_per_class=None, seed=0)
    images, labels = next(iter(harness.loader(cfg, splits, splits.test, train=False, batch_size=7)))
    # the fixture's own arrays (conftest.write_idx_dir): train seed 0, test seed 1
    train = pattern_images(balanced_labels(30, seed=0), seed=0).astype(np.float64) / 255
    test = pattern_images(test_labels := balanced_labels(10, seed=1), seed=1)[:7].astype(np.float64) / 255
    expected = (test - train.mean()) / train.std()
    assert images.shape == (7, 1, 28, 28) and labels.tolist() == test_labels[:7].tolist()
    np.testing.assert_allclose(images[:, 0].numpy(), expected, atol=1e-5)
    shuffled = harness.loader(cfg, splits, splits.labeled, train=True, drop_last=True, resumable=True)
    assert len(shuffled) == len(splits.labeled) // 16 and hasattr(shuffled.batch_sampler, "set_position")


def test_sc_losses_follow_the_config_per_layer() -> None:
    cfg = harness.TrainConfig(layers=("a", "b"), layer_patch_sizes=(2, 0.5), distance="cosine", temperature=0.1,
                              pool="mean", num_patches=3, min_offset=1, projector_dim=8)
    losses = harness.sc_losses(cfg, cfg.layers)
    assert list(losses) == ["a", "b"] and [loss.patch_size for loss in losses.values()] == [2, 0.5]
    for loss in losses.values():
        assert (loss.distance, loss.temperature, loss.pool, loss.num_patches, loss.min_offset) == (
            "cosine", 0.1, "mean", 3, 1)
    assert losses["a"].projector is not None and losses["a"].projector is not losses["b"].projector
    plain = harness.sc_losses(harness.TrainConfig(patch_size=0.55), ["x"])["x"]
    assert plain.patch_size == 0.55 and plain.projector is None and plain.distance == "l2"


def test_bare_step_is_one_sgd_step_on_the_labelled_cross_entropy() -> None:
    cfg = harness.TrainConfig(backbone="sc_mnist", channels=1, layers=("stages.1",), mode="joint", sc_weight=0.0,
                              lr=0.1, momentum=0.0, weight_decay=0.0, seed=3)
    step = harness.BareStep(cfg, num_classes=10)
    backbone = copy.deepcopy(step.model.backbone)
    torch.manual_seed(0)
    x, y, unlabeled = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)), torch.randn(8, 1, 28, 28)
    assert step(x, y, unlabeled) == 12
    # the reference: CE on the labelled rows of one forward over all 12 images, plain SGD (batch norm sees all 12)
    loss = F.cross_entropy(backbone(torch.cat([x, unlabeled]))[:4], y)
    grads = torch.autograd.grad(loss, list(backbone.parameters()))
    for (name, p), g, q in zip(backbone.named_parameters(), grads, step.model.backbone.parameters()):
        torch.testing.assert_close(q.detach(), (p - 0.1 * g).detach(), msg=name)
    supervised = harness.BareStep(harness.TrainConfig(backbone="sc_mnist", channels=1), num_classes=10)
    assert not isinstance(supervised.model, harness.MultiLayerSC) and supervised(x, y) == 4


@pytest.mark.parametrize("script", ["overhead.py", "sc_ablation.py"])
def test_help_of_the_scripts_without_data_smoke(script: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--smoke" in text and "--write-results" in text
