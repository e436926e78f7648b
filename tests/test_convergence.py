"""SC pre-training "until convergence" (the stop rule, its resume exactness) and the per-epoch linear probe."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sclearn.config import TrainConfig
from sclearn.stopping import ConvergenceStop
from sclearn.train import Trainer
from tests.test_train import kill_then_resume, read_metrics, tiny_config


def reference_stop_epoch(losses: list[float | None], patience: int, min_epochs: int, min_delta: float) -> int | None:
    """The rule written out: the 1-based epoch after which training stops, or None if it never does."""
    best, best_epoch = None, 0
    for epoch, loss in enumerate(losses, start=1):
        if loss is not None and (best is None or loss < best - min_delta * abs(best)):
            best, best_epoch = loss, epoch
        if epoch >= min_epochs and epoch - best_epoch >= patience:
            return epoch
    return None


@pytest.mark.parametrize(
    "losses, patience, min_epochs, min_delta, expected",
    [
        # 0.95 beats 1.0 by 5%; 0.949 and 0.948 miss the 1% bar (0.9405): two epochs without improvement
        ([1.0, 0.95, 0.949, 0.948, 0.90], 2, 1, 0.01, 4),
        ([1.0, 0.95, 0.949, 0.948, 0.90], 2, 5, 0.01, None),  # min_epochs holds it to epoch 5; 0.90 improves
        ([1.0, 0.95, 0.949, 0.948, 0.947], 2, 5, 0.01, 5),  # ... 0.947 does not
        ([1.0, 0.95, 0.949, 0.948, 0.90], 2, 1, 0.0, None),  # any decrease counts: never stops
        ([1.0, 1.2, 0.99, 1.3], 1, 1, 0.0, 2),  # a rise is no improvement
        ([1.0, 1.2, 0.99, 1.3], 1, 3, 0.0, 4),  # ... but min_epochs runs on, and 0.99 resets the count
        ([3.0, None, None, 2.0], 2, 1, 0.0, 3),  # epochs without a finite step do not improve
    ],
)
def test_convergence_stop_on_hand_made_loss_curves(losses, patience, min_epochs, min_delta, expected):
    rule, state = ConvergenceStop(patience, min_epochs, min_delta), {}
    stopped = next((e for e, loss in enumerate(losses, start=1) if rule.update(state, e, loss)), None)
    assert stopped == expected
    assert stopped == reference_stop_epoch(losses, patience, min_epochs, min_delta)
    json.loads(json.dumps(state))  # plain JSON: it is saved with the trainer state


def test_convergence_stop_state_survives_json_and_a_fresh_rule():
    """A resumed trainer builds a new rule and reads the state back from JSON: same decision, same epoch."""
    losses = [5.0, 4.0, 3.99, 3.98, 3.97, 3.0]
    rule = ConvergenceStop(patience=3, min_delta=0.01)
    state, straight = {}, []
    for e, loss in enumerate(losses, start=1):
        straight.append(rule.update(state, e, loss))
    state, resumed = {}, []
    for e, loss in enumerate(losses, start=1):
        state = json.loads(json.dumps(state))
        resumed.append(ConvergenceStop(patience=3, min_delta=0.01).update(state, e, loss))
    assert straight == resumed == [False, False, False, False, True, False]
    assert state["best_epoch"] == 6 and state["best_epoch_loss"] == 3.0


def test_convergence_stop_config_errors():
    for bad, match in [
        (dict(pretrain_patience=0), "pretrain_patience must be >= 1"),
        (dict(pretrain_patience=2, pretrain_min_epochs=11), r"pretrain_min_epochs=11 must be in \[1, pretrain_epochs=10"),
        (dict(pretrain_patience=2, pretrain_min_delta=1.5), "pretrain_min_delta=1.5 is a relative improvement"),
        (dict(pretrain_patience=2, pretrain_min_delta=float("nan")), "pretrain_min_delta=nan"),
        (dict(pretrain_min_epochs=5), "pretrain_min_epochs=5 applies only to the convergence stop"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(mode="two_stage", **bad)
    with pytest.raises(ValueError, match="mode='joint' has none"):
        TrainConfig(mode="joint", pretrain_patience=2)
    TrainConfig(mode="pretrain", pretrain_patience=2, pretrain_min_epochs=10, pretrain_min_delta=0.0)


def _stop_config(idx_dir, tmp_path: Path, name: str, **overrides) -> TrainConfig:
    """two_stage with the stop on: 4 SC steps an epoch (300 images, batches of 64), a checkpoint at every SC
    epoch end, the plateau schedule. min_delta 0.6 asks for a 60% lower loss, so the stop fires within a few
    epochs whatever the exact losses; the cap of 6 epochs is then not reached."""
    base = dict(mode="two_stage", pretrain_epochs=6, pretrain_batch_size=64, epochs=1, schedule="plateau",
                pretrain_patience=2, pretrain_min_delta=0.6, checkpoint_every=4, keep_checkpoints=10,
                output_dir=str(tmp_path / name))
    return tiny_config(idx_dir, tmp_path, **{**base, **overrides})


@pytest.fixture(scope="module")
def stopped_run(idx_dir, tmp_path_factory) -> Path:
    cfg = _stop_config(idx_dir, tmp_path_factory.mktemp("stop"), "ref")
    Trainer(cfg).fit()
    return Path(cfg.output_dir)


def test_pretrain_stops_when_the_epoch_loss_stops_improving(stopped_run):
    records = read_metrics(stopped_run)
    pre = [r for r in records if r.get("event") == "epoch_end" and r["stage"] == "pretrain"]
    losses = [r["epoch_loss"] for r in pre]
    expected = reference_stop_epoch(losses, patience=2, min_epochs=1, min_delta=0.6)
    assert expected is not None and len(pre) == expected < 6  # stopped after `expected` epochs, before the cap
    assert all("knn_top1" in r for r in pre) and not any("linear_top1" in r for r in records)  # probe_linear off
    (event,) = [r for r in records if r.get("event") == "stage_stopped"]
    assert event["reason"] == "converged" and event["epochs"] == expected and event["step"] == 4 * expected
    assert event["best_epoch"] == expected - 2 and event["best_epoch_loss"] == losses[expected - 3]
    summary = json.loads((stopped_run / "summary.json").read_text())
    pretrain = summary["stages"]["pretrain"]
    assert pretrain["stop_reason"] == "converged" and pretrain["stopped_early"] is True
    assert pretrain["epochs"] == expected and pretrain["steps"] == 4 * expected
    assert pretrain["epochs_without_improvement"] == 2
    assert summary["stages"]["finetune"]["epochs"] == 1  # the next stage runs as usual
    assert records[-1]["stage"] == "finetune"


@pytest.mark.parametrize("kill_at", ["counting", "stopped"])
def test_kill_and_resume_around_the_stop_ends_identical(idx_dir, tmp_path, monkeypatch, stopped_run, kill_at):
    """Killed at an SC epoch end with the no-improvement count running, or right after the stop's checkpoint:
    the resumed run stops at the same epoch and ends with the weights and log of the uninterrupted one."""
    cfg = _stop_config(idx_dir, tmp_path, "cut")

    killed: list[int] = []

    def around_the_stop(state) -> bool:
        pre = state["stage_results"].get("pretrain", {})
        if kill_at == "counting":
            due = state["stage_index"] == 0 and pre.get("epochs_without_improvement", 0) >= 1
        else:
            due = state["stage_index"] == 1 and "stop_reason" in pre
        killed.extend([state["global_step"]] if due else [])
        return due

    saved = kill_then_resume(cfg, monkeypatch, around_the_stop)
    assert saved["global_step"] == killed[0]  # the resume starts from the checkpoint the kill followed
    run = Path(cfg.output_dir)
    ref, got = load_file(str(stopped_run / "backbone.safetensors")), load_file(str(run / "backbone.safetensors"))
    assert got.keys() == ref.keys()
    for k in ref:
        assert (got[k] == ref[k]).all(), k
    strip = lambda rs: [{k: v for k, v in r.items() if k != "img_per_s"} for r in rs]
    assert strip(read_metrics(run)) == strip(read_metrics(stopped_run))
    summary = lambda p: json.loads((p / "summary.json").read_text())["stages"]["pretrain"]
    drop_time = lambda d: {k: v for k, v in d.items() if k not in ("wall_time_s", "train_loop_s")}
    assert drop_time(summary(run)) == drop_time(summary(stopped_run))


@pytest.mark.parametrize("cap, reason", [(dict(pretrain_epochs=1), "epoch_cap"), (dict(pretrain_max_steps=3),
                                                                                 "step_cap")])
def test_a_capped_stage_says_so(idx_dir, tmp_path, cap, reason):
    cfg = _stop_config(idx_dir, tmp_path, "capped", mode="pretrain", pretrain_patience=5, pretrain_min_delta=0.0,
                       **{"pretrain_epochs": 2, **cap})
    summary = Trainer(cfg).fit()["stages"]["pretrain"]
    assert summary["stop_reason"] == reason and summary["stopped_early"] is False
    assert summary["epochs"] == 1 and summary["steps"] == (4 if reason == "epoch_cap" else 3)
    (event,) = [r for r in read_metrics(Path(cfg.output_dir)) if r.get("event") == "stage_stopped"]
    assert event["reason"] == reason


def test_linear_probe_per_sc_epoch_on_test_matches_a_probe_of_the_exported_backbone(idx_dir, tmp_path):
    from sclearn.probe import probe_checkpoint

    cfg = tiny_config(idx_dir, tmp_path, mode="pretrain", pretrain_epochs=1, pretrain_batch_size=64, probe_linear=True)
    summary = Trainer(cfg).fit()["stages"]["pretrain"]
    # sclearn.probe fits the same probes on the labelled split and scores them on test, from the exported file
    reference = probe_checkpoint(Path(cfg.output_dir))
    assert summary["linear_top1"] == pytest.approx(reference["linear_top1"], abs=1e-6)
    assert summary["knn_top1"] == pytest.approx(reference["knn_top1"], abs=1e-6)
    assert "linear_val_top1" not in summary


def test_linear_probe_per_sc_epoch_uses_val_and_leaves_test_alone(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="pretrain", pretrain_epochs=2, pretrain_batch_size=64, probe_linear=True,
                      val_per_class=2, eval_test=False)
    Trainer(cfg).fit()
    ends = [r for r in read_metrics(Path(cfg.output_dir)) if r.get("event") == "epoch_end"]
    assert len(ends) == 2
    for r in ends:
        assert 0.0 <= r["linear_val_top1"] <= 1.0 and 0.0 <= r["knn_val_top1"] <= 1.0
        assert not {"linear_top1", "knn_top1"} & set(r)  # eval_test=False: test is not read during training
