"""The paper-table benchmarks (``mnist_table3.py``, ``table2_convergence.py``) and what they share
(``table_runs.py``, ``table_report.py``, the probe figure of ``paper_figures.py``).

The smoke runs' reports are checked against values computed here by hand from the runs' own files (result
records, each run's summary.json, metrics.jsonl and split_indices.json): the mean, sample std, per-seed
differences, the paired t statistic and its p value (two seeds: df = 1, where Student's t is the Cauchy law and
P(|T| >= t) = 1 - 2 atan(t) / pi), the verdict's branch, the convergence stop's reason, one test read per run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sclearn import TrainConfig
from sclearn.presets import SC_PRESETS
from tests.test_benchmark_scripts import BENCH, ROOT, help_text, load_script

load_script("common.py")  # puts benchmarks/ on sys.path
harness = importlib.import_module("_harness")
table_runs = importlib.import_module("table_runs")
table_report = importlib.import_module("table_report")
paper_figures = importlib.import_module("paper_figures")
t3 = load_script("mnist_table3.py")
t2 = load_script("table2_convergence.py")

TEST_KEYS = ("test_acc", "knn_top1", "linear_top1")


def run_script(script: str, idx_dir: Path, tmp_path: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--data", f"idx:{idx_dir}", "--results-dir",
         str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs"), "--figure-dir", str(tmp_path / "fig"), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def records(tmp_path: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for path in (tmp_path / "res").glob("*.json"):
        r = json.loads(path.read_text())
        out[(r["arm"], r["seed"])] = r
    return out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def hand_paired(a: list[float], b: list[float]) -> tuple[list[float], float, float, float, float]:
    """(differences, mean, sample sd, t, two-sided p) of a - b for two seeds (df = 1: the Cauchy law)."""
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    t = mean / (sd / math.sqrt(len(d)))
    return d, mean, sd, t, 1 - 2 * math.atan(abs(t)) / math.pi


def check_paired_report(report: dict, recs: dict, arm: str, base: str, seeds: list[int]) -> dict:
    """The report's errors, summaries and the ``arm - base`` comparison against hand-computed values."""
    err = {a: [recs[(a, s)]["test_err_pct"] for s in seeds] for a in (arm, base)}
    for a, values in err.items():
        assert [report["errors"][a][str(s)] for s in seeds] == values
        assert report["arms"][a]["test_err_pct"]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-3)
        mean = sum(values) / len(values)
        assert report["arms"][a]["test_err_pct"]["std"] == pytest.approx(
            math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), abs=1e-3)
    (c,) = [c for c in report["comparisons"] if (c["arm"], c["baseline"]) == (arm, base)]
    d, mean, sd, t, p = hand_paired(err[arm], err[base])
    assert [c["differences"][str(s)] for s in seeds] == pytest.approx(d)
    assert c["mean_difference"] == pytest.approx(mean) and c["std_difference"] == pytest.approx(sd)
    assert c["t"] == pytest.approx(t) and c["df"] == 1 and c["p_value"] == pytest.approx(p, rel=1e-9)
    if p >= table_report.ALPHA:
        assert c["verdict"].startswith("No significant difference at n=2")
    else:
        assert c["verdict"].startswith(f"{arm} has {'lower' if mean < 0 else 'higher'} test error than {base}")
    return c


def check_test_error(rec: dict, run_dir: Path) -> None:
    """The record's test error is the last run's summary.json accuracy, a whole number of test images."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert rec["test_acc"] == summary["final_test_acc"]
    assert rec["test_err_pct"] == pytest.approx(100 * (1 - summary["final_test_acc"]), abs=1e-3)
    wrong = rec["test_err_pct"] * summary["num_test"] / 100
    assert wrong == pytest.approx(round(wrong), abs=1e-6)


def reads_of_test(run_dir: Path) -> list[dict]:
    return [r for r in metrics(run_dir) if any(k in r for k in TEST_KEYS)]


# -- Table 3 -------------------------------------------------------------------------------------------------
def test_table3_smoke_report_is_what_the_result_files_say(idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_script("mnist_table3.py", idx_dir, tmp_path, "--seeds", "0", "1")
    recs = records(tmp_path)
    assert set(recs) == {(a, s) for a in ("sc_init", "no_init") for s in (0, 1)}
    for (arm, _), rec in recs.items():
        runs = tmp_path / "runs" / rec["key"]
        assert rec["run_dir"] == f"<runs-dir>/{rec['key']}"  # a runs dir outside the repository: no absolute path
        last = runs / ("finetune" if arm == "sc_init" else "supervised")
        check_test_error(rec, last)
        (read,) = reads_of_test(last)  # the test set is read once, after the last step, and never by the SC run
        assert set(read) & set(TEST_KEYS) == {"test_acc"}
        assert read["step"] == max(r["step"] for r in metrics(last))
        if arm == "sc_init":
            assert reads_of_test(runs / "pretrain") == []
            assert json.loads((last / "config.json").read_text())["init_from"] == str(runs / "pretrain")
    c = check_paired_report(report, recs, "sc_init", "no_init", [0, 1])
    assert report["verdict"] == c["verdict"]
    assert report["test_split_line"] == "once per arm and seed."
    assert report["code_line"] == f"every run on sclearn digest {table_runs.code_version()['library']}."
    assert report["arms"]["sc_init"]["paper_err_pct"] == [0.34, 0.02]
    assert (tmp_path / "fig" / "mnist_table3.png").read_bytes()[:4] == b"\x89PNG"
    block = t3.markdown_block(report)
    assert "| sc_init − no_init | 0: {:+.2f}, 1: {:+.2f} |".format(*c["differences"].values()) in block
    assert "0.34 ± 0.02 %" in block and c["verdict"] in block
    for (arm, seed), rec in recs.items():  # the wall time of each arm and seed, in minutes
        assert f"| {arm} | {seed} | {round(rec['total_s'] / 60, 1)} | {rec['cpu_share']} |" in block
    # --report-only: the same numbers from the result files, seed 2 listed as missing, nothing trained
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    capsys.readouterr()
    try:
        assert t3.main(["--smoke", "--data", f"idx:{idx_dir}", "--results-dir", str(tmp_path / "res"), "--runs-dir",
                        str(tmp_path / "runs"), "--figure-dir", str(tmp_path / "fig2"), "--seeds", "0", "1", "2",
                        "--report-only"]) == 0
    finally:
        torch.set_num_threads(threads)
    again = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == files
    assert [k.rsplit("_", 1)[0] for k in again["missing"]] == ["sc_init_seed2", "no_init_seed2"]
    assert again["comparisons"][0]["differences"] == c["differences"] and again["verdict"] == c["verdict"]
    assert "Missing (not run yet): sc_init_seed2_" in t3.markdown_block(again)


def test_table3_fashion_mnist_has_its_own_results_and_no_paper_number(tmp_path: Path) -> None:
    args = t3.parse_args(["--dataset", "fashion-mnist"])
    assert args.data == harness.FASHION_MNIST and args.seeds == [0, 1, 2]
    assert t3.DATASETS["fashion-mnist"].name == "fashion_table3" and t3.DATASETS["fashion-mnist"].paper is None
    mnist = t3.parse_args([])
    assert mnist.data == f"idx:{ROOT / 'data' / 'mnist'}"
    runs = {arm: t3.arm_runs(arm, args, 0) for arm in t3.ARMS}
    assert [n for n, _ in runs["sc_init"]] == ["pretrain", "finetune"] and [n for n, _ in runs["no_init"]] == [
        "supervised"]
    for (_, f), (_, g) in zip(runs["sc_init"], t3.arm_runs("sc_init", mnist, 0)):
        assert {k: v for k, v in f.items() if k != "data"} == {k: v for k, v in g.items() if k != "data"}


def test_table3_protocol_is_the_paper_recipe_and_reads_test_only_at_the_end() -> None:
    args = t3.parse_args(["--seeds", "0"])
    (_, pre), (_, fine) = t3.arm_runs("sc_init", args, 0)
    ((_, sup),) = t3.arm_runs("no_init", args, 0)
    pre_cfg = TrainConfig(**pre)
    assert (pre_cfg.mode, pre_cfg.pretrain_epochs, pre_cfg.pretrain_lr, pre_cfg.patch_size) == ("pretrain", 20, 0.1, 6)
    assert (pre_cfg.distance, pre_cfg.temperature, pre_cfg.pool) == ("l2", 1.0, "flatten")  # the paper's loss
    assert not pre_cfg.eval_test and pre_cfg.val_per_class == 0  # the SC run reads no test image
    fine_cfg = TrainConfig(**{**fine, "init_from": "x"})
    assert (fine_cfg.mode, fine_cfg.epochs, fine_cfg.lr) == ("finetune", 30, 0.01)
    assert (sup["mode"], sup["epochs"], sup["lr"]) == ("supervised", 30, 0.1)
    for f in (pre, fine, sup):
        assert (f["schedule"], f["batch_size"], f["labels_per_class"], f["hflip"], f["translate"]) == (
            "plateau", 128, None, False, 2)
        assert f["eval_every"] == harness.BIG  # the last epoch's evaluation only
    assert fine["eval_test"] and sup["eval_test"]


def test_table3_protocol_reruns_the_earlier_mnist_seed0_results() -> None:
    """The earlier seed-0 records (one two_stage run per arm, the sc_init log with two writers, and two 300-step
    timing records) are not read back: both arms' keys under this protocol are new."""
    earlier = {"sc_init_seed0_47bc99d1", "no_init_seed0_54c2bd97", "sc_init_seed0_16920cdf", "no_init_seed0_a845225c"}
    committed = {p.stem for p in (BENCH / "mnist_table3_results").glob("*.json")}
    assert earlier <= committed
    args = t3.parse_args(["--seeds", "0"])
    cache = harness.ResultCache(BENCH / "mnist_table3_results")
    for arm in t3.ARMS:
        key = cache.key(f"{arm}_seed0", [f for _, f in t3.arm_runs(arm, args, 0)])
        assert key not in earlier
        rec = cache.get(key)  # a record under this protocol, once it has run: on the code the protocol fixed
        assert rec is None or rec["code"]["library"] and rec["configs"][list(rec["configs"])[-1]]["eval_test"]


# -- Table 2 -------------------------------------------------------------------------------------------------
def test_table2_smoke_report_probe_curve_and_stop_match_the_run_files(idx_dir: Path, tmp_path: Path) -> None:
    report = run_script("table2_convergence.py", idx_dir, tmp_path, "--seeds", "0", "1", "--arms", "sup",
                        "sc_paper")
    recs = records(tmp_path)
    assert set(recs) == {(a, s) for a in ("sup", "sc_paper") for s in (0, 1)}
    for seed in (0, 1):
        sc, sup = recs[("sc_paper", seed)], recs[("sup", seed)]
        pre, fine = tmp_path / "runs" / sc["key"] / "pretrain", tmp_path / "runs" / sc["key"] / "finetune"
        base = tmp_path / "runs" / sup["key"] / "supervised"
        check_test_error(sc, fine)
        check_test_error(sup, base)
        assert len(reads_of_test(fine)) == len(reads_of_test(base)) == 1 and reads_of_test(pre) == []
        # every run of a seed: the same labelled images and val split; val apart from them; SC on every image
        splits = [json.loads((d / "split_indices.json").read_text()) for d in (pre, fine, base)]
        assert all(s["labeled"] == splits[0]["labeled"] and s["val"] == splits[0]["val"] for s in splits)
        assert len(splits[0]["labeled"]) == 100 and len(splits[0]["val"]) == 50
        assert not set(splits[0]["labeled"]) & set(splits[0]["val"])
        assert sc["num_unlabeled"] == 300 and sc["num_labeled"] == 100
        # the probe curve: one point per SC epoch, as metrics.jsonl logged it, scored on val
        ends = [r for r in metrics(pre) if r.get("event") == "epoch_end"]
        assert [p["epoch"] for p in sc["probe_curve"]] == [1, 2]
        for point, end in zip(sc["probe_curve"], ends):
            assert point["epoch_loss"] == end["epoch_loss"]
            assert point["linear_val_top1"] == end["linear_val_top1"] and point["knn_val_top1"] == end["knn_val_top1"]
            assert 0.0 <= point["linear_val_top1"] <= 1.0
        # the stop (smoke: patience 1, min 1 epoch, cap 2): converged unless epoch 2 beat epoch 1 by 0.1%
        loss1, loss2 = (e["epoch_loss"] for e in ends)
        expected = "epoch_cap" if loss2 < loss1 - 1e-3 * abs(loss1) else "converged"
        assert sc["stages"]["pretrain"]["stop_reason"] == expected and sc["stages"]["pretrain"]["epochs"] == 2
    check_paired_report(report, recs, "sc_paper", "sup", [0, 1])
    assert [(c["arm"], c["baseline"], c["role"]) for c in report["comparisons"]] == [("sc_paper", "sup", "fixed")]
    assert report["test_split_line"] == "once per arm and seed."
    for name in ("table2_convergence.png", "table2_convergence_probe_sc_paper.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:4] == b"\x89PNG"
    block = t2.markdown_block(report)
    assert "![table2_convergence_probe_sc_paper](" in block
    best = max(recs[("sc_paper", 0)]["probe_curve"], key=lambda p: p["linear_val_top1"])
    assert f"{100 * best['linear_val_top1']:.2f} (epoch {best['epoch']})" in block


def test_table2_protocol_arms_as_fixed_in_advance() -> None:
    args = t2.parse_args([])
    assert args.seeds == [0, 1, 2] and args.data == harness.FASHION_MNIST
    runs = {arm: t2.arm_runs(arm, args, 1) for arm in t2.ARMS}
    for arm in ("sc_paper", "sc_tuned"):
        (n1, pre), (n2, fine) = runs[arm]
        assert (n1, n2) == ("pretrain", "finetune") and fine["init_from"] == table_runs.PREVIOUS_RUN
        cfg = TrainConfig(**pre)
        assert (cfg.mode, cfg.pretrain_lr, cfg.schedule, cfg.probe_linear, cfg.eval_test) == (
            "pretrain", 0.1, "plateau", True, False)
        assert (cfg.pretrain_min_epochs, cfg.pretrain_epochs, cfg.pretrain_patience) == (20, 50, 5)
        assert cfg.pretrain_patience > cfg.plateau_patience + 1  # stops only when an lr drop did not help either
        fine_cfg = TrainConfig(**{**fine, "init_from": "x"})
        assert (fine_cfg.mode, fine_cfg.lr, fine_cfg.epochs, fine_cfg.schedule) == ("finetune", 0.01, 100, "plateau")
    paper, tuned = runs["sc_paper"][0][1], runs["sc_tuned"][0][1]
    assert {k: paper[k] for k in SC_PRESETS["paper"]} == SC_PRESETS["paper"] and paper["patch_size"] == 6
    assert {k: tuned[k] for k in SC_PRESETS["tuned"]} == SC_PRESETS["tuned"]
    ((_, sup),), ((_, ref),) = runs["sup"], runs["sup_lr0.1"]
    assert (sup["mode"], sup["lr"], sup["epochs"]) == ("supervised", 0.01, 100) and ref["lr"] == 0.1
    every = [f for arm_runs in runs.values() for _, f in arm_runs]
    for f in every:  # one draw of labels and val per seed, the same augmentation and batch everywhere
        assert (f["labels_per_class"], f["val_per_class"], f["split_seed"], f["seed"]) == (400, 100, 1, 1)
        assert (f["batch_size"], f["translate"], f["hflip"]) == (128, 2, False)
    assert [f["eval_every"] for f in every if f["mode"] != "pretrain"] == [harness.BIG] * 4


def test_table2_help_states_the_protocol(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_text(t2.parse_args, capsys, monkeypatch)
    for flag in ("--pretrain-patience", "--pretrain-min-epochs", "--pretrain-epochs", "--val-per-class", "--resume"):
        assert flag in text
    assert "until the epoch SC loss stops improving" in text and "--arms sc_paper --seeds 0 1 2 --resume" in text


# -- the shared pieces ---------------------------------------------------------------------------------------
def paired(diffs: dict[int, float]) -> dict:
    d = list(diffs.values())
    n = len(d)
    t = (statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(n))) if n > 1 else None
    return {"seeds": list(diffs), "differences": diffs, "mean_difference": statistics.fmean(d) if d else None,
            "std_difference": statistics.stdev(d) if n > 1 else None, "t": t,
            "p_value": None if t is None else 1 - 2 * math.atan(abs(t)) / math.pi if n == 2 else 0.01}


def test_verdict_branches() -> None:
    assert table_report.verdict(paired({}), "a", "b") == "a and b have no seed in common yet: no comparison."
    assert table_report.verdict(paired({0: -0.09}), "a", "b") == (
        "One seed only: a − b = -0.09 points of test error, and one pair admits no test.")
    # sd = 0.1 sqrt 2, t = -0.1 / (0.1 sqrt 2 / sqrt 2) = -1 -> p = 1 - 2 atan(1) / pi = 0.5
    assert table_report.verdict(paired({0: 0.0, 1: -0.2}), "a", "b") == (
        "No significant difference at n=2: -0.10 ± 0.14 points of test error (a − b, 2 paired seeds, 1 of 2 "
        "lower for a); paired t-test p = 0.5 ≥ 0.05.")
    assert table_report.verdict(paired({0: -0.3, 1: -0.2, 2: -0.25}), "a", "b") == (
        "a has lower test error than b: -0.25 ± 0.05 points of test error (a − b, 3 paired seeds, 3 of 3 lower "
        "for a); paired t-test p = 0.01 < 0.05.")


def test_compare_needs_both_arms_and_pairs_by_seed() -> None:
    errors = {"a": {0: 1.0, 1: 2.0, 2: 4.0}, "b": {0: 1.5, 2: 3.0}, "c": {}}
    c = table_report.compare(errors, "a", "b")
    assert c["seeds"] == [0, 2] and c["differences"] == {0: -0.5, 2: 1.0}
    none = table_report.compare(errors, "a", "c")
    assert none["seeds"] == [] and none["verdict"] == "a and c have no seed in common yet: no comparison."


def test_projection_arithmetic_by_hand() -> None:
    assert table_runs.steps_per_epoch(60000, 128, "pretrain") == 468  # SC drops the short batch
    assert table_runs.steps_per_epoch(4000, 128, "finetune") == 32  # 31 full + one of 32 images
    assert [table_runs.evaluations(e, k) for e, k in ((20, harness.BIG), (20, 1), (7, 5), (10, 5))] == [1, 20, 2, 2]
    recs = [{"stages": {"pretrain": {"s_per_step": s, "eval_s": e, "images_per_step": 128}}}
            for s, e in ((0.2, 4.0), (0.1, 6.0), (0.4, None))]
    costs = table_runs.stage_costs(recs)
    assert costs == {"pretrain": {"s_per_step": 0.2, "img_per_s": 640.0, "eval_s": 5.0}}
    plan = {"pretrain": table_runs.StagePlan(epochs=20, steps_per_epoch=468, evaluations=20)}
    assert table_runs.project_minutes(costs, plan) == round((20 * 468 * 0.2 + 20 * 5.0) / 60, 1)
    assert table_runs.project_minutes(costs, {"finetune": plan["pretrain"]}) is None


def test_arm_projection_gives_minutes_per_plan_as_measured_and_on_a_free_core() -> None:
    runs = [{"cpu_share": share, "stages": {"pretrain": {"s_per_step": 0.25, "eval_s": 6.0, "images_per_step": 128},
                                            "finetune": {"s_per_step": 0.3, "eval_s": 12.0, "images_per_step": 128}}}
            for share in (0.8, 0.9, None)]  # a resumed run has no share of its own
    fine = table_runs.StagePlan(epochs=100, steps_per_epoch=32, evaluations=1)
    plans = {bound: {"pretrain": table_runs.StagePlan(epochs, 468, epochs), "finetune": fine}
             for bound, epochs in (("min", 20), ("cap", 50))}
    p = table_runs.arm_projection(runs, plans)
    # by hand: fine-tune 100 x 32 x 0.3 + 12 = 972 s; SC 20 x (468 x 0.25 + 6) = 2460 s, 50 x 123 = 6150 s
    assert p["minutes_per_seed"] == {"min": 57.2, "cap": 118.7}  # (2460 + 972) / 60, (6150 + 972) / 60
    assert p["cpu_share"] == 0.85  # the median of 0.8 and 0.9
    assert p["minutes_per_seed_free_core"] == {"min": 48.6, "cap": 100.9}  # x 0.85
    assert p["stages"]["finetune"] == {"s_per_step": 0.3, "img_per_s": round(128 / 0.3, 1), "eval_s": 12.0}


def test_short_last_batch_overcount_is_taken_out_of_old_window_timings() -> None:
    # The 4,000-label sup seed-0 record as written from the log windows: 100 epochs of 32 steps, the last of each
    # epoch 32 images, not 128, so steps x batch = 409,600 images against 400,000 trained: 2.4% too many seconds.
    window = {"steps": 3200, "epochs": 100, "images_per_step": 128, "wall_s": 1035.46, "loop_s": 1049.06,
              "s_per_step": 0.3278, "evaluations": 1, "eval_s": -13.6}
    assert table_runs.window_overcount("supervised", window, 4000) == pytest.approx(409600 / 400000)
    assert table_runs.window_overcount("pretrain", window, 4000) == 1.0  # SC drops the short batch
    assert table_runs.window_overcount("supervised", {**window, "loop_source": "trainer"}, 4000) == 1.0
    costs = table_runs.stage_costs([{"num_labeled": 4000, "stages": {"supervised": window}}])["supervised"]
    # by hand: loop 1049.06 / 1.024 = 1024.47 s (the Trainer's own clock said 1024.39), so the one evaluation
    # took 1035.46 - 1024.47 = 11.0 s; per step 0.3278 / 1.024; img/s is images over seconds, 128 / 0.3278
    assert costs == {"s_per_step": 0.3201, "img_per_s": 390.5, "eval_s": 11.0}
    even = {**window, "steps": 3100, "loop_s": 1000.0, "eval_s": 3.0}  # 3,968 rows: 31 full batches, exact
    assert table_runs.stage_costs([{"num_labeled": 3968, "stages": {"finetune": even}}])["finetune"]["eval_s"] == 3.0


def test_stage_records_take_the_trainers_loop_seconds(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 64, "stage": "supervised", "img_per_s": 100.0}))
    summary = {"stages": {"supervised": {"steps": 64, "epochs": 2, "wall_time_s": 100.0, "train_loop_s": 80.0}}}
    fields = {"batch_size": 128, "mode": "supervised", "eval_every": 1}
    rec = table_runs.stage_records(summary, tmp_path, fields)["supervised"]
    # windows would say 64 x 128 / 100 = 81.92 s; the Trainer's 80 s leave 20 s for 2 evaluations
    assert (rec["loop_s"], rec["loop_source"], rec["s_per_step"], rec["eval_s"]) == (80.0, "trainer", 1.25, 10.0)
    del summary["stages"]["supervised"]["train_loop_s"]
    rec = table_runs.stage_records(summary, tmp_path, fields)["supervised"]
    assert (rec["loop_s"], rec["loop_source"], rec["eval_s"]) == (81.92, "windows", 9.04)


def test_trainer_timed_img_per_s_counts_the_images_the_steps_held(tmp_path: Path) -> None:
    # 4,000 labels, 100 epochs at batch 128: 3,200 steps held 400,000 images (not 409,600); the Trainer's clock
    # says 1,000 s of loop, so 400.0 img/s by hand (nominal batch over s per step would say 409.6)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3200, "stage": "supervised", "img_per_s": 400.0}))
    summary = {"num_labeled": 4000, "stages": {"supervised": {"steps": 3200, "epochs": 100, "wall_time_s": 1010.0,
                                                              "train_loop_s": 1000.0}}}
    fields = {"batch_size": 128, "mode": "supervised", "eval_every": harness.BIG}
    rec = table_runs.stage_records(summary, tmp_path, fields)["supervised"]
    assert (rec["s_per_step"], rec["img_per_s"], rec["eval_s"]) == (0.3125, 400.0, 10.0)
    costs = table_runs.stage_costs([{"num_labeled": 4000, "stages": {"supervised": rec}}])["supervised"]
    assert costs == {"s_per_step": 0.3125, "img_per_s": 400.0, "eval_s": 10.0}
    pretrain = {**rec, "steps": 468, "epochs": 1}  # SC drops the short batch: nominal images are the real ones
    assert table_runs.loop_img_per_s("pretrain", pretrain, 4000) == pytest.approx(128 / 0.3125)
    joint = {**rec, "images_per_step": 384}  # 128 labelled + 256 unlabelled, every joint batch full
    assert table_runs.loop_img_per_s("joint", joint, 4000) == pytest.approx(384 / 0.3125)
    assert table_runs.loop_img_per_s("supervised", {**rec, "labeled_drop_last": True}, 4000) == pytest.approx(409.6)


def test_images_held_counts_short_batches_from_the_steps() -> None:
    # 4,000 rows at batch 128: 32 steps per epoch, the last of 32 images
    assert table_runs.images_held("finetune", 3200, 128, 4000) == 400_000  # 100 whole epochs
    assert table_runs.images_held("finetune", 100, 128, 4000) == 3 * 4000 + 4 * 128  # capped mid-epoch: 12,512
    assert table_runs.images_held("finetune", 96, 128, 4000, drop_last=True) == 96 * 128
    assert table_runs.images_held("pretrain", 100, 128, 4000) == table_runs.images_held("joint", 100, 128, 4000)
    assert table_runs.images_held("joint", 100, 128, 4000) == 12_800
    capped = {"steps": 100, "epochs": 4, "images_per_step": 128}  # the Trainer counts the partial 4th epoch
    assert table_runs.window_overcount("finetune", capped, 4000) == pytest.approx(12_800 / 12_512)


def test_code_version_digest_follows_the_library_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sclearn" / "sub").mkdir(parents=True)
    (tmp_path / "sclearn" / "a.py").write_text("x = 1\n")
    (tmp_path / "sclearn" / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(harness, "ROOT", tmp_path)
    first = table_runs.code_version()
    assert first["commit"] is None and len(first["library"]) == 12  # not a git checkout
    (tmp_path / "sclearn" / "notes.txt").write_text("not code")
    assert table_runs.code_version() == first
    (tmp_path / "sclearn" / "sub" / "b.py").write_text("y = 3\n")
    assert table_runs.code_version()["library"] != first["library"]
    versions = table_runs.library_versions([{"arm": "a", "seed": 0, "code": first},
                                            {"arm": "b", "seed": 0, "code": {"library": "other"}}])
    assert versions == {first["library"]: ["a seed 0"], "other": ["b seed 0"]}
    assert table_report.code_line([{"arm": "a", "seed": 0, "code": first}]) == (
        f"every run on sclearn digest {first['library']}.")
    assert table_report.code_line([{"arm": "a", "seed": 0, "code": first},
                                   {"arm": "b", "seed": 0, "code": {"library": "other"}}]).startswith(
        "runs on different sclearn code, rerun to one version")


def test_probe_curve_reads_the_epoch_ends_of_the_pretrain_stage(tmp_path: Path) -> None:
    lines = [{"step": 5, "stage": "pretrain", "epoch": 0, "loss": 3.0, "lr": 0.1},
             {"step": 10, "stage": "pretrain", "epoch": 0, "event": "epoch_end", "epoch_loss": 2.9,
              "linear_val_top1": 0.5, "knn_val_top1": 0.4},
             {"step": 15, "stage": "pretrain", "epoch": 1, "loss": 2.5, "lr": 0.01},
             {"step": 20, "stage": "pretrain", "epoch": 1, "event": "epoch_end", "epoch_loss": 2.6},
             {"step": 25, "stage": "finetune", "epoch": 0, "event": "epoch_end", "epoch_loss": 1.0, "test_acc": 0.8}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert table_runs.probe_curve(tmp_path) == [
        {"epoch": 1, "epoch_loss": 2.9, "lr": 0.1, "knn_val_top1": 0.4, "linear_val_top1": 0.5},
        {"epoch": 2, "epoch_loss": 2.6, "lr": 0.01}]
    assert table_runs.count_test_reads(tmp_path) == 1


def test_probe_figure_draws_each_seed_and_marks_lr_drops() -> None:
    pytest.importorskip("matplotlib")
    curves = {0: [{"epoch": 1, "epoch_loss": 3.0, "lr": 0.1, "linear_val_top1": 0.5, "knn_val_top1": 0.4},
                  {"epoch": 2, "epoch_loss": 2.5, "lr": 0.01, "linear_val_top1": 0.6, "knn_val_top1": 0.45}],
              1: [{"epoch": 1, "epoch_loss": 3.1, "lr": 0.1, "linear_val_top1": 0.55}]}
    fig = paper_figures.probe_figure(curves, title="t")
    top, bottom = fig.axes
    lines = {line.get_gid(): line for ax in (top, bottom) for line in ax.lines}
    assert list(lines["linear_val_top1:0"].get_ydata()) == pytest.approx([50.0, 60.0])
    assert list(lines["knn_val_top1:0"].get_xdata()) == [1, 2] and "knn_val_top1:1" not in lines
    assert list(lines["loss:1"].get_ydata()) == [3.1]
    (drop,) = [c for c in bottom.collections if c.get_gid() == "lr_drop:0"]
    assert drop.get_offsets().tolist() == [[2.0, 2.5]]
    assert not [c for c in bottom.collections if c.get_gid() == "lr_drop:1"]
    with pytest.raises(ValueError, match="no probe curve"):
        paper_figures.probe_figure({})


def test_committed_table_records_name_no_absolute_path() -> None:
    """The records of the paper tables are committed: no machine's paths in them (data, run dirs); the one
    absolute path allowed is Debian's Fashion-MNIST, the same on every machine with the package."""
    paths = sorted(BENCH.glob("*table*_results/*.json"))
    assert paths
    for path in paths:
        rec = json.loads(path.read_text())
        assert not Path(rec.get("run_dir", "")).is_absolute(), path.name
        for name, config in rec.get("configs", {}).items():
            target = config["data"].partition(":")[2]
            assert config["data"] == harness.FASHION_MNIST or not Path(target).is_absolute(), \
                f"{path.name}: {name} data {config['data']!r}"


def test_wall_time_rows_mark_a_resumed_run_as_a_lower_bound() -> None:
    """A record finished after a kill counts only the call that finished it: its minutes are a lower bound and
    its share of a core is unknown; an uninterrupted one shows both as measured."""
    whole = {"arm": "a", "seed": 0, "total_s": 600.0, "cpu_share": 0.9, "continued_from_checkpoint": False,
             "load_start": 0.1, "load_end": 2.0, "date": "d0"}
    resumed = {"arm": "a", "seed": 1, "total_s": 90.0, "cpu_share": None, "continued_from_checkpoint": True,
               "load_start": 1.0, "load_end": 2.0, "date": "d1"}
    assert table_report.wall_time_rows([resumed, whole]) == [
        ["a", 0, 10.0, 0.9, "0.1 / 2.0", "d0"],
        ["a", 1, "≥ 1.5 (resumed: the time before the kill is not counted)", "-", "1.0 / 2.0", "d1"],
    ]
