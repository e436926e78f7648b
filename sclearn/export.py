"""Share a run's weights: a Hugging Face hub folder written with timm's own tools, and a push to the hub.

    python -m sclearn.export runs/x                            # (re)write runs/x/export
    python -m sclearn.export runs/x --out /tmp/x-hub           # somewhere else
    python -m sclearn.export runs/x --push-to-hub you/sc-fmnist

Every run writes ``<run>/export/`` when it finishes (``backbone.safetensors`` stays as it is). The folder holds:

- ``config.json`` and ``model.safetensors``, written by timm's ``save_for_hf``: the architecture, its model
  arguments (``num_classes``, ``in_chans``...) and the run's input size and normalisation as timm's
  ``pretrained_cfg``, so ``timm.data.resolve_data_config({}, model=model)`` gives the run's preprocessing;
- ``training_config.json``: the run's whole ``TrainConfig``;
- ``README.md``: a model card (backbone, SC layers and loss, data and split, test accuracy and probes, the
  command that made the run), built with ``huggingface_hub.ModelCard``.

Load it with timm (the Table-4 nets are registered with timm by ``import sclearn``)::

    import sclearn, timm
    model = timm.create_model("local-dir:runs/x/export", pretrained=True)

timm cannot build torchvision models, so for ``torchvision:<name>`` backbones ``config.json`` names the
torchvision architecture instead (``{"library_name": "torchvision", "architecture": "resnet18", ...}``) and the
weights load with ``torchvision.models.get_model(name, num_classes=k).load_state_dict(load_file(...))``;
:func:`load_exported` does either. A backbone that is neither (a module passed to ``Trainer(model=...)``) gets
the weights, the training config and the card, but no ``config.json``.

``--push-to-hub`` pushes timm models with timm's ``push_to_hf_hub`` and then the card and training config;
torchvision folders go up as they are (``HfApi.upload_folder``). Offline (``HF_HUB_OFFLINE=1``) or with the hub
unreachable it stops at once with a one-line message, before writing anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones import TORCHVISION_PREFIX, build_backbone, load_backbone_weights
from .config import TrainConfig

EXPORT_DIR = "export"
TRAINING_CONFIG = "training_config.json"  # also marks a folder as an sclearn export
COMMAND_FILE = "command.json"
PROBE_FILE = "probe.json"  # written by `python -m sclearn.probe <run> --save`
_OUR_FILES = ("config.json", "model.safetensors", "README.md", TRAINING_CONFIG)

CITATION = """@article{hoffer2016spatial,
  title={Spatial contrasting for deep unsupervised learning},
  author={Hoffer, Elad and Hubara, Itay and Ailon, Nir},
  year={2016}
}"""


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode, or no network)."""


# -- what made the run ----------------------------------------------------------------------------------
def record_command(run_dir: str | Path, *, resume: bool) -> None:
    """Record ``sys.argv`` in ``<run_dir>/command.json``: the command of a fresh run, appended for a resume."""
    path = Path(run_dir) / COMMAND_FILE
    entry = {"argv": list(sys.argv), "cwd": os.getcwd()}
    if resume and path.is_file():
        record = json.loads(path.read_text())
        record["resumed"].append(entry)
    else:
        record = {"command": entry, "resumed": []}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _shell_command(entry: dict[str, Any]) -> str:
    """``python recipes/x.py --flag ...`` (script relative to the cwd it ran in), or how Python ran it."""
    argv, cwd = list(entry["argv"]), Path(entry.get("cwd", "."))
    if not argv or not argv[0].endswith(".py"):
        return f"# from Python (sys.argv: {shlex.join(argv)}); every setting is in {TRAINING_CONFIG}"
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(cwd):
        argv[0] = str(script.relative_to(cwd))
    return "python " + shlex.join(argv)


# -- the folder -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rebuild_backbone(run_dir: Path, config: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
    net = build_backbone(config["backbone"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                         **config.get("model_kwargs", {}))
    load_backbone_weights(net, run_dir / "backbone.safetensors")
    return net


def _kind(model: nn.Module, backbone_name: str) -> str:
    """"timm", "torchvision" or "custom": what can rebuild this architecture from a config."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch and timm.is_model(arch):
        return "timm"
    if backbone_name.startswith(TORCHVISION_PREFIX) and type(model).__module__.startswith("torchvision."):
        return "torchvision"
    return "custom"


def _hub_args(model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` and ``data_config`` for timm's ``save_for_hf`` / ``push_to_hf_hub``.

    The data config is the run's eval transform (sclearn.data.build_transform): resize and centre-crop to the
    input size (bilinear), then the run's normalisation. The pretrained-weight fields of the architecture's
    default config (tag, licence, origin) describe timm's weights, not these, so they are cleared.
    """
    data_config = {"input_size": tuple(meta["input_size"]), "mean": tuple(meta["mean"]), "std": tuple(meta["std"]),
                   "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
    stale = ("tag", "license", "origin_url", "paper_ids", "paper_name", "hf_hub_id", "url", "notes")
    cleared = {k: None for k in stale if model.pretrained_cfg.get(k)}
    model_config = {"pretrained_cfg": cleared, "label_names": list(meta["class_names"])}
    return {"model_config": model_config, "data_config": data_config}


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / TRAINING_CONFIG).is_file())):
        raise ValueError(f"{out} exists and is not an sclearn export folder (it has no {TRAINING_CONFIG}); "
                         f"choose a new or empty folder (--out, or out=) (nothing was written)")


def export_run(run_dir: str | Path, out: str | Path | None = None, *, backbone: nn.Module | None = None,
               summary: dict[str, Any] | None = None, repo_id: str | None = None) -> Path:
    """(Re)write the hub folder of a finished run: timm's ``save_for_hf`` files, the training config, the card.

    Args:
        run_dir: A finished run (``config.json``, ``backbone.safetensors`` + ``backbone.json``).
        out: The folder; default ``<run_dir>/export``. Only the folder's own four files are replaced (each
            atomically); anything else in it stays.
        backbone: The trained backbone (the Trainer passes it); default: rebuilt from the run's files.
        summary: The run's summary; default: ``<run_dir>/summary.json``.
        repo_id: The hub repo it will be pushed to, for the card's usage example (default: a local folder).

    Returns:
        The folder.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / EXPORT_DIR
    _check_out(out)
    config, meta = _read_json(run_dir / "config.json"), _read_json(run_dir / "backbone.json")
    if config is None or meta is None or not (run_dir / "backbone.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished sclearn run (it needs config.json, backbone.json "
                                "and backbone.safetensors, written when training ends)")
    missing = [k for k in ("input_size", "mean", "std") if k not in meta]
    if missing:
        raise ValueError(f"{run_dir / 'backbone.json'} lacks {missing} (written by sclearn before hub folders "
                         "existed): add them (the input's [C, H, W], and the mean and std that "
                         "sclearn.data.normalization_stats gives for the run's splits), or train the run again")
    summary = summary if summary is not None else _read_json(run_dir / "summary.json") or {}
    if backbone is None:
        model = _rebuild_backbone(run_dir, config, meta)
    else:  # a CPU, contiguous copy: the trained one may sit on a GPU, in channels_last, under hooks
        model = copy.deepcopy(backbone).cpu().to(memory_format=torch.contiguous_format)
    kind = _kind(model, config["backbone"])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-") as tmp:
        staged = Path(tmp)
        if kind == "timm":
            timm.models.save_for_hf(model, str(staged), safe_serialization=True, **_hub_args(model, meta))
        else:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(staged / "model.safetensors"), metadata={"format": "pt"})
            if kind == "torchvision":
                arch = config["backbone"][len(TORCHVISION_PREFIX):]
                (staged / "config.json").write_text(json.dumps(
                    {"library_name": "torchvision", "architecture": arch, "num_classes": meta["num_classes"],
                     "label_names": list(meta["class_names"]), "input_size": meta["input_size"],
                     "mean": meta["mean"], "std": meta["std"]}, indent=2) + "\n")
        (staged / TRAINING_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        arch = {"timm": model.pretrained_cfg.get("architecture"), "torchvision": config["backbone"]}.get(
            kind, f"{type(model).__module__}.{type(model).__qualname__}")
        card = model_card(config, meta, summary, kind=kind, arch=arch,
                          num_params=sum(p.numel() for p in model.parameters()),
                          probe=_read_json(run_dir / PROBE_FILE), command=_read_json(run_dir / COMMAND_FILE),
                          run_name=run_dir.resolve().name, repo_id=repo_id)
        card.save(staged / "README.md")
        for name in _OUR_FILES:
            if (staged / name).is_file():
                os.replace(staged / name, out / name)
    return out


def load_exported(folder: str | Path) -> nn.Module:
    """The model of an export folder: timm's ``local-dir:`` loader, or torchvision's for torchvision backbones."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} has no config.json: its backbone is not a timm or torchvision model; "
                                "build the architecture yourself and load model.safetensors into it")
    if config.get("library_name") == "torchvision":
        import torchvision

        net = torchvision.models.get_model(config["architecture"], weights=None, num_classes=config["num_classes"])
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
        return net
    from . import models  # noqa: F401  (registers the Table-4 nets with timm)

    return timm.create_model(f"local-dir:{folder}", pretrained=True)


# -- the card -------------------------------------------------------------------------------------------
def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def _results_rows(config: dict[str, Any], summary: dict[str, Any], probe: dict[str, Any] | None) -> list[str]:
    layer = (config.get("layers") or ["the SC layer"])[0]
    knn = f"kNN top-1 (k = {config.get('knn_k', 20)}) on frozen `{layer}` features, labelled images as the bank"
    meaning = {
        "test_acc": "top-1 of the classifier on the test split, at the stage's end",
        "val_acc": "top-1 on the validation split (held out of the labelled train data), at the stage's end",
        "best_val_acc": "best validation top-1 over the stage's end-of-epoch evaluations",
        "knn_top1": f"{knn}, scored on the test split",
        "knn_val_top1": f"{knn}, scored on the validation split",
    }
    rows = []
    for stage, results in (summary.get("stages") or {}).items():
        for key, text in meaning.items():
            if key in results:
                rows.append(f"| {stage} | {text} | {_pct(results[key])} |")
    if probe:
        fit = (f"fitted on the {probe.get('num_train')} labelled images, scored on the {probe.get('num_test')} "
               f"test images")
        where = f"frozen `{probe.get('layer') or 'final'}` features ({probe.get('feature_dim')}-d)"
        rows.append(f"| probe | linear probe (logistic regression) on {where}, {fit} | {_pct(probe.get('linear_top1'))} |")
        rows.append(f"| probe | kNN probe on the same features | {_pct(probe.get('knn_top1'))} |")
        if "random_linear_top1" in probe:
            rows.append(f"| probe | the same linear probe on the same net at random init | "
                        f"{_pct(probe['random_linear_top1'])} |")
            rows.append(f"| probe | the same kNN probe, random init | {_pct(probe['random_knn_top1'])} |")
    return rows


def _sc_lines(config: dict[str, Any]) -> list[str]:
    if config["mode"] not in ("pretrain", "two_stage", "joint"):
        return ["- **SC**: none (cross-entropy only: the supervised baseline)"]
    layers = config.get("layers") or []
    weights = config.get("layer_weights") or [1.0] * len(layers)
    sizes = config.get("layer_patch_sizes") or [config["patch_size"]] * len(layers)
    per_layer = ", ".join(f"`{n}` (weight {w:g}, patch {s})" for n, w, s in zip(layers, weights, sizes))
    per_layer = per_layer or "the net's `sc_layer`"
    lines = [
        f"- **SC layers**: {per_layer}; patch sizes are cells, or a fraction of the map side",
        f"- **SC loss**: distance `{config['distance']}`, temperature {config['temperature']:g}, patch vector "
        f"`{config['pool']}`, {config['num_patches']} patches per image, min offset {config['min_offset']}, "
        f"projector {config.get('projector_dim') or 'none'}",
    ]
    if config["mode"] == "joint":
        ramp = config["sc_rampup_steps"]
        ramp = (f"ramped up from 0 over {ramp:.0%} of the stage" if isinstance(ramp, float) else
                f"ramped up from 0 over {ramp} steps" if ramp else "constant")
        lines.append(f"- **Joint loss**: CE + λ·SC with λ = {config['sc_weight']:g} ({ramp}); "
                     f"{config['unlabeled_ratio']:g} unlabelled images per labelled image in each step")
    return lines


def model_card(config: dict[str, Any], meta: dict[str, Any], summary: dict[str, Any], *, kind: str, arch: str,
               num_params: int, probe: dict[str, Any] | None = None, command: dict[str, Any] | None = None,
               run_name: str = "run", repo_id: str | None = None) -> Any:
    """The README of an export folder, as a ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = TrainConfig.from_dict(config)
    data = config.get("data") or "(splits passed to the Trainer)"
    hub_dataset = "/" in data and ":" not in data  # a hub id, not a local source
    card_data = ModelCardData(
        library_name="timm" if kind == "timm" else ("torchvision" if kind == "torchvision" else None),
        pipeline_tag="image-classification", datasets=[data] if hub_dataset else None,
        tags=["image-classification", "sclearn", "spatial-contrasting", "semi-supervised"]
        + (["timm"] if kind == "timm" else []),
    )
    classes = list(meta.get("class_names") or [])
    c, h, w = meta["input_size"]
    stages = summary.get("stages") or {}
    steps = ", ".join(f"{s}: {r.get('steps', '?')} steps" for s, r in stages.items()) or "–"
    labels = config.get("labels_per_class")
    lines = [
        f"# {arch} trained with Spatial Contrasting: sclearn run `{run_name}`",
        "",
        f"`{arch}` trained by sclearn in `{config['mode']}` mode: "
        + {"joint": "cross-entropy on the labelled images plus λ × the Spatial Contrasting (SC) loss on every image "
                    "of the step, in one forward pass.",
           "two_stage": "SC pre-training on the unlabelled images, then fine-tuning with cross-entropy on the "
                        "labelled ones.",
           "pretrain": "SC pre-training only (the classifier head is untrained).",
           "finetune": "cross-entropy fine-tuning from pretrained weights.",
           "supervised": "cross-entropy on the labelled images only (the baseline of an SC comparison)."}[
            config["mode"]],
        "SC (Hoffer, Hubara & Ailon, 2016) samples two patches of each image's feature map at a layer and "
        "scores same-image pairs against other-image pairs with a softmax over distances.",
        "",
        "## Results",
        "",
        "| stage | what | value |",
        "|---|---|---|",
        *(_results_rows(config, summary, probe) or ["| – | no evaluation recorded | – |"]),
        "",
        "One run, one seed: see the spread over seeds before comparing runs.",
        "",
        "## Model",
        "",
        f"- **Backbone**: `{arch}` ({kind}), {num_params:,} parameters, {len(classes)} classes: {', '.join(classes)}",
        f"- **Input**: {c} × {h} × {w}, scaled to [0, 1], normalised with mean {_floats(meta['mean'])} and std "
        f"{_floats(meta['std'])} (the run's training-set statistics)",
        "",
        "## Training",
        "",
        f"- **Mode**: `{config['mode']}` ({steps}; {summary.get('wall_time_s', '?')} s wall time on "
        f"{summary.get('num_processes', 1)} process(es), mixed precision `{config.get('mixed_precision')}`)",
        *_sc_lines(config),
        f"- **Optimiser**: SGD, momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}, `{cfg.schedule}` "
        f"schedule; " + "; ".join(f"{s}: lr {cfg.lr_for(s):g}, batch {_batch(cfg, s)}" for s in cfg.stages)
        + f"; seed {cfg.seed}",
        f"- **Augmentation**: random translation up to {config['translate']} px"
        + (", horizontal flips" if config.get("hflip") else ""),
        "",
        "## Data",
        "",
        f"- **Source**: `{data}`; split protocol: {config.get('protocol') or 'labels_per_class'}",
        f"- **Split** (seed {cfg.split_seed}): {_count(summary.get('num_labeled'))} labelled images "
        f"({labels if labels is not None else 'all'} per class), {cfg.val_per_class} per class held out "
        f"for validation, {_count(summary.get('num_unlabeled'))} unlabelled, {_count(summary.get('num_test'))} test; "
        "the run dir's `split_indices.json` lists them",
        "",
        "## How it was made",
        "",
        "```bash",
        *_command_lines(command),
        "```",
        "",
        f"Every setting is in `{TRAINING_CONFIG}` (an sclearn `TrainConfig`).",
        "",
        "## Use",
        "",
        *_usage_lines(kind, arch, repo_id, c),
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n" + "\n".join(lines) + "\n")


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _batch(cfg: TrainConfig, stage: str) -> str:
    if stage == "joint":
        return f"{cfg.batch_size} labelled + {cfg.unlabeled_batch_size} unlabelled"
    return str(cfg.sc_batch_size if stage == "pretrain" else cfg.batch_size)


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _command_lines(command: dict[str, Any] | None) -> list[str]:
    if not command:
        return ["# not recorded (a run made before sclearn recorded commands)"]
    lines = [_shell_command(command["command"])]
    lines += [f"{_shell_command(entry)}   # resumed" for entry in command.get("resumed", [])]
    return lines


def _usage_lines(kind: str, arch: str, repo_id: str | None, channels: int) -> list[str]:
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/folder"
    mode = "L" if channels == 1 else "RGB"
    if kind == "timm":
        return [
            "```python",
            "import sclearn  # registers sclearn's Table-4 nets (sc_mnist, sc_cifar10, sc_stl10) with timm",
            "import timm",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
            f'logits = model(transform(image.convert("{mode}")).unsqueeze(0))',
            "```",
        ]
    if kind == "torchvision":
        name = arch[len(TORCHVISION_PREFIX):]
        return [
            "timm cannot build torchvision models; load the weights with torchvision (mean / std / input size are in "
            "config.json):",
            "",
            "```python",
            "import json, torchvision",
            "from safetensors.torch import load_file",
            'num_classes = json.load(open("config.json"))["num_classes"]',
            f'model = torchvision.models.get_model("{name}", num_classes=num_classes)',
            'model.load_state_dict(load_file("model.safetensors"))',
            "```",
        ]
    return [f"`{arch}` is not a timm or torchvision model: build it as the run did and "
            "`load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))`."]


# -- the hub --------------------------------------------------------------------------------------------
def check_hub_reachable(timeout: float = 5.0) -> None:
    """Raise :class:`HubUnreachableError` in offline mode or when the hub's host does not answer in ``timeout`` s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubUnreachableError("offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to push")
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise HubUnreachableError(f"{constants.ENDPOINT} is unreachable ({e.strerror or e}): connect to the "
                                  "network (or set HF_ENDPOINT to a reachable mirror)") from e


def push_export(run_dir: str | Path, folder: str | Path, repo_id: str, *, private: bool = False,
                token: str | None = None) -> str:
    """Push the export ``folder`` of ``run_dir`` to the hub as ``repo_id``; returns the repo's URL.

    timm models go up with timm's ``push_to_hf_hub`` (weights and ``config.json`` as ``save_for_hf`` writes
    them), then the folder's card and training config; other folders with ``HfApi.upload_folder``.
    """
    from huggingface_hub import HfApi

    folder, api = Path(folder), HfApi(token=token)
    config = _read_json(folder / "config.json")
    if config is not None and config.get("library_name") != "torchvision":
        model = load_exported(folder)
        timm.models.push_to_hf_hub(model, repo_id, token=token, private=private, safe_serialization=True,
                                   commit_message="Add weights (sclearn)",
                                   **_hub_args(model, _read_json(Path(run_dir) / "backbone.json")))
        files = ["README.md", TRAINING_CONFIG]
    else:
        api.create_repo(repo_id, private=private, exist_ok=True)
        files = list(_OUR_FILES)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                      commit_message="Add model card and training config (sclearn)")
    return f"{api.endpoint}/{repo_id}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", help="a finished sclearn run dir")
    parser.add_argument("--out", help="the hub folder (default: <run>/export)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push it to this hub repo (you/name)")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    args = parser.parse_args(argv)
    try:
        if args.push_to_hub:
            check_hub_reachable()  # before any work: offline, the answer is known at once
        folder = export_run(args.run, args.out, repo_id=args.push_to_hub)
        print(f"wrote {folder}")
        if args.push_to_hub:
            print(f"pushed to {push_export(args.run, folder, args.push_to_hub, private=args.private)}")
    except HubUnreachableError as e:
        sys.exit(f"sclearn.export: cannot push to the Hugging Face Hub: {e}")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"sclearn.export: {e}")


if __name__ == "__main__":
    main()
