"""Every recipe runs end to end on local fixtures with the hub schemas, under python and accelerate launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--max-steps", "2", "--batch-size", "8", "--epochs", "1", "--pretrain-epochs", "1", "--no-progress",
         "--report-to", "none", "--checkpoint-every", "none"]


def run(args: list[str], tmp_path: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "250",
           "PYTHONPATH": str(ROOT)}  # this checkout's sclearn, not an installed copy
    cmd = (launcher or [sys.executable]) + args
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def check_run(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for name in ["training_curves.png", "first_layer_filters.png", "backbone.safetensors", "metrics.jsonl"]:
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


@pytest.mark.parametrize(
    ("recipe", "fixture", "extra"),
    [
        ("recipes/stl10_two_stage.py", "stl_parquet_dir", []),
        ("recipes/cifar10_two_stage.py", "cifar_parquet_dir", ["--labels-per-class", "20"]),
        ("recipes/cifar10_joint.py", "cifar_parquet_dir", []),
        ("recipes/mnist_two_stage.py", "mnist_parquet_dir", []),
    ],
)
def test_recipe_runs_end_to_end(recipe, fixture, extra, request, tmp_path):
    data = request.getfixturevalue(fixture)
    out = tmp_path / "run"
    proc = run([recipe, "--data", f"parquet:{data}", "--output-dir", str(out), *SMOKE, *extra], tmp_path)
    summary = check_run(proc, out)
    assert summary["global_steps"] >= 2
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["output_dir"] == str(out)


def test_recipe_help_explains_every_flag(tmp_path):
    proc = run(["recipes/cifar10_joint.py", "--help"], tmp_path)
    assert proc.returncode == 0
    for flag in ["--data", "--backbone", "--layers", "--labels-per-class", "--epochs", "--pretrain-epochs",
                 "--batch-size", "--lr", "--seed", "--output-dir", "--resume", "--max-steps", "--image-size",
                 "--channels", "--sc-weight", "--patch-size", "--distance", "--mode"]:
        assert flag in proc.stdout, flag
    assert "uoft-cs/cifar10" in proc.stdout  # the paper default is shown


def test_presets_lie_under_explicit_flags_and_over_recipe_defaults():
    from sclearn.cli import build_parser, config_from_args, with_preset
    from sclearn.presets import SC_PRESETS, sc_preset

    recipe = dict(data="x", mode="joint", backbone="sc_mnist", layers=("stages.1",), patch_size=5, sc_weight=3.0,
                  preset="tuned")

    def config(*argv):
        return config_from_args(build_parser(with_preset(recipe, list(argv)), "t").parse_args(list(argv)))

    tuned = config()
    assert (tuned.distance, tuned.temperature, tuned.pool, tuned.patch_size, tuned.sc_weight,
            tuned.sc_rampup_steps) == ("cosine", 0.1, "mean", 0.43, 0.1, 0.2)  # the preset beats the recipe
    paper = config("--preset", "paper")
    assert (paper.distance, paper.temperature, paper.pool, paper.sc_weight, paper.sc_rampup_steps) == (
        "l2", 1.0, "flatten", 1.0, 0)
    assert paper.patch_size == 5  # the paper preset leaves the recipe's (per-dataset) patch size alone
    mixed = config("--preset", "paper", "--sc-weight", "0.3", "--sc-rampup-steps", "0.25")
    assert (mixed.distance, mixed.sc_weight, mixed.sc_rampup_steps) == ("l2", 0.3, 0.25)  # flags win
    assert set(SC_PRESETS) == {"paper", "tuned"}
    with pytest.raises(ValueError, match="unknown SC preset 'best'.*paper"):
        sc_preset("best")


def test_fashion_mnist_stand_in_with_any_timm_backbone(idx_dir, tmp_path):
    out = tmp_path / "r18"
    proc = run(["recipes/cifar10_joint.py", "--data", f"idx:{idx_dir}", "--protocol", "none", "--labels-per-class",
                "5", "--backbone", "resnet18", "--layers", "layer2", "layer3", "--image-size", "32", "--channels", "3",
                "--no-hflip", "--output-dir", str(out), *SMOKE], tmp_path)
    summary = check_run(proc, out)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("sc/layer2" in r and "sc/layer3" in r for r in metrics)
    assert summary["num_labeled"] == 50


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["joint", "two_stage"])
def test_two_cpu_processes_with_ddp(idx_dir, tmp_path, mode):
    # `accelerate launch --cpu --num_processes 2` starts a single process on a CPU-only machine; torchrun with
    # ACCELERATE_USE_CPU gives two real gloo processes (asserted through the summary below).
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        proc = run(["recipes/cifar10_joint.py", "--data", f"idx:{idx_dir}", "--protocol", "none",
                    "--labels-per-class", "10", "--backbone", "sc_mnist", "--layers", "stages.1", "--channels", "1",
                    "--image-size", "28", "--no-hflip", "--output-dir", str(out), *SMOKE, "--max-steps", "3",
                    "--mode", mode, "--schedule", "plateau", "--gather-negatives", "--checkpoint-every", "2"],
                   tmp_path, launcher)
    finally:
        del os.environ["ACCELERATE_USE_CPU"]
    summary = check_run(proc, out)
    assert summary["num_processes"] == 2
    assert summary["global_steps"] == (6 if mode == "two_stage" else 3)


def test_accelerate_launch_entry_point(idx_dir, tmp_path):
    out = tmp_path / "launch"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    proc = run(["recipes/cifar10_joint.py", "--data", f"idx:{idx_dir}", "--protocol", "none", "--labels-per-class",
                "5", "--backbone", "sc_mnist", "--layers", "stages.1", "--channels", "1", "--image-size", "28",
                "--no-hflip", "--output-dir", str(out), *SMOKE], tmp_path, launcher)
    check_run(proc, out)
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "bf16"  # the launch flag won


def test_demo_runs_both_arms_and_prints_the_table(idx_dir, tmp_path):
    out = tmp_path / "demo"
    proc = run(["recipes/demo.py", "--data", f"idx:{idx_dir}", "--steps", "4", "--labels-per-class", "2",
                "--eval-every-steps", "2", "--output-dir", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joint SC + CE" in proc.stdout and "supervised only" in proc.stdout and "difference" in proc.stdout
    joint = json.loads((out / "joint" / "config.json").read_text())
    sup = json.loads((out / "supervised" / "config.json").read_text())
    assert (joint["mode"], joint["distance"], joint["sc_weight"], joint["sc_rampup_steps"]) == ("joint", "cosine", 0.1, 0.2)
    assert sup["mode"] == "supervised" and sup["max_steps"] == joint["max_steps"] == 4
    assert joint["eval_every_steps"] == sup["eval_every_steps"] == 2
    figure = out / "comparison.png"
    assert f"figure: {figure}" in proc.stdout and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for arm in ("joint", "supervised"):  # the probe went into each run's probe.json and its model card
        probe = json.loads((out / arm / "probe.json").read_text())
        assert probe["layer"] == "stages.1" and 0.0 <= probe["linear_top1"] <= 1.0
        assert f"{100 * probe['linear_top1']:.2f}%" in (out / arm / "export" / "README.md").read_text()
    probe = json.loads((out / "joint" / "probe.json").read_text())
    line = next(x for x in proc.stdout.splitlines() if x.startswith("the same net at random init"))
    assert f"{100 * probe['random_linear_top1']:.2f}%" in line
