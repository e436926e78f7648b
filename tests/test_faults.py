"""SIGKILL a training run at random moments (inside steps and inside checkpoint writes) and resume it."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sclearn.checkpoint import list_checkpoints, read_state

SCRIPT = Path(__file__).parent / "scripts" / "train_until_done.py"
ROOT = Path(__file__).resolve().parents[1]


def start(idx_dir, out: Path, slow_save: bool, data: tuple[str, int] = ("auto", 0)) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(idx_dir), str(out), "1" if slow_save else "0", data[0], str(data[1])]
    return subprocess.Popen([sys.executable, str(SCRIPT), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the run has logged at least one step (start-up is not what we want to kill)."""
    deadline = time.time() + timeout
    metrics = out / "metrics.jsonl"
    start_lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > start_lines:
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("data", [("memory", 0), ("stream", 2)], ids=["memory", "stream-2-workers"])
def test_sigkill_at_random_points_then_resume_matches_uninterrupted(idx_dir, tmp_path, data):
    ref_out = tmp_path / "ref"
    ref = start(idx_dir, ref_out, slow_save=False, data=data)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]

    out, rng = tmp_path / "killed", random.Random(1234)
    kills, progress = 0, -1
    while kills < 8:
        proc = start(idx_dir, out, slow_save=True, data=data)
        wait_for_training(out, proc)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        ckpts = list_checkpoints(out / "checkpoints")
        assert ckpts, "a kill left no complete checkpoint"
        latest = ckpts[-1]
        state = read_state(latest)  # the latest checkpoint always loads...
        assert (latest / "model.safetensors").is_file()
        load_file(str(latest / "model.safetensors"))
        # ...and at most the steps since it are lost: progress never goes backwards.
        assert state["global_step"] >= progress
        progress = state["global_step"]
    final = start(idx_dir, out, slow_save=False, data=data)
    assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]
    assert kills >= 4, f"only {kills} kills landed before the run finished"

    ref_w, got_w = load_file(str(ref_out / "backbone.safetensors")), load_file(str(out / "backbone.safetensors"))
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "img_per_s"}
                       for x in p.read_text().splitlines()]
    assert strip(out / "metrics.jsonl") == strip(ref_out / "metrics.jsonl")
