"""The Trainer: every mode, resume equivalence, export, errors, non-finite handling, AMP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from sclearn.checkpoint import CheckpointManager, list_checkpoints
from sclearn.config import TrainConfig
from sclearn.train import NonFiniteLossError, Trainer


def tiny_config(idx_dir, tmp_path: Path, **overrides) -> TrainConfig:
    """sc_mnist on the tiny IDX fixture: a few seconds per run on 2 CPU cores."""
    base = dict(
        data=f"idx:{idx_dir}", backbone="sc_mnist", layers=("stages.1",), channels=1, hflip=False,
        labels_per_class=5, batch_size=16, epochs=2, pretrain_epochs=1, lr=0.05, pretrain_lr=0.05,
        output_dir=str(tmp_path / "run"), checkpoint_every=3, log_every=2, report_to="none",
        progress=False, seed=0, patch_size=0.6, unlabeled_ratio=1.0,
    )
    base.update(overrides)
    return TrainConfig(**base)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["supervised", "pretrain", "two_stage", "joint"])
def test_every_mode_runs_and_writes_its_files(idx_dir, tmp_path, mode):
    cfg = tiny_config(idx_dir, tmp_path, mode=mode)
    summary = Trainer(cfg).fit()
    run = Path(cfg.output_dir)
    for name in ["config.json", "metrics.jsonl", "summary.json", "backbone.safetensors", "backbone.json",
                 "split_indices.json"]:
        assert (run / name).is_file(), name
    assert list_checkpoints(run / "checkpoints")
    records = read_metrics(run)
    assert any("loss" in r for r in records)
    assert summary["mode"] == mode and summary["global_steps"] > 0
    if mode == "pretrain":
        assert "knn_top1" in summary["stages"]["pretrain"]
        assert all("sc/stages.1" in r for r in records if "loss" in r)
    else:
        assert 0.0 <= summary["final_test_acc"] <= 1.0
    if mode == "two_stage":
        assert set(summary["stages"]) == {"pretrain", "finetune"}
        assert (run / "pretrain_backbone.safetensors").is_file()
        assert cfg.lr_for("pretrain") == 0.05 and records[-1]["stage"] == "finetune"


def test_finetune_from_exported_backbone(idx_dir, tmp_path):
    pre = tiny_config(idx_dir, tmp_path, mode="pretrain")
    Trainer(pre).fit()
    exported = Path(pre.output_dir) / "backbone.safetensors"
    cfg = tiny_config(idx_dir, tmp_path, mode="finetune", init_from=str(exported), output_dir=str(tmp_path / "ft"),
                      max_steps=2, epochs=1)
    trainer = Trainer(cfg)
    start = load_file(str(exported))
    got = trainer.backbone().state_dict()
    assert torch.equal(got["stages.0.0.conv.weight"], start["stages.0.0.conv.weight"])
    assert trainer.config.lr_for("finetune") == 0.05  # given; the default would be the paper's 0.01
    assert TrainConfig(mode="finetune", init_from="x").lr_for("finetune") == 0.01
    trainer.fit()


def test_joint_lowers_ce_and_sc(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", epochs=6, labels_per_class=10, sc_weight=0.5,
                      log_every=1, checkpoint_every=None, schedule="constant", lr=0.05, distance="cosine",
                      temperature=0.2, pool="mean")
    Trainer(cfg).fit()
    steps = [r for r in read_metrics(Path(cfg.output_dir)) if "ce" in r and "event" not in r]
    first, last = steps[:3], steps[-3:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    assert mean(last, "ce") < mean(first, "ce")
    assert mean(last, "sc") < mean(first, "sc")


@pytest.mark.parametrize("ramp", [4, 0.5])  # 4 steps, or half of the 8-step stage: the same ramp
def test_sc_weight_ramps_linearly_over_steps_or_a_fraction_of_the_stage(idx_dir, tmp_path, ramp):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", epochs=100, max_steps=8, sc_weight=2.0,
                      sc_rampup_steps=ramp, log_every=1, checkpoint_every=None)
    Trainer(cfg).fit()
    logged = [r["sc_weight"] for r in read_metrics(Path(cfg.output_dir)) if "sc_weight" in r]
    # logged after step k: the weight of step k + 1, i.e. 2.0 * min(1, k / 4)
    assert logged == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0])
    for bad in (1.5, 600.0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="sc_rampup_steps"):
            TrainConfig(sc_rampup_steps=bad)
    TrainConfig(sc_rampup_steps=1.0)  # the whole stage


def test_freeze_keeps_pretrained_layers_and_their_bn_statistics_while_fine_tuning(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="two_stage", freeze=("stages.0",), checkpoint_every=None)
    trainer = Trainer(cfg)
    trainer.fit()
    run = Path(cfg.output_dir)
    pre, final = load_file(str(run / "pretrain_backbone.safetensors")), _final_weights(run)
    stage0 = [k for k in final if k.startswith("stages.0.")]
    assert any("running_mean" in k for k in stage0)  # BN statistics are covered too
    for k in stage0:
        assert torch.equal(pre[k], final[k]), k
    assert not torch.equal(pre["stages.1.0.conv.weight"], final["stages.1.0.conv.weight"])  # the rest trains
    finetune_params = {id(p) for g in trainer.optimizers["finetune"].param_groups for p in g["params"]}
    assert not finetune_params & {id(p) for p in trainer.backbone().stages[0].parameters()}


def test_freeze_errors(idx_dir, tmp_path):
    for everything in (("",), ("stages", "head")):
        with pytest.raises(ValueError, match="leaves no backbone parameter to train"):
            Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", freeze=everything))
    with pytest.raises(ValueError, match=r"'stage.0': \['stages.0'"):
        Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", freeze=("stage.0",)))
    with pytest.raises(ValueError, match="mode='pretrain' has none"):
        tiny_config(idx_dir, tmp_path, mode="pretrain", freeze=("stages.0",))


def _record_saves(monkeypatch) -> list[tuple[str, int, int]]:
    """Patch CheckpointManager.save to also record (stage index, stage step, batch in epoch) of every save."""
    real_save, saves = CheckpointManager.save, []

    def save(self, state):
        saves.append((state["stage_index"], state["stage_step"], state["batch_in_epoch"]))
        return real_save(self, state)

    monkeypatch.setattr(CheckpointManager, "save", save)
    return saves


def test_checkpoint_every_none_saves_only_at_stage_ends(idx_dir, tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    # 50 labelled images, batch 16: 4 steps per epoch, 3 epochs; pretrain: 1 epoch
    cfg = tiny_config(idx_dir, tmp_path, mode="two_stage", epochs=3, checkpoint_every=None)
    Trainer(cfg).fit()
    assert len(saves) == 2  # one per stage, none per epoch
    assert [s[0] for s in saves] == [1, 2]  # saved after stage 0 and after stage 1 (stage_index advanced)
    assert len(list_checkpoints(Path(cfg.output_dir) / "checkpoints")) == 2


def test_checkpoint_every_n_saves_at_multiples_of_n_and_at_the_end(idx_dir, tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", epochs=3, checkpoint_every=2, keep_checkpoints=10)
    trainer = Trainer(cfg)
    assert trainer._steps_per_epoch("supervised") == 4  # ceil(50 / 16): the ragged batch is kept
    trainer.fit()
    # 12 steps, 4 per epoch. Steps 2, 6, 10 are mid-epoch (batch 2 done); steps 4 and 8 end an epoch and are
    # saved after it (batch_in_epoch back to 0); step 12 ends the stage and is saved once, by fit().
    assert saves == [(0, 2, 2), (0, 4, 0), (0, 6, 2), (0, 8, 0), (0, 10, 2), (1, 0, 0)]


def test_pretrain_max_steps_caps_only_the_sc_stage(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="two_stage", pretrain_epochs=5, epochs=5, pretrain_max_steps=2,
                      max_steps=3, checkpoint_every=None)
    summary = Trainer(cfg).fit()
    assert summary["stages"]["pretrain"]["steps"] == 2
    assert summary["stages"]["finetune"]["steps"] == 3
    assert TrainConfig(max_steps=7).max_steps_for("pretrain") == 7  # unset: max_steps caps both stages
    with pytest.raises(ValueError, match="pretrain_max_steps"):
        TrainConfig(pretrain_max_steps=0)


@pytest.mark.parametrize("drop_last, steps_per_epoch", [(None, 4), (False, 4), (True, 3)])
def test_labeled_drop_last(idx_dir, tmp_path, drop_last, steps_per_epoch):
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", labeled_drop_last=drop_last)
    trainer = Trainer(cfg)
    assert trainer._steps_per_epoch("supervised") == steps_per_epoch  # 50 images, batch 16
    sizes = [len(y) for _, y in trainer.loaders["labeled"]]
    assert sizes == ([16, 16, 16] if drop_last else [16, 16, 16, 2])


def kill_then_resume(cfg: TrainConfig, monkeypatch: pytest.MonkeyPatch, die_after) -> dict:
    """Fit ``cfg`` until ``die_after(state)`` is true right after a checkpoint save (a simulated kill), then fit
    again with ``resume=True``. Returns the trainer state of the checkpoint the resume started from."""
    real_save = CheckpointManager.save

    def save_then_die(self, state):
        path = real_save(self, state)
        if die_after(state):
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(CheckpointManager, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).fit()
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    resumed_from = json.loads((list_checkpoints(Path(cfg.output_dir) / "checkpoints")[-1]
                               / "trainer_state.json").read_text())
    cfg.resume = True
    Trainer(cfg).fit()
    return resumed_from


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "backbone.safetensors"))


@pytest.mark.parametrize("mode", ["joint", "two_stage"])
def test_resume_mid_epoch_gives_identical_weights(idx_dir, tmp_path, monkeypatch, mode):
    ref_cfg = tiny_config(idx_dir, tmp_path, mode=mode, output_dir=str(tmp_path / "ref"), checkpoint_every=2,
                          schedule="plateau")
    Trainer(ref_cfg).fit()
    ref = _final_weights(Path(ref_cfg.output_dir))

    cfg = tiny_config(idx_dir, tmp_path, mode=mode, output_dir=str(tmp_path / "cut"), checkpoint_every=2,
                      schedule="plateau")
    saves: list[int] = []

    def second_save(state) -> bool:  # the second checkpoint is mid-epoch: die right after it
        saves.append(state["global_step"])
        return len(saves) == 2

    state = kill_then_resume(cfg, monkeypatch, second_save)
    assert state["batch_in_epoch"] > 0  # really mid-epoch
    got = _final_weights(Path(cfg.output_dir))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("img_per_s",)} for r in rs]
    assert strip(read_metrics(Path(cfg.output_dir))) == strip(read_metrics(Path(ref_cfg.output_dir)))


def test_same_seed_twice_gives_identical_metrics(idx_dir, tmp_path):
    runs = []
    for name in ["a", "b"]:
        cfg = tiny_config(idx_dir, tmp_path, mode="joint", output_dir=str(tmp_path / name))
        Trainer(cfg).fit()
        runs.append([{k: v for k, v in r.items() if k != "img_per_s"} for r in read_metrics(Path(cfg.output_dir))])
    assert runs[0] == runs[1] and len(runs[0]) > 3


def test_exported_backbone_loads_in_timm_with_identical_features(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", max_steps=2)
    trainer = Trainer(cfg)
    trainer.fit()
    path = Path(cfg.output_dir) / "backbone.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["architecture"] == "sc_mnist" and meta["num_classes"] == 10
    loaded = timm.create_model("sc_mnist", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               num_classes=10, in_chans=1).eval()
    ours = trainer.backbone().eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_features(x), ours.forward_features(x), atol=1e-6)
        assert torch.allclose(loaded(x), ours(x), atol=1e-6)


def test_torchvision_backbone_exports_and_reloads(idx_dir, tmp_path):
    import torchvision

    cfg = tiny_config(idx_dir, tmp_path, mode="joint", backbone="torchvision:resnet18", layers=("layer2",),
                      channels=3, max_steps=1, image_size=32, batch_size=8)
    Trainer(cfg).fit()
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(load_file(str(Path(cfg.output_dir) / "backbone.safetensors")))


def test_bf16_autocast_on_cpu_smoke(idx_dir, tmp_path):
    # In a process of its own: accelerate keeps one mixed precision per process, and this one already runs "no".
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "tests" / "scripts" / "bf16_run.py"), str(idx_dir),
                           str(tmp_path)], env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["global_steps"] == 2
    assert got["losses"] and all(torch.isfinite(torch.tensor(got["losses"])))
    # The launcher's bf16 is in effect and recorded in config.json; the caller's config still says "no".
    assert (got["asked"], got["effective"], got["recorded"]) == ("no", "bf16", "bf16")


def test_another_mixed_precision_in_the_same_process_is_refused(idx_dir, tmp_path):
    first = Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1))
    first.release_run_dir()  # this process's accelerate state now holds mixed_precision "no"
    other = tiny_config(idx_dir, tmp_path, mode="supervised", mixed_precision="bf16", output_dir=str(tmp_path / "bf"))
    with pytest.raises(ValueError, match=r"mixed_precision='bf16', but this process already runs accelerate with "
                                         r"mixed_precision='no' .*Run this Trainer in a new process"):
        Trainer(other)
    assert other.mixed_precision == "bf16" and not (tmp_path / "bf").exists()  # refused before anything was made


def test_gradient_accumulation_matches_big_batch(idx_dir, tmp_path):
    # Without batch norm or augmentation, 2 micro-batches of 8 give exactly the update of one batch of 16:
    # the sampler hands out the same 16 images, and the loss is scaled by the group size.
    from torch import nn

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    common = dict(mode="supervised", epochs=1, max_steps=2, translate=0, schedule="constant", weight_decay=0.0)
    one = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "one"), batch_size=16, **common)
    two = tiny_config(idx_dir, tmp_path, output_dir=str(tmp_path / "two"), batch_size=8, grad_accum_steps=2,
                      **common)
    t1, t2 = Trainer(one, model=net()), Trainer(two, model=net())
    s1, s2 = t1.fit(), t2.fit()
    assert s1["global_steps"] == s2["global_steps"] == 2
    for (k, a), b in zip(t1.backbone().state_dict().items(), t2.backbone().state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    untouched = net().state_dict()
    assert not torch.allclose(untouched["4.weight"], t1.backbone().state_dict()["4.weight"])


def test_joint_gradient_accumulation_runs(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", batch_size=8, grad_accum_steps=2, max_steps=2, epochs=1)
    assert Trainer(cfg).fit()["global_steps"] == 2


def test_nonfinite_loss_raise_and_skip(idx_dir, tmp_path, monkeypatch):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", epochs=1, checkpoint_every=1)
    trainer = Trainer(cfg)
    real = trainer._losses
    calls = {"n": 0}

    def poisoned(stage, batch, lab):
        terms, n = real(stage, batch, lab)
        calls["n"] += 1
        if calls["n"] == 2:
            terms["sc"] = terms["sc"] * float("nan")
            terms["loss"] = terms["ce"] + terms["sc"]
        return terms, n

    monkeypatch.setattr(trainer, "_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*'sc': nan"):
        trainer.fit()
    assert list_checkpoints(Path(cfg.output_dir) / "checkpoints")  # step 1's checkpoint is kept

    cfg0 = tiny_config(idx_dir, tmp_path, mode="joint", epochs=1, checkpoint_every=None,
                       output_dir=str(tmp_path / "none"))
    trainer0 = Trainer(cfg0)
    real0 = trainer0._losses

    def poisoned0(stage, batch, lab):
        terms, n = real0(stage, batch, lab)
        terms["loss"] = terms["loss"] * float("nan")
        return terms, n

    monkeypatch.setattr(trainer0, "_losses", poisoned0)
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written yet"):
        trainer0.fit()

    cfg2 = tiny_config(idx_dir, tmp_path, mode="joint", epochs=1, on_nonfinite="skip", output_dir=str(tmp_path / "s"))
    trainer2 = Trainer(cfg2)
    real2, calls["n"] = trainer2._losses, 0

    def poisoned2(stage, batch, lab):
        terms, n = real2(stage, batch, lab)
        calls["n"] += 1
        if calls["n"] == 2:
            terms["loss"] = terms["loss"] * float("inf")
        return terms, n

    monkeypatch.setattr(trainer2, "_losses", poisoned2)
    summary = trainer2.fit()
    assert summary["nonfinite_skipped"] == 1
    assert any(r.get("event") == "nonfinite_skipped" for r in read_metrics(Path(cfg2.output_dir)))
    for v in load_file(str(Path(cfg2.output_dir) / "backbone.safetensors")).values():
        assert torch.isfinite(v.float()).all()


def test_resume_with_a_different_config_is_refused(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1)
    Trainer(cfg).fit()
    changed = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1, lr=0.2, seed=3, resume=True)
    with pytest.raises(ValueError, match=r"different config:\n(.|\n)*lr: run has 0.05, now 0.2(.|\n)*seed"):
        Trainer(changed)
    again = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(again)


def test_output_dir_not_writable(idx_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "x"
        try:
            probe.write_text("root ignores permissions")
            probe.unlink()
            pytest.skip("running as root: directory permissions are not enforced")
        except PermissionError:
            pass
        with pytest.raises(ValueError, match="not writable"):
            Trainer(tiny_config(idx_dir, tmp_path, output_dir=str(locked / "run")))
    finally:
        locked.chmod(0o700)


def test_output_dir_that_is_a_file_is_not_writable(idx_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ValueError, match="not writable"):
        Trainer(tiny_config(idx_dir, tmp_path, output_dir=str(blocker / "run")))


def test_head_size_mismatch(idx_dir, tmp_path):
    model = timm.create_model("sc_mnist", num_classes=7, in_chans=1)
    with pytest.raises(ValueError, match=r"outputs shape \(2, 7\) but the data has 10 classes.*num_classes=10"):
        Trainer(tiny_config(idx_dir, tmp_path), model=model)


def test_bf16_where_unsupported_is_refused(idx_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="bf16.*not supported by this GPU"):
        Trainer(tiny_config(idx_dir, tmp_path, mixed_precision="bf16"))


def test_unknown_backbone_names_close_matches():
    from sclearn.backbones import build_backbone

    with pytest.raises(ValueError, match=r"unknown model 'resnet_18'.*'resnet18'"):
        build_backbone("resnet_18", num_classes=10)


def test_config_errors():
    with pytest.raises(ValueError, match="mode='bogus' is not one of"):
        TrainConfig(mode="bogus")
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(mode="finetune")
    with pytest.raises(ValueError, match="at least 2 images"):
        TrainConfig(mode="pretrain", batch_size=1)
    with pytest.raises(ValueError, match="fp16"):
        if torch.cuda.is_available():
            pytest.skip("fp16 is valid on CUDA")
        Trainer(TrainConfig(mixed_precision="fp16", data="idx:/nonexistent"))


def test_per_layer_patch_sizes_and_weights(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="joint", layers=("stages.0", "stages.1"), layer_patch_sizes=(5, 0.5),
                      layer_weights=(0.5, 2.0), max_steps=1, epochs=1)
    trainer = Trainer(cfg)
    wrapper = trainer._wrapper()
    assert wrapper.loss_for("stages.0").patch_size == 5 and wrapper.loss_for("stages.1").patch_size == 0.5
    assert wrapper.weights == {"stages.0": 0.5, "stages.1": 2.0}
    trainer.fit()
    with pytest.raises(ValueError, match="1 layer_patch_sizes for 2 layers"):
        TrainConfig(layers=("a", "b"), layer_patch_sizes=(3,))


def test_probe_any_checkpoint_beats_nothing_and_reports_random_baseline(idx_dir, tmp_path):
    from sclearn.checkpoint import list_checkpoints as ckpts
    from sclearn.probe import probe_checkpoint

    cfg = tiny_config(idx_dir, tmp_path, mode="pretrain", pretrain_epochs=1)
    Trainer(cfg).fit()
    run = Path(cfg.output_dir)
    for source in [run, ckpts(run / "checkpoints")[-1], run / "backbone.safetensors"]:
        result = probe_checkpoint(source, random_baseline=True)
        assert result["layer"] == "stages.1" and result["feature_dim"] == 64 * 4
        for key in ["linear_top1", "knn_top1", "random_linear_top1", "random_knn_top1"]:
            assert 0.0 <= result[key] <= 1.0
        assert result["linear_top1"] > 0.2  # the fixture's classes are easy; chance is 0.1


def test_resume_with_another_process_count_is_refused(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1)
    Trainer(cfg).fit()
    ckpt = list_checkpoints(Path(cfg.output_dir) / "checkpoints")[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["num_processes"] = 2
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="written by 2 process"):
        Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1, resume=True))


def test_init_from_loads_compiled_checkpoint_keys_and_refuses_other_shapes(tmp_path):
    from safetensors.torch import save_file

    from sclearn.backbones import load_backbone_weights

    src = timm.create_model("sc_mnist", num_classes=10, in_chans=1)
    keys = {f"_orig_mod.backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}
    save_file(keys, str(tmp_path / "model.safetensors"))
    dst = timm.create_model("sc_mnist", num_classes=4, in_chans=1)
    skipped = load_backbone_weights(dst, tmp_path)
    assert skipped and all(k.startswith("head.") for k in skipped)  # only the class-sized head differs
    assert torch.equal(dst.state_dict()["stages.0.0.conv.weight"], src.state_dict()["stages.0.0.conv.weight"])
    with pytest.raises(ValueError, match="outside the classifier"):
        load_backbone_weights(timm.create_model("sc_mnist", num_classes=10, in_chans=3), tmp_path)
