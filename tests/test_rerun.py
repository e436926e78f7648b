"""Rerun or extend a run from its config: TrainConfig.load and every recipe's --config."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from sclearn.cli import build_parser, config_from_args, run_recipe, with_preset
from sclearn.config import TrainConfig
from sclearn.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))  # recipes import their shared `_paper` module, as scripts do
RECIPES = ["cifar10_joint.py", "cifar10_two_stage.py", "mnist_two_stage.py", "stl10_two_stage.py"]
JOINT = runpy.run_path(str(ROOT / "recipes" / "cifar10_joint.py"))["PAPER_DEFAULTS"]  # preset "tuned"
TIMING = {"img_per_s"}  # the only measured-time field of metrics.jsonl


def metrics_without_timing(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def parse(defaults, *argv) -> TrainConfig:
    return config_from_args(build_parser(with_preset(defaults, list(argv)), "t").parse_args(list(argv)))


def finished_run(idx_dir, out: Path) -> TrainConfig:
    """A tiny joint run whose SC settings differ from the joint recipe's preset, with fields that have no flag."""
    cfg = TrainConfig(
        data=f"idx:{idx_dir}", backbone="sc_mnist", layers=("stages.1",), channels=1, image_size=28, hflip=False,
        labels_per_class=3, batch_size=8, unlabeled_ratio=1.0, mode="joint", epochs=2, max_steps=6, lr=0.05,
        distance="l2", pool="flatten", patch_size=3, sc_weight=0.3, seed=3, split_seed=1,
        momentum=0.8, log_every=2,  # no CLI flag: the rerun must take them from the file
        checkpoint_every=None, report_to="none", progress=False, output_dir=str(out),
    )
    Trainer(cfg).fit()
    return cfg


def test_rerun_from_config_json_reproduces_metrics(idx_dir, tmp_path, capsys):
    first = tmp_path / "first"
    finished_run(idx_dir, first)
    reference = metrics_without_timing(first)
    assert sum("sc" in r for r in reference) == 3 and any("test_acc" in r for r in reference)

    # every recipe goes through run_recipe: the joint recipe's own defaults (tuned preset, CIFAR data) lie under
    # the file and must not leak into the rerun
    cli_rerun = tmp_path / "cli_rerun"
    run_recipe(JOINT, "t", ["--config", str(first / "config.json"), "--output-dir", str(cli_rerun)])
    capsys.readouterr()
    assert metrics_without_timing(cli_rerun) == reference
    saved = [json.loads((d / "config.json").read_text()) for d in (first, cli_rerun)]
    assert {k for k in saved[0] if saved[0][k] != saved[1][k]} == {"output_dir"}

    api_rerun = TrainConfig.load(first / "config.json", output_dir=str(tmp_path / "api_rerun"))
    Trainer(api_rerun).fit()
    assert metrics_without_timing(Path(api_rerun.output_dir)) == reference


def test_explicit_flags_override_the_file_and_presets_layer(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(data="idx:somewhere", mode="joint", backbone="sc_mnist", layers=("stages.1",), distance="l2",
                pool="flatten", patch_size=3, sc_weight=0.3, lr=0.05, momentum=0.8, resume=True,
                output_dir="runs/x").save(path)

    cfg = parse(JOINT, "--config", str(path))
    assert (cfg.data, cfg.distance, cfg.sc_weight, cfg.patch_size, cfg.lr, cfg.momentum) == (
        "idx:somewhere", "l2", 0.3, 3, 0.05, 0.8)  # the file beats the recipe and its preset
    assert cfg.resume is False and cfg.output_dir == "runs/x"  # a rerun starts afresh unless --resume
    assert parse(JOINT, "--config", str(path), "--resume").resume is True

    cfg = parse(JOINT, "--config", str(path), "--lr", "0.2", "--backbone", "resnet18")
    assert (cfg.lr, cfg.backbone, cfg.sc_weight, cfg.distance) == (0.2, "resnet18", 0.3, "l2")
    cfg = parse(JOINT, "--lr", "0.2", "--config", str(path))  # order on the command line does not matter
    assert (cfg.lr, cfg.sc_weight) == (0.2, 0.3)

    cfg = parse(JOINT, "--config", str(path), "--preset", "tuned")  # an explicit preset beats the file ...
    assert (cfg.distance, cfg.pool, cfg.sc_weight, cfg.patch_size, cfg.lr) == ("cosine", "mean", 0.1, 0.43, 0.05)
    cfg = parse(JOINT, "--config", str(path), "--preset", "tuned", "--sc-weight", "0.7")  # ... and flags beat it
    assert (cfg.distance, cfg.sc_weight) == ("cosine", 0.7)


def test_partial_yaml_file_lies_over_the_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sc_weight: 0.5\nlayers: [stages.0, stages.1]\nlayer_weights: [1.0, 0.5]\nmomentum: 0.7\n")
    cfg = parse(JOINT, "--config", str(path))
    assert (cfg.sc_weight, cfg.layers, cfg.layer_weights, cfg.momentum) == (
        0.5, ("stages.0", "stages.1"), (1.0, 0.5), 0.7)
    assert (cfg.data, cfg.backbone, cfg.distance, cfg.temperature) == ("uoft-cs/cifar10", "sc_cifar10", "cosine", 0.1)
    assert TrainConfig.load(path).sc_weight == 0.5


def test_unknown_or_unreadable_config_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lrr": 0.1, "sc_weight": 1.0, "zzz": 1}))
    with pytest.raises(ValueError, match=r"unknown fields \['lrr', 'zzz'\] \('lrr': did you mean 'lr'\?\)"):
        TrainConfig.load(bad)
    with pytest.raises(SystemExit) as e:
        run_recipe(JOINT, "t", ["--config", str(bad)])
    assert e.value.code == 2 and "unknown fields ['lrr', 'zzz']" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping of TrainConfig fields, got list"):
        TrainConfig.load(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("lr: [0.1\n")
    with pytest.raises(ValueError, match="cannot read config file"):
        TrainConfig.load(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.load(tmp_path / "missing.json")


def test_rerun_into_the_runs_own_dir_is_refused_and_deletes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data="idx:x", output_dir=str(run)).save(run / "config.json")
    (run / "metrics.jsonl").write_text("{}\n")
    for argv in (["--config", str(run / "config.json")], ["--config", str(run), "--overwrite"]):
        with pytest.raises(SystemExit) as e:
            run_recipe(JOINT, "t", argv)
        assert e.value.code == 2
        assert "give a new --output-dir to rerun it there, or --resume" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_takes_config(recipe, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [recipe, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "recipes" / recipe), run_name="__main__")
    assert e.value.code == 0 and "--config FILE" in capsys.readouterr().out
