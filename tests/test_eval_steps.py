"""Evaluation every N optimizer steps: records at those steps, and training exactly as without them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sclearn.cli import build_parser, config_from_args
from sclearn.config import TrainConfig
from sclearn.train import Trainer
from tests.test_train import kill_then_resume, read_metrics, tiny_config


def _training_records(run: Path) -> list[dict]:
    """What training logged, without the evaluation records and the timings."""
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in read_metrics(run) if r.get("event") != "eval"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "backbone.safetensors"))


@pytest.mark.parametrize("mode, metric", [("supervised", "test_acc"), ("joint", "test_acc"), ("pretrain", "knn_top1")])
def test_eval_every_n_steps_writes_records_at_those_steps_and_leaves_training_unchanged(idx_dir, tmp_path, mode,
                                                                                        metric):
    # supervised: 4 batches per epoch (50 labelled images, batch 16), 2 epochs, evaluation only after the last
    # epoch; joint / pretrain: 6 steps of the first epoch, the last step ends the stage.
    common = dict(mode=mode, eval_every=2, checkpoint_every=None, schedule="plateau")
    if mode != "supervised":
        common.update(max_steps=6, epochs=1, pretrain_epochs=1)
    plain = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "plain"), **common)
    Trainer(plain).fit()
    every = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "every"), eval_every_steps=2, **common)
    Trainer(every).fit()

    evals = [r for r in read_metrics(Path(every.output_dir)) if r.get("event") == "eval"]
    # Step 8 (supervised) and step 6 (the others) end the stage, which evaluates in its epoch-end record instead;
    # supervised step 4 ends epoch 0, which does not evaluate (eval_every=2), so the step evaluation runs.
    assert [r["step"] for r in evals] == ([2, 4, 6] if mode == "supervised" else [2, 4])
    assert all(0.0 <= r[metric] <= 1.0 for r in evals)
    ends = [r for r in read_metrics(Path(every.output_dir)) if r.get("event") == "epoch_end" and metric in r]
    assert [r["step"] for r in ends] == [8 if mode == "supervised" else 6]

    assert _training_records(Path(every.output_dir)) == _training_records(Path(plain.output_dir))
    ref = _weights(Path(plain.output_dir))
    got = _weights(Path(every.output_dir))
    for key in ref:  # batch-norm running statistics included
        assert torch.equal(got[key], ref[key]), key


def test_resume_after_a_kill_keeps_the_step_evaluations_and_the_weights(idx_dir, tmp_path, monkeypatch):
    common = dict(mode="joint", max_steps=7, epochs=1, eval_every_steps=2, checkpoint_every=3)
    ref = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "ref"), **common)
    Trainer(ref).fit()

    cut = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "cut"), **common)
    # killed after evaluating at step 2, before evaluating at step 4
    kill_then_resume(cut, monkeypatch, lambda state: state["global_step"] == 3)

    strip = lambda rs: [{k: v for k, v in r.items() if k != "img_per_s"} for r in rs]
    got, want = strip(read_metrics(Path(cut.output_dir))), strip(read_metrics(Path(ref.output_dir)))
    assert [r["step"] for r in got if r.get("event") == "eval"] == [2, 4, 6]
    assert got == want
    for key, value in _weights(Path(ref.output_dir)).items():
        assert torch.equal(_weights(Path(cut.output_dir))[key], value), key


def test_eval_every_steps_flag_and_validation():
    parser = build_parser({"output_dir": "runs/x"}, "test")
    assert config_from_args(parser.parse_args(["--eval-every-steps", "50"])).eval_every_steps == 50
    assert config_from_args(parser.parse_args(["--eval-every-steps", "none"])).eval_every_steps is None
    assert config_from_args(parser.parse_args([])).eval_every_steps is None  # off by default
    with pytest.raises(ValueError, match=r"TrainConfig.eval_every_steps must be >= 1 or None, got 0"):
        TrainConfig(eval_every_steps=0)
    # Changing it does not change what is computed, so a run may be resumed with another value.
    assert not TrainConfig(eval_every_steps=10).diff(TrainConfig(eval_every_steps=None))


def test_eval_records_are_plotted_as_the_accuracy_curve(idx_dir, tmp_path):
    from sclearn.plots import comparison_series

    cfg = tiny_config(idx_dir, tmp_path, mode="joint", max_steps=6, epochs=1, eval_every_steps=2,
                      checkpoint_every=None)
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    want = [(r["step"], r["test_acc"]) for r in records if "test_acc" in r]
    steps, acc = comparison_series({"joint": cfg.output_dir})["joint"]["test_acc"]
    assert list(zip(steps, acc)) == want and steps == [2, 4, 6]
