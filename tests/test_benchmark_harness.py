"""The benchmark harness: result cache keys, the cache itself, the committed results it must keep finding, the
timing read from a run's log, the RESULTS.md publishing, the interleaved-round timing and the models the timing
benchmarks build."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sclearn.rundir import RunDirLock, RunDirLockedError
from tests.test_benchmark_scripts import BENCH, ROOT, load_script

load_script("common.py")  # puts benchmarks/ on sys.path, where the scripts find `_harness`
harness = importlib.import_module("_harness")


# -- keys ----------------------------------------------------------------------------------------------------
def test_config_hash_covers_what_changes_the_computation_and_nothing_else() -> None:
    run = {"data": "idx:/data/x", "lr": 0.1, "mode": "supervised", "seed": 0}
    key = harness.config_hash([run])
    assert len(key) == 8 and int(key, 16) >= 0
    assert harness.config_hash([dict(reversed(run.items()))]) == key  # field order is irrelevant
    plumbing = {"output_dir": "runs/a", "resume": True, "num_workers": 4, "log_every": 5, "report_to": "none",
                "checkpoint_every": 10, "keep_checkpoints": 1, "progress": False, "init_from": "runs/pre"}
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


def test_sc_ablation_scratch_runs_never_delete_files_sclearn_did_not_write(tmp_path: Path) -> None:
    ab = load_script("sc_ablation.py")
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"my": "own config"}')  # a run file name, not written by sclearn
    spec = {"fields": {"mode": "supervised"}, "run_dir": str(run_dir)}
    with pytest.raises(ValueError, match="no sclearn run"), ab.scratch_trainer(spec):
        pytest.fail("the Trainer must not start over the user's files")
    assert (run_dir / "config.json").read_text() == '{"my": "own config"}'
    live = tmp_path / "live"  # a scratch run dir another process is writing: locked, left alone
    live.mkdir()
    (live / "metrics.jsonl").write_text("{}\n")
    lock = RunDirLock(live).acquire()
    try:
        with pytest.raises(RunDirLockedError), ab.scratch_trainer({**spec, "run_dir": str(live)}):
            pytest.fail("the Trainer must not start in a locked run dir")
    finally:
        lock.release()
    assert (live / "metrics.jsonl").read_text() == "{}\n"
    args = ab.parse_args(["--stage", "final"])
    assert args.work_dir is None and ab.work_dir(args) == ab.work_dir(args)  # default: one temporary dir of its own
    assert ab.work_dir(args).is_dir() and ab.work_dir(args).name.startswith("sc_ablation_runs_")


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


# -- timing --------------------------------------------------------------------------------------------------
common = importlib.import_module("common")


def test_markdown_table_shows_an_unknown_value_as_a_dash_not_none() -> None:
    # a resumed run has no share of a core; the report must not print Python's "None"
    assert common.markdown_table(["arm", "share"], [["sc_init", None], ["no_init", 0.983]]) == (
        "| arm | share |\n|---|---|\n| sc_init | - |\n| no_init | 0.983 |")
    assert common.cell(None) == "-" and common.cell(0) == "0" and common.cell("") == ""


def test_training_step_is_one_optimizer_step_on_the_loss() -> None:
    torch.manual_seed(0)
    net, x = torch.nn.Linear(3, 2), torch.randn(5, 3)
    before = copy.deepcopy(net)
    step = common.training_step(lambda: net(x).square().mean(), torch.optim.SGD(net.parameters(), lr=0.5))
    loss = step()
    reference = before(x).square().mean()
    grads = torch.autograd.grad(reference, list(before.parameters()))
    assert not loss.requires_grad and loss.item() == pytest.approx(reference.item())
    for p, q, g in zip(net.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p.detach(), (q - 0.5 * g).detach())
    step()  # the gradient is zeroed first: a second step uses its own gradient only
    assert net.weight.grad is not None


def test_run_rounds_warms_up_rotates_keeps_the_clean_rounds_and_pairs_them(monkeypatch) -> None:
    calls: list[str] = []
    steps = {k: (lambda k=k: calls.append(k)) for k in ("a", "b")}
    seconds = iter(range(1, 100))  # each timed step takes 1, 2, 3, ... s on both clocks

    def fake_time_step(step, device):
        step()
        t = float(next(seconds))
        return {"wall": t, "cpu": t / 10}

    foreign = iter([0.0, 0.5, 0.0, 0.9])  # per round (the second is disturbed), then over all rounds
    monkeypatch.setattr(common, "time_step", fake_time_step)
    monkeypatch.setattr(common.CpuMeter, "foreign_cpu_fraction", lambda self: next(foreign))
    args = argparse.Namespace(warmup=1, steps=2, max_rounds=5, max_foreign_cpu=0.1)
    rounds = common.run_rounds(steps, ["a", "b"], args, torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates every round
    assert (rounds.run, rounds.clean, rounds.used_clean_only, rounds.foreign_cpu_fraction) == (3, 2, True, 0.9)
    # round 1: a=1 s, b=2 s; round 2 (dropped): b=3, a=4; round 3: a=5, b=6
    assert rounds.times["wall"] == {"a": [1.0, 5.0], "b": [2.0, 6.0]}
    stats = rounds.by_clock({"a_over_b": ("a", "b")})
    assert stats["cpu"]["a_over_b"]["mean"] == pytest.approx((1 / 2 + 5 / 6) / 2, abs=1e-4)  # 4 digits kept
    assert stats["wall"]["ms_per_step"]["b"]["median"] == 4000.0
    assert rounds.record()["rounds"] == {"run": 3, "clean": 2, "used": 2, "clean_only": True}
    monkeypatch.setattr(common.CpuMeter, "foreign_cpu_fraction", lambda self: 0.9)  # never clean: all kept
    disturbed = common.run_rounds(steps, ["a", "b"], args, torch.device("cpu"))
    assert (disturbed.run, disturbed.clean, disturbed.disturbed) == (5, 0, True)
    assert len(disturbed.times["wall"]["a"]) == 5


def test_interleaved_rotates_the_order_and_summarises_each_measurement() -> None:
    order: list[str] = []
    stats = common.interleaved({k: (lambda k=k: order.append(k) or float(len(order))) for k in "xyz"}, reps=3)
    assert "".join(order) == "xyzyzxzxy"
    assert [stats[k]["n"] for k in "xyz"] == [3, 3, 3] and stats["x"]["mean"] == pytest.approx((1 + 6 + 8) / 3)


# -- the step-timing benchmarks' flags and models ------------------------------------------------------------
def round_flags(argv: list[str]) -> argparse.Namespace:
    p = harness.parser("t", smoke=harness.SMOKE_ROUNDS, data=None)
    harness.add_round_flags(p, cases=["sc_cifar10"], threads=1, clock="cpu", max_foreign_cpu=0.2)
    return harness.parse_round_flags(p, argv)


def test_round_flags_smoke_defaults_lose_to_explicit_flags_and_bad_values_are_refused(capsys) -> None:
    args = round_flags([])
    assert (args.cases, args.steps, args.warmup, args.max_rounds, args.batch_size) == (["sc_cifar10"], 20, 3, 80, None)
    smoke = round_flags(["--smoke"])
    assert (smoke.steps, smoke.warmup, smoke.max_rounds, smoke.batch_size) == (2, 1, 2, harness.SMOKE_BATCH)
    assert round_flags(["--smoke", "--steps", "5", "--batch-size", "8"]).steps == 5
    for bad in (["--batch-size", "1"], ["--steps", "4", "--max-rounds", "3"]):
        with pytest.raises(SystemExit):
            round_flags(bad)
    assert "--batch-size must be >= 2" in capsys.readouterr().err


def test_build_case_wraps_the_backbone_as_the_trainer_does_beside_a_hookless_twin() -> None:
    args = argparse.Namespace(seed=0, batch_size=3)
    built = harness.build_case(harness.STEP_CASES["sc_cifar10"], args, patch_size=0.5, distance="cosine")
    assert built.layer == built.model.backbone.sc_layer and built.info() == {
        "model": "sc_cifar10", "layer": built.layer, "img_size": 32, "batch_size": 3}
    assert built.x.shape == (3, 3, 32, 32) and built.y.shape == (3,)
    loss = built.model.loss_for(built.layer)
    assert (loss.patch_size, loss.distance) == (0.5, "cosine")
    twin, backbone = built.twin.state_dict(), built.model.backbone.state_dict()
    assert all(torch.equal(twin[k], backbone[k]) for k in backbone)
    assert not any(m._forward_hooks for m in built.twin.modules())  # the wrapper's hooks are on the backbone only
    assert any(m._forward_hooks for m in built.model.backbone.modules())


def test_data_path_limit_is_the_trainers_network_and_one_sgd_step() -> None:
    dp = load_script("data_path.py")
    cfg = harness.TrainConfig(backbone="sc_mnist", channels=1, layers=("stages.1",), mode="joint", sc_weight=0.0,
                              lr=0.1, momentum=0.0, weight_decay=0.0, seed=3, batch_size=4)
    limit = dp.Limit(cfg)
    assert isinstance(limit.model, harness.MultiLayerSC) and limit.images_per_step == 4 + cfg.unlabeled_batch_size
    backbone = copy.deepcopy(limit.model.backbone)
    limit.step()
    # the reference: CE on the labelled rows of one forward over all images, plain SGD (batch norm sees them all)
    loss = F.cross_entropy(backbone(limit.x)[:4], limit.y)
    grads = torch.autograd.grad(loss, list(backbone.parameters()))
    for (name, p), g, q in zip(backbone.named_parameters(), grads, limit.model.backbone.parameters()):
        torch.testing.assert_close(q.detach(), (p - 0.1 * g).detach(), msg=name)
    supervised = dp.Limit(harness.TrainConfig(backbone="sc_mnist", channels=1, batch_size=4))
    assert not isinstance(supervised.model, harness.MultiLayerSC) and supervised.images_per_step == 4
    assert supervised.img_per_s(1, 1) > 0


@pytest.mark.parametrize("script", ["overhead.py", "early_stop.py", "sc_ablation.py"])
def test_help_of_the_scripts_without_data_smoke(script: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--smoke" in text and "--write-results" in text
