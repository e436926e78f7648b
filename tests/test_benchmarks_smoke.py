"""The overhead benchmark runs end to end and prints well-formed JSON (no assertion on timings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "overhead.py"
KINDS = ("ce", "joint", "plain")
CASES = ("resnet18_32", "resnet18_96", "sc_cifar10", "sc_stl10")


@pytest.fixture(scope="module")
def smoke_report() -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--profile", "1"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def _positive_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_top_level_keys(smoke_report: dict) -> None:
    assert {"benchmark", "command", "date", "machine", "config", "results", "max_rss_mib"} <= set(smoke_report)
    assert smoke_report["benchmark"] == "overhead"
    assert {"cpu_model", "cores", "torch", "torch_threads", "device"} <= set(smoke_report["machine"])
    assert smoke_report["config"]["smoke"] is True
    assert smoke_report["config"]["steps"] == 2


def test_every_case_reported(smoke_report: dict) -> None:
    assert [r["case"] for r in smoke_report["results"]] == list(CASES)


@pytest.mark.parametrize("case", CASES)
def test_case_result(smoke_report: dict, case: str) -> None:
    result = next(r for r in smoke_report["results"] if r["case"] == case)
    for key in ("ratio_joint_over_ce", "ratio_ce_over_plain", "ratio_joint_over_plain"):
        stats = result[key]
        assert stats["n"] == 2
        assert all(_positive_finite(stats[s]) for s in ("median", "mean", "min", "max")), stats
        assert math.isfinite(stats["std"])
    assert set(result["ms_per_step"]) == set(KINDS)
    assert all(_positive_finite(result["ms_per_step"][k]["median"]) for k in KINDS)
    assert set(result["peak_memory"]) == set(KINDS)
    assert all(result["peak_memory"][k]["peak_above_start_mib"] >= 0 for k in KINDS)
    assert math.isfinite(result["loss_last"]["joint"])
    prof = result["profile"]  # the profiler's attribution of SC's cost
    assert prof["steps"] == 1 and _positive_finite(prof["step_op_ms"]["ce"]) and _positive_finite(prof["sc_ms"])
    assert 0 < prof["sc_share_of_ce_step"] < 1 and prof["top_sc_ops"]
    c = result["sc_map_chw"][0]
    ph, pw = result["patch_cells"]
    assert result["patch_dim"] == c * ph * pw  # the default loss flattens the patch
