"""The hub folder of a run: timm's own format, loadable by timm (or torchvision), with a model card; the CLI."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import sclearn  # noqa: F401  (registers sc_mnist with timm, as the card tells users to)
from sclearn import data as sc_data
from sclearn.export import export_run, load_exported, main
from sclearn.train import Trainer
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def joint_run(idx_dir, tmp_path_factory):
    """A finished joint run whose command line is a recipe's, and its Trainer."""
    tmp = tmp_path_factory.mktemp("export")
    argv = [str(ROOT / "recipes" / "cifar10_joint.py"), "--max-steps", "2", "--backbone", "sc_mnist"]
    real_argv, real_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(ROOT)  # the recorded script path is shown relative to the cwd it ran in
    try:
        cfg = tiny_config(idx_dir, tmp, mode="joint", max_steps=2, epochs=1)
        trainer = Trainer(cfg)
        summary = trainer.fit()
    finally:
        sys.argv = real_argv
        os.chdir(real_cwd)
    return Path(cfg.output_dir), trainer, summary


def test_run_writes_a_hub_folder_that_timm_loads_with_the_same_weights_and_outputs(joint_run):
    run, trainer, summary = joint_run
    folder = run / "export"
    assert summary["export"] == str(folder)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md",
                                                 "training_config.json"}
    assert (run / "backbone.safetensors").is_file()  # kept beside the hub folder
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(model).__name__ == "Table4Net" and model.num_classes == 10
    exported = load_file(str(run / "backbone.safetensors"))  # written independently, by export_backbone
    assert model.state_dict().keys() == exported.keys()
    for key, value in exported.items():
        assert torch.equal(model.state_dict()[key], value), key
    ours = trainer.backbone().eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "sc_mnist" and config["model_args"]["in_chans"] == 1
    assert config["label_names"] == list(trainer.splits.class_names)
    assert "license" not in config["pretrained_cfg"] or config["pretrained_cfg"]["license"] is None


def test_timm_preprocessing_of_the_export_is_the_runs_eval_transform(joint_run):
    run, trainer, _ = joint_run
    model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
    timm_tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    mean, std = trainer.normalization["mean"], trainer.normalization["std"]
    ours = sc_data.build_transform(train=False, image_size=None, mean=mean, std=std, channels=1)
    image = Image.fromarray((torch.arange(28 * 28) % 251).reshape(28, 28).to(torch.uint8).numpy(), mode="L")
    assert torch.allclose(timm_tf(image), ours(image), atol=1e-6)


def test_model_card_gives_backbone_sc_loss_data_results_and_command(joint_run):
    run, trainer, summary = joint_run
    card = (run / "export" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: timm" in card
    test_acc = summary["stages"]["joint"]["test_acc"]
    assert f"| joint | top-1 of the classifier on the test split, at the stage's end | {100 * test_acc:.2f}% |" in card
    cfg = trainer.config
    assert "`sc_mnist` (timm), 131,860 parameters" in card
    assert "`stages.1` (weight 1, patch 0.6)" in card and f"distance `{cfg.distance}`" in card
    assert f"`{cfg.data}`" in card and f"{summary['num_labeled']} labelled images (5 per class)" in card
    assert "python recipes/cifar10_joint.py --max-steps 2 --backbone sc_mnist" in card
    assert 'timm.create_model("local-dir:' in card and "import sclearn" in card


def test_probe_results_reach_the_card_when_the_export_is_rewritten(joint_run, tmp_path):
    run, _, _ = joint_run
    probe = {"layer": "stages.1", "feature_dim": 256, "num_train": 50, "num_test": 100, "linear_top1": 0.4321,
             "knn_top1": 0.3, "random_linear_top1": 0.25, "random_knn_top1": 0.2}
    (run / "probe.json").write_text(json.dumps(probe))
    try:
        card = (export_run(run, tmp_path / "hub") / "README.md").read_text()
    finally:
        (run / "probe.json").unlink()
    assert "frozen `stages.1` features (256-d), fitted on the 50 labelled images" in card and "43.21%" in card
    assert "| probe | the same linear probe on the same net at random init | 25.00% |" in card


def test_cli_rewrites_the_folder_keeping_other_files_and_refuses_foreign_folders(joint_run, tmp_path, capsys):
    run, _, _ = joint_run
    out = tmp_path / "hub"
    out.mkdir()
    (out / "training_config.json").write_text("{}")  # an earlier export
    (out / "LICENSE").write_text("mine")
    main([str(run), "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    assert (out / "LICENSE").read_text() == "mine"
    assert json.loads((out / "training_config.json").read_text()) == json.loads((run / "config.json").read_text())
    for key, value in load_file(str(run / "backbone.safetensors")).items():
        assert torch.equal(load_file(str(out / "model.safetensors"))[key], value), key

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("x")
    with pytest.raises(SystemExit, match="is not an sclearn export folder"):
        main([str(run), "--out", str(foreign)])
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]
    with pytest.raises(SystemExit, match="is not a finished sclearn run"):
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])

    old = tmp_path / "old-run"  # a run from before hub folders: backbone.json without the input description
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("export", "checkpoints"))
    meta = json.loads((old / "backbone.json").read_text())
    (old / "backbone.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("mean", "std")}))
    with pytest.raises(SystemExit, match=r"backbone.json lacks \['mean', 'std'\] \(written by sclearn before"):
        main([str(old)])
    assert not (old / "export").exists()


@pytest.mark.parametrize("env, says", [
    ({"HF_HUB_OFFLINE": "1"}, "offline mode is on (HF_HUB_OFFLINE=1)"),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "http://127.0.0.1:9 is unreachable"),
])
def test_push_without_the_hub_fails_at_once_with_one_line(joint_run, tmp_path, env, says):
    run, _, _ = joint_run
    out = tmp_path / "hub"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sclearn.export", str(run), "--out", str(out), "--push-to-hub",
                           "someone/sc-model"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - started < 60  # an import, then no network wait
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sclearn.export: cannot push to the Hugging Face Hub: "), lines
    assert says in lines[0]
    assert not out.exists()  # failed before writing anything


def test_torchvision_backbone_exports_a_folder_torchvision_loads(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", backbone="torchvision:resnet18", layers=("layer2",),
                      channels=3, max_steps=1, epochs=1, image_size=32, batch_size=8)
    trainer = Trainer(cfg)
    trainer.fit()
    folder = Path(cfg.output_dir) / "export"
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "torchvision" and config["architecture"] == "resnet18"
    net = load_exported(folder).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), trainer.backbone().eval()(x))
    card = (folder / "README.md").read_text()
    assert "library_name: torchvision" in card and 'torchvision.models.get_model("resnet18"' in card


def test_a_custom_module_gets_weights_config_and_card_but_no_timm_config(idx_dir, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1)
    Trainer(cfg, model=net).fit()
    folder = Path(cfg.output_dir) / "export"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "README.md", "training_config.json"}
    for key, value in net.state_dict().items():
        assert torch.equal(load_file(str(folder / "model.safetensors"))[key], value), key
    with pytest.raises(FileNotFoundError, match="has no config.json: its backbone is not a timm or torchvision"):
        load_exported(folder)
