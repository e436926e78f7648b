"""The command line: a user error is one line naming CLI flags and exit status 2; --debug shows the traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sclearn.backbones import build_backbone
from sclearn.cli import build_parser, cli_message, config_from_args, run_recipe, with_preset
from sclearn.probe import main as probe_main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["cifar10_joint.py", "cifar10_two_stage.py", "stl10_two_stage.py", "mnist_two_stage.py"]


def defaults(idx_dir, out: Path) -> dict:
    return dict(data=f"idx:{idx_dir}", protocol=None, labels_per_class=5, backbone="sc_mnist", layers=("stages.1",),
                channels=1, hflip=False, mode="supervised", batch_size=16, output_dir=str(out), report_to="none",
                progress=False, checkpoint_every=None)


@pytest.fixture(scope="module")
def flags():
    return build_parser(with_preset(dict(mode="joint", preset=None), []), "test").flags


@pytest.mark.parametrize(("library", "cli"), [
    ("TrainConfig.image_size must be >= 1 or None, got 0", "--image-size must be >= 1 or None, got 0"),
    ("Images in one batch have different shapes [(1, 28, 28), (1, 32, 32)]. Fix: pass image_size= to "
     "build_transform.", "Images in one batch have different shapes [(1, 28, 28), (1, 32, 32)]. Fix: pass "
     "--image-size."),
    ("No split 'val'; the dataset has ['train', 'test']. Fix: pass train_split=/test_split=.",
     "No split 'val'; the dataset has ['train', 'test']. Fix: pass --train-split/--test-split."),
    ("runs/x already holds a run (config.json). Pass resume=True to continue it, overwrite=True to delete it and "
     "start again, or choose another output_dir.", "runs/x already holds a run (config.json). Pass --resume to "
     "continue it, --overwrite to delete it and start again, or choose another --output-dir."),
    ("mode='finetune' starts from pretrained weights: set init_from to a run dir (or use mode='two_stage')",
     "--mode=finetune starts from pretrained weights: set --init-from to a run dir (or use --mode=two_stage)"),
    ("Class 0 has 30 images, fewer than labels_per_class/num_labels share 31 + val_per_class 0.",
     "Class 0 has 30 images, fewer than --labels-per-class/num_labels share 31 + --val-per-class 0."),
    ("hflip=False is set", "--no-hflip is set"),
    ("resume='/runs/a b/ckpt' does not exist", "--resume='/runs/a b/ckpt' does not exist"),  # a space: kept quoted
    ("resume='/runs/x/ckpt-1' does not exist", "--resume=/runs/x/ckpt-1 does not exist"),
    # Left alone: paths, other code's arguments, names inside longer names, attributes, plain words.
    ("/tmp/output_dir/run is not writable", "/tmp/output_dir/run is not writable"),
    ("timm.create_model(name, num_classes=10); cfg.patch_size; layer_patch_sizes_x", "timm.create_model(name, "
     "num_classes=10); cfg.patch_size; layer_patch_sizes_x"),
    ("the data and the seed", "the data and the seed"),
])
def test_library_messages_are_said_in_cli_flags(flags, library, cli):
    assert cli_message(library, flags) == cli


def test_a_user_error_is_one_line_and_status_2(idx_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run_recipe(defaults(idx_dir, tmp_path / "run"), "test", ["--temperature", "inf", "--mode", "joint"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --temperature must be a finite number, got inf\n"


def test_debug_flag_and_env_show_the_traceback(idx_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="TrainConfig.seed must lie in"):  # the exception itself propagates
        run_recipe(defaults(idx_dir, tmp_path / "run"), "test", ["--seed", "-1", "--debug"])
    monkeypatch.setenv("SCLEARN_DEBUG", "1")
    with pytest.raises(ValueError, match="TrainConfig.seed must lie in"):
        run_recipe(defaults(idx_dir, tmp_path / "run"), "test", ["--seed", "-1"])


def test_a_bug_is_not_dressed_up_as_a_user_error(idx_dir, tmp_path, monkeypatch):
    import sclearn.train

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(sclearn.train.Trainer, "__init__", broken)
    with pytest.raises(KeyError):
        run_recipe(defaults(idx_dir, tmp_path / "run"), "test", [])


def test_file_not_found_and_non_finite_loss_are_user_errors(idx_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run_recipe(defaults(idx_dir, tmp_path / "a"), "test", ["--resume", str(tmp_path / "nope")])
    assert done.value.code == 2
    assert capsys.readouterr().err == (f"error: --resume={tmp_path / 'nope'} does not exist; give a run dir or a "
                                       "checkpoint dir (<run dir>/checkpoints/ckpt-…)\n")
    with pytest.raises(SystemExit) as done:  # an lr this large gives an inf loss at the second step
        run_recipe(defaults(idx_dir, tmp_path / "b"), "test", ["--lr", "1e30", "--max-steps", "3"])
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()  # the progress bar's line, then the error on a line of its own
    assert err[-1].startswith("error: non-finite loss at step 2") and "--on-nonfinite=skip" in err[-1]
    assert "(--checkpoint-every sets how often). Lower the lr or --sc-weight" in err[-1]


@pytest.mark.parametrize("recipe", [*RECIPES, "demo.py"])
def test_every_recipe_prints_one_error_line_and_exits_2(idx_dir, tmp_path, recipe):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    args = ["--data", f"idx:{idx_dir}", "--output-dir", str(tmp_path / "out")]
    args += ["--steps", "1"] if recipe == "demo.py" else ["--seed", "-1"]
    if recipe == "demo.py":  # its arms are recipes: one that fails stops the demo with the arm's line
        args[1] = "idx:/nonexistent"
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if recipe == "demo.py":
        assert len(lines) == 2 and "/nonexistent" in lines[0] and "joint arm stopped" in lines[1]
    else:
        assert proc.stderr == "error: --seed must lie in [0, 2**32), got -1\n"


def test_model_kwargs_flag_sets_up_a_vit_at_32_px(tmp_path):
    parser = build_parser(with_preset(dict(mode="supervised"), []), "test")
    args = parser.parse_args(["--backbone", "vit_tiny_patch16_224", "--model-kwargs", '{"img_size": 32}'])
    cfg = config_from_args(args)
    assert cfg.model_kwargs == {"img_size": 32}
    net = build_backbone(cfg.backbone, num_classes=10, in_chans=3, **cfg.model_kwargs)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(SystemExit):  # not JSON: argparse's own usage error
        parser.parse_args(["--model-kwargs", "img_size=32"])


def test_split_flags_choose_the_dataset_splits(idx_dir, tmp_path, capsys):
    from sclearn.train import Trainer

    parser = build_parser(with_preset(defaults(idx_dir, tmp_path / "swap"), []), "test")
    cfg = config_from_args(parser.parse_args(["--train-split", "test", "--test-split", "train"]))
    trainer = Trainer(cfg)
    assert len(trainer.splits.test) == 300 and len(trainer.splits.labeled) == 50  # the fixture: 30 / 10 per class
    trainer.release_run_dir()
    capsys.readouterr()  # the first run's output (its decoding progress bars) is not under test
    with pytest.raises(SystemExit):
        run_recipe(defaults(idx_dir, tmp_path / "bad"), "test", ["--test-split", "validation"])
    assert capsys.readouterr().err == ("error: No split 'validation'; the dataset has ['train', 'test']. Fix: pass "
                                       "--train-split/--test-split.\n")


def test_probe_command_line_errors(tmp_path, capsys):
    for argv, message in [
        ([str(tmp_path), "--k", "0"], "error: --k=0: give an integer >= 1\n"),
        ([str(tmp_path), "--pool", "0"], "error: --pool=0: give an integer >= 1\n"),
        ([str(tmp_path / "nope")], f"error: {tmp_path / 'nope'} does not exist: give a run dir, a checkpoint dir or a "
                                   "backbone .safetensors of an sclearn run\n"),
    ]:
        with pytest.raises(SystemExit) as done:
            probe_main(argv)
        assert done.value.code == 2
        assert capsys.readouterr().err == message
    with pytest.raises(FileNotFoundError):
        probe_main([str(tmp_path / "nope"), "--debug"])
    with pytest.raises(SystemExit):
        probe_main([str(tmp_path)])
    assert capsys.readouterr().err == (f"error: no config.json in {tmp_path} or its run dir: is it an sclearn run or "
                                       "checkpoint?\n")
    (tmp_path / "config.json").write_text(json.dumps({"not": "sclearn"}))
    with pytest.raises(SystemExit):
        probe_main([str(tmp_path)])
    assert "is not an sclearn config" in capsys.readouterr().err
