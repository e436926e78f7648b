"""The benchmark scripts' ``--smoke`` runs end to end on the tiny IDX fixture and print well-formed JSON.

No assertion on timings or accuracies: only that each script runs, exits 0 and reports what it promises.
Each smoke run takes roughly 10-25 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load_script(name: str):
    """Import a benchmark script as a module (its directory on sys.path, as when run as a script)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{Path(name).stem}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_smoke(script: str, idx_dir: Path, tmp_path: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--data", f"idx:{idx_dir}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)  # stdout is one JSON document and nothing else
    assert {"benchmark", "command", "date", "machine", "config", "uptime_start", "uptime_end"} <= set(report)
    assert report["benchmark"] == Path(script).stem
    assert {"cpu_model", "cores", "torch", "torch_threads"} <= set(report["machine"])
    assert report["config"]["smoke"] is True
    return report


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_sample_efficiency_smoke(idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_smoke("sample_efficiency.py", idx_dir, tmp_path, "--results-dir", str(tmp_path / "res"),
                       "--runs-dir", str(tmp_path / "runs"))
    arms = report["aggregate"]["arms"]
    assert set(arms) == {"sup_labeled", "two_stage", "joint", "sup_all"}
    for a in arms.values():
        assert 0.0 <= a["test_acc"]["mean"] <= 1.0
    assert set(arms["two_stage"]["s_per_step"]) == {"pretrain", "finetune"}
    assert set(report["aggregate"]["gap_closed"]) <= {"two_stage", "joint"}
    assert "gap_closed_note" in report["aggregate"]
    assert report["aggregate"]["projection"]["total_minutes"] >= 0
    assert len(list((tmp_path / "res").glob("*.json"))) == 4  # one result file per run, for --resume
    # --resume: every result exists, nothing is trained again (in-process: no second interpreter start-up)
    module = load_script("sample_efficiency.py")
    capsys.readouterr()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # main() sets it: restored after
    threads = torch.get_num_threads()
    try:
        code = module.main(["--smoke", "--data", f"idx:{idx_dir}", "--results-dir", str(tmp_path / "res"),
                            "--runs-dir", str(tmp_path / "runs"), "--resume", "--arms", "sup_labeled"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    again = json.loads(capsys.readouterr().out)
    assert again["runs"][0]["test_acc"] == report["runs"][0]["test_acc"]


@pytest.mark.slow  # six interpreters (start-up and RSS probes run in fresh processes): about a minute
def test_data_path_smoke(idx_dir: Path, tmp_path: Path) -> None:
    report = run_smoke("data_path.py", idx_dir, tmp_path)
    (r,) = report["ratios"]
    assert r["case"] == "sc_mnist/supervised" and set(r["ratio"]) == {"memory", "stream"}
    assert all(_finite_positive(r["ratio"][p]["mean"]) for p in ("memory", "stream"))
    assert r["images_per_step"] == 16 and _finite_positive(r["limit_img_per_s"]["mean"])
    loaders = report["loaders"]["sc_mnist"]
    assert {"memory", "stream, 0 workers", "per-image build_transform (before)"} == set(loaders)
    assert all(_finite_positive(v["mean"]) for v in loaders.values())
    assert {k: v["first"]["path"] for k, v in report["startup"].items()} == {"memory": "memory", "stream": "stream"}
    assert report["rss"]["first_run"]["bytes"] == 64 * 3 * 96 * 96
    # The profile (what trainer_efficiency.py --profile measured): one backward and optimizer step per training
    # step once set-up cancels out, and the one checkpoint of a run timed on its own.
    (prof,) = report["profile"]
    pieces = prof["pieces"]
    assert pieces["Accelerator.backward"]["calls_per_step"] == pieces["AcceleratedOptimizer.step"]["calls_per_step"] == 1
    assert _finite_positive(pieces["Accelerator.backward"]["ms_per_step"])
    checkpoint = pieces["Accelerator.save_state (checkpoint)"]
    assert checkpoint["ms_per_step"] is None and _finite_positive(checkpoint["ms_per_call"])


def help_text(parse_args, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What ``parse_args(["--help"])`` prints; fails if it does not exit 0 or if a flag has no help text."""
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    undocumented = [a.dest for a in parsers[0]._actions if not a.help]
    assert not undocumented, f"flags without help: {undocumented}"
    return capsys.readouterr().out


@pytest.mark.parametrize("script", ["sample_efficiency.py", "mnist_table3.py", "feature_diagnostics.py", "data_path.py"])
def test_help(script: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_text(load_script(script).parse_args, capsys, monkeypatch)
    assert "--smoke" in text and "--write-results" in text


def test_sc_ablation_smoke(idx_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "sc_ablation.py"), "--smoke", "--data", f"idx:{idx_dir}",
         "--work-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, f"sc_ablation.py exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    assert not list((tmp_path / "runs").rglob("metrics.jsonl"))  # every scratch run was deleted after
    summary = json.loads(proc.stdout)
    assert "work_dir" not in summary["config"] and summary["config"]["smoke"]  # no scratch path in the results
    names = {r["name"] for r in summary["search"]}
    assert names == {"r0_sup_paper", "r0_sc_paper", "r4_ft_freeze01", "r4_sup_freeze01"}
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in summary["search"])
    frozen = next(r for r in summary["search"] if r["name"] == "r4_ft_freeze01")["params"]
    assert "freeze=['stages.0', 'stages.1']" in frozen and "pretrain_max_steps=2" in frozen
    final = summary["final"]["lpc2"]
    assert len(final["supervised"]["test"]) == 1 and len(final["sc_configs"]) == 1
    (sc,) = final["sc_configs"].values()
    assert len(sc["test"]) == 1 and sc["gain_pt"] == round(100 * (sc["test"][0] - final["supervised"]["test"][0]), 2)
    assert summary["probe"]  # linear + kNN probes of SC vs random features ran


def test_feature_diagnostics_smoke_on_an_exported_backbone(idx_dir: Path, tmp_path: Path) -> None:
    import timm
    import torch

    from sclearn.backbones import export_backbone

    torch.manual_seed(1)
    weights = tmp_path / "backbone.safetensors"
    export_backbone(timm.create_model("sc_mnist", num_classes=10, in_chans=1), weights, {})
    proc = subprocess.run(
        [sys.executable, str(BENCH / "feature_diagnostics.py"), "--smoke", "--data", f"idx:{idx_dir}",
         "--weights", str(weights)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    random_init, loaded = json.loads(proc.stdout)["results"]
    for r in (random_init, loaded):
        assert 1.0 <= r["erank_gap"] <= 64 and 1.0 <= r["erank_grid"] <= 256
        assert r["fisher_gap"] >= 0 and 0 < r["within_image_share"] <= 1.0
        assert r["map_hw"] == [7, 7]
        assert r["relu"]["stages.1.1.act"]["channels"] == 64 and 0 <= r["relu"]["stages.1.1.act"]["dead"] <= 64
    assert random_init["erank_gap"] != loaded["erank_gap"]  # another seed's weights really were loaded
