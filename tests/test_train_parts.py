"""The Trainer's parts on their own: TrainState, the accumulation loop, the cycling loader, the shared accuracy and
probe, and the stage timings in summary.json."""

import copy
import json
import time
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sclearn.batching import resumable_loader
from sclearn.checkpoint import CheckpointManager
from sclearn.config import TrainConfig
from sclearn.data import cycle
from sclearn.evaluation import evaluate_accuracy, probe_splits
from sclearn.train import NonFiniteLossError, Trainer, TrainState, train_one_epoch
from sclearn.train.loop import StageLoop, stage_losses
from sclearn.train.metrics import LogWindow, MetricsLog
from tests.test_train import read_metrics, tiny_config

SUPERVISED = TrainConfig(mode="supervised")  # what stage_losses reads: CE on a plain model

# -- TrainState --------------------------------------------------------------------------------------------

# trainer_state.json as the Trainer wrote it when its progress was an untyped dict (a two_stage run, mid-finetune).
OLD_DICT_FORM = {
    "batch_in_epoch": 2, "batches_seen": 11, "epoch": 1, "epoch_loss_count": 2, "epoch_loss_sum": 4.5,
    "global_step": 7, "labeled_drawn": 0, "nonfinite_skipped": 1, "num_processes": 1, "stage_index": 1,
    "stage_results": {"pretrain": {"epochs": 1, "knn_top1": 0.31, "steps": 4, "wall_time_s": 1.2}}, "stage_step": 3,
}


def test_train_state_reads_the_dict_form_of_earlier_checkpoints_and_writes_it_back():
    state = TrainState.from_dict(json.loads(json.dumps(OLD_DICT_FORM)))
    assert (state.stage_index, state.epoch, state.batch_in_epoch, state.global_step) == (1, 1, 2, 7)
    assert state.stage_results["pretrain"]["knn_top1"] == 0.31 and state.epoch_loss == 2.25
    assert state.to_dict() == OLD_DICT_FORM  # the same readable JSON keys and values


def test_train_state_round_trip_and_the_saved_form_is_a_copy():
    state = TrainState(num_processes=2, stage_index=1, epoch=3, batch_in_epoch=4, global_step=9, stage_step=5,
                       labeled_drawn=6, batches_seen=17, nonfinite_skipped=1, epoch_loss_sum=1.5, epoch_loss_count=3,
                       stage_results={"joint": {"best_epoch_loss": 0.5, "epochs": 3}})
    saved = json.loads(json.dumps(state.to_dict(), sort_keys=True))
    assert TrainState.from_dict(saved) == state
    written = state.to_dict()
    state.results("joint")["epochs"] = 4
    state.end_epoch()
    assert written["stage_results"]["joint"]["epochs"] == 3 and written["epoch"] == 3  # later steps leave it alone
    assert (state.epoch, state.batch_in_epoch, state.epoch_loss_sum, state.epoch_loss_count) == (4, 0, 0.0, 0)
    assert state.epoch_loss is None
    state.end_stage()
    assert (state.stage_index, state.epoch, state.stage_step, state.labeled_drawn) == (2, 0, 0, 0)
    assert (state.global_step, state.batches_seen) == (9, 17)  # run-wide counters go on


def test_train_state_names_what_it_cannot_resume():
    bad = {**OLD_DICT_FORM, "mystery": 1}
    del bad["epoch"]
    with pytest.raises(ValueError, match=r"ckpt-7/trainer_state.json is not a trainer state this sclearn can resume "
                                         r"\(missing \['epoch'\], unknown \['mystery'\]\)"):
        TrainState.from_dict(bad, source="ckpt-7/trainer_state.json")


# -- the accumulation loop ---------------------------------------------------------------------------------

def _net() -> nn.Module:  # no batch norm: a micro-batch's gradient does not depend on the others
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def _loop(tmp_path: Path, model: nn.Module, *, accum: int, lr: float = 0.0, losses=None, on_nonfinite="raise",
          rows: int = 10, batch: int = 2) -> StageLoop:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(rows, 3, 2, 2, generator=g), torch.randint(0, 3, (rows,), generator=g))
    driver = resumable_loader(DataLoader(data, batch_size=batch), seed=0, drop_last=True)
    cfg = TrainConfig(mode="supervised", grad_accum_steps=accum, schedule="constant", on_nonfinite=on_nonfinite,
                      output_dir=str(tmp_path))
    accelerator = Accelerator()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = losses or (lambda b, lab: stage_losses(model, "supervised", b, lab, config=cfg))
    return StageLoop("supervised", cfg, accelerator, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                     driver=driver, labeled=None, losses=losses, total_steps=100,
                     checkpoints=CheckpointManager(accelerator, tmp_path / "checkpoints"),
                     metrics=MetricsLog(accelerator, tmp_path / "metrics.jsonl"))


def _groups(loop: StageLoop, accum: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's micro-batches, concatenated per optimizer step (the last step may take fewer)."""
    loop.driver.batch_sampler.set_position(0, 0)
    batches = list(loop.driver)
    return [(torch.cat([x for x, _ in batches[i : i + accum]]), torch.cat([y for _, y in batches[i : i + accum]]))
            for i in range(0, len(batches), accum)]


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(tmp_path, accum):
    model = _net()
    reference = copy.deepcopy(model)  # lr 0: the parameters stay those of the reference
    loop = _loop(tmp_path, model, accum=accum)
    grads, ends = [], []
    loop.optimizer.register_step_pre_hook(lambda opt, *a: grads.append([p.grad.clone() for p in model.parameters()]))
    state = TrainState()
    train_one_epoch(loop, state, 0, LogWindow(), ends.append)

    groups = _groups(loop, accum)  # 5 micro-batches of 2: steps of (accum, accum, ..., the rest)
    assert len(grads) == len(groups) == -(-5 // accum) and ends == [False] * (len(groups) - 1) + [True]
    for got, (x, y) in zip(grads, groups):
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()  # the mean over the step's images, in one batch
        for g, p in zip(got, reference.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    assert (state.batch_in_epoch, state.batches_seen, state.global_step, state.stage_step) == (5, 5, len(groups),
                                                                                              len(groups))


def test_the_loop_resumes_mid_epoch_with_the_rest_of_the_epoch(tmp_path):
    seen: dict[str, list[list[int]]] = {"full": [], "resumed": []}

    def recording(name):
        def losses(batch, lab):
            seen[name].append(batch[1].tolist())
            return stage_losses(model, "supervised", batch, lab, config=SUPERVISED)
        return losses

    model = _net()
    loop = _loop(tmp_path / "a", model, accum=2, losses=recording("full"))
    train_one_epoch(loop, TrainState(), 0, LogWindow(), lambda end: None)
    loop = _loop(tmp_path / "b", model, accum=2, losses=recording("resumed"))
    state = TrainState(batch_in_epoch=2, batches_seen=2, global_step=1, stage_step=1)  # after the first step
    train_one_epoch(loop, state, 0, LogWindow(), lambda end: None)
    assert seen["resumed"] == seen["full"][2:] and len(seen["full"]) == 5
    assert (state.batch_in_epoch, state.global_step) == (5, 3)


def test_a_non_finite_micro_batch_drops_its_whole_step(tmp_path):
    model = _net()
    start = copy.deepcopy(model.state_dict())
    calls = []

    def poisoned(batch, lab):
        terms, n = stage_losses(model, "supervised", batch, lab, config=SUPERVISED)
        calls.append(1)
        if len(calls) == 2:  # the second micro-batch of the first step
            terms["loss"] = terms["loss"] * float("nan")
        return terms, n

    loop = _loop(tmp_path / "skip", model, accum=2, lr=0.1, losses=poisoned, on_nonfinite="skip")
    taken = []
    loop.optimizer.register_step_pre_hook(lambda opt, *a: taken.append([p.detach().clone() for p in model.parameters()]))
    state = TrainState()
    train_one_epoch(loop, state, 0, LogWindow(), lambda end: None)
    assert len(taken) == 2 and state.nonfinite_skipped == 1 and state.global_step == 3  # counted as a step
    for before, p in zip(taken[0], start.values()):  # the skipped step changed nothing, not even half of it
        assert torch.equal(before, p)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # its NaN gradients were dropped too
    (event,) = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert event["event"] == "nonfinite_skipped" and event["step"] == 1

    calls.clear()
    loop = _loop(tmp_path / "raise", model, accum=2, lr=0.1, losses=poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(stage 'supervised', epoch 0\): \{'loss': nan"):
        train_one_epoch(loop, TrainState(), 0, LogWindow(), lambda end: None)


# -- the cycling loader ------------------------------------------------------------------------------------

def test_cycle_resumes_at_any_position_of_a_resumable_loader():
    data = TensorDataset(torch.arange(7), torch.arange(7))
    loader = resumable_loader(DataLoader(data, batch_size=2), seed=3, drop_last=True)  # 3 batches a pass
    labels = lambda it, n: [b[1].tolist() for b in islice(it, n)]
    straight = labels(cycle(loader), 12)
    for i in (0, 3, 6):  # a pass: 6 distinct rows of the 7 (the ragged batch is dropped)
        assert len({row for batch in straight[i : i + 3] for row in batch}) == 6
    assert straight[:3] != straight[3:6]  # each pass reshuffles
    for start in range(9):
        assert labels(cycle(loader, start=start), 3) == straight[start : start + 3], start
    with pytest.raises(ValueError, match=r"cycle\(start=2\) needs a resumable loader"):
        next(cycle(DataLoader(data, batch_size=2), start=2))


# -- the one accuracy and the one probe --------------------------------------------------------------------

class _Logits(nn.Module):
    """Predicts the first feature's sign as the class; ``frozen`` stays in eval mode like a frozen layer."""

    def __init__(self, as_object: bool):
        super().__init__()
        self.frozen, self.as_object = nn.BatchNorm1d(1), as_object

    def forward(self, x):
        logits = torch.stack([-x[:, 0], x[:, 0]], 1)  # (B, 2)
        return type("Out", (), {"logits": logits})() if self.as_object else logits


@pytest.mark.parametrize("as_object", [False, True], ids=["logits", "SCOutput-like"])
def test_evaluate_accuracy_counts_gathered_predictions_and_restores_each_modules_mode(as_object):
    x = torch.tensor([[1.0], [-1.0], [2.0], [-3.0]])
    loader = [(x, torch.tensor([1, 0, 0, 0]))]  # 3 of 4 right
    model = _Logits(as_object).train()
    model.frozen.eval()
    assert evaluate_accuracy(model, loader) == 0.75
    assert model.training and not model.frozen.training  # not model.train(True) all over
    other_process = lambda pair: (torch.cat([pair[0], torch.ones(4, dtype=torch.long)]),  # 4 more, all right
                                  torch.cat([pair[1], torch.ones(4, dtype=torch.long)]))
    assert evaluate_accuracy(model, loader, gather=other_process) == 7 / 8


def test_probe_splits_extracts_the_training_features_once_and_fits_linear_where_asked():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = (torch.randn(40, 4, generator=g) * 0.1 + y[:, None] * 2.0 - 1.0)  # two well separated blobs
    passes = {"train": 0}

    class Counted:
        def __iter__(self):
            passes["train"] += 1
            return iter([(x[:20], y[:20])])

    model = nn.Identity()
    model.register_parameter("p", nn.Parameter(torch.zeros(1)))  # a device to run on
    scores = probe_splits(model, None, Counted(), {"test": [(x[20:30], y[20:30])], "val": [(x[30:], y[30:])]},
                          k=3, linear=("val",))
    assert passes["train"] == 1
    assert scores["test"] == {"knn_top1": 1.0, "feature_dim": 4}
    assert scores["val"]["knn_top1"] == 1.0 and scores["val"]["linear_top1"] == 1.0


# -- summary.json: each stage's training-loop seconds ------------------------------------------------------

def test_summary_gives_each_stages_training_loop_seconds_without_evaluation(idx_dir, tmp_path, monkeypatch):
    real = Trainer.evaluate

    def slow(self, stage):
        time.sleep(0.5)
        return real(self, stage)

    monkeypatch.setattr(Trainer, "evaluate", slow)
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", epochs=2, log_every=1, labeled_drop_last=True,
                      checkpoint_every=1)
    stage = Trainer(cfg).fit()["stages"]["supervised"]
    records = [r for r in read_metrics(Path(cfg.output_dir)) if "img_per_s" in r]
    assert len(records) == 6  # 3 steps of 16 images an epoch, one log line each
    from_rates = sum(16 / r["img_per_s"] for r in records)
    assert stage["train_loop_s"] == pytest.approx(from_rates, rel=0.02)
    assert stage["wall_time_s"] - stage["train_loop_s"] >= 2 * 0.5  # two evaluations, and checkpoints, left out
