"""Command-line front end shared by the recipes: flags -> ``TrainConfig`` -> ``Trainer``.

Every recipe is a dict of paper defaults plus ``run_recipe(defaults, description)``, so all recipes take the
same flags and ``--help`` explains each one. Works under ``python`` and ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .config import MODES, TrainConfig, read_config_file
from .presets import SC_PRESETS, sc_preset


def _patch_size(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def _steps_or_fraction(text: str) -> int | float:
    """``500`` -> 500 steps (int); ``0.2`` or ``1.0`` -> that fraction of the stage (float)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps (e.g. 500) or a fraction (e.g. 0.2), "
                                         f"got {text!r}") from None


def _min_offset(text: str) -> int | str:
    return text if text == "disjoint" else int(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"img_size\": 32}}', got {text!r} "
                                         f"({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"img_size\": 32}}', got {text!r}")
    return value
def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _auto_bool(value: str) -> bool | None:
    words = {"auto": None, "true": True, "false": False}
    if value.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")
    return words[value.lower()]


# flag, TrainConfig field, type, help. Defaults come from the recipe.
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "data", str, "data source: a hub id, parquet:<dir>, imagefolder:<dir> or idx:<dir>"),
    ("--protocol", "protocol", str, "paper split protocol: cifar10 | stl10 | mnist (or 'none')"),
    ("--labels-per-class", "labels_per_class", _optional_int, "labelled images per class ('all' for every one)"),
    ("--val-per-class", "val_per_class", int, "labelled images per class held out for model selection"),
    ("--split-seed", "split_seed", int, "seed of the labelled-subset draw"),
    ("--image-size", "image_size", _optional_int, "resize images to this side ('none' keeps the size)"),
    ("--channels", "channels", int, "input channels: 3 (grayscale repeated to RGB) or 1"),
    ("--train-split", "train_split", str, "the dataset's split to draw labelled and unlabelled images from"),
    ("--test-split", "test_split", str, "the dataset's split to test on"),
    ("--translate", "translate", int, "random translation in pixels (pad + crop)"),
    ("--backbone", "backbone", str, "timm model name, or torchvision:<name>"),
    ("--model-kwargs", "model_kwargs", _json_object,
     'extra keyword arguments for the model, as JSON, e.g. \'{"img_size": 32}\' for a ViT at 32 px'),
    ("--mode", "mode", str, f"what to train: {' | '.join(MODES)}"),
    ("--pretrain-epochs", "pretrain_epochs", int, "epochs of SC pre-training (pretrain / two_stage)"),
    ("--epochs", "epochs", int, "epochs of the supervised, finetune or joint stage"),
    ("--batch-size", "batch_size", int, "labelled images per step (and SC images per pretrain step)"),
    ("--pretrain-batch-size", "pretrain_batch_size", _optional_int, "images per SC pretrain step"),
    ("--unlabeled-ratio", "unlabeled_ratio", float, "joint: unlabelled images per labelled image in a step"),
    ("--lr", "lr", float, "lr of the supervised / finetune / joint stage (default: 0.01 finetune, else 0.1)"),
    ("--pretrain-lr", "pretrain_lr", float, "lr of SC pre-training (paper: 0.1)"),
    ("--weight-decay", "weight_decay", float, "SGD weight decay"),
    ("--schedule", "schedule", str, "lr schedule: plateau (paper) | cosine | constant"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps for the cosine schedule"),
    ("--sc-weight", "sc_weight", float, "joint: lambda in CE + lambda * SC"),
    ("--sc-rampup-steps", "sc_rampup_steps", _steps_or_fraction,
     "joint: ramp lambda linearly from 0 over this many steps, or over this fraction of the stage (0.2; 1.0 = all)"),
    ("--patch-size", "patch_size", _patch_size, "SC patch side: int cells or a fraction of the map side"),
    ("--distance", "distance", str, "SC distance: l2 (paper) | sqeuclidean | cosine"),
    ("--temperature", "temperature", float, "SC softmax temperature (paper: 1)"),
    ("--pool", "pool", str, "patch vector: flatten (paper) | mean"),
    ("--num-patches", "num_patches", int, "patches per image (paper: 2)"),
    ("--min-offset", "min_offset", _min_offset, "min distance in cells between an image's patches, or 'disjoint'"),
    ("--projector-dim", "projector_dim", _optional_int, "width of an optional per-cell projector ('none': off)"),
    ("--grad-accum-steps", "grad_accum_steps", int, "micro-batches per optimizer step"),
    ("--mixed-precision", "mixed_precision", str, "no | bf16 | fp16 (accelerate launch's flag also works)"),
    ("--max-steps", "max_steps", _optional_int, "cap on optimizer steps per stage, for smoke runs"),
    ("--pretrain-max-steps", "pretrain_max_steps", _optional_int,
     "cap on SC pre-training steps alone (default: --max-steps caps it too)"),
    ("--pretrain-patience", "pretrain_patience", _optional_int,
     "train SC until convergence: stop after this many epochs without the epoch SC loss improving by "
     "--pretrain-min-delta (relative); --pretrain-epochs is the cap ('none': run every epoch)"),
    ("--pretrain-min-epochs", "pretrain_min_epochs", int, "convergence stop: SC epochs always run"),
    ("--pretrain-min-delta", "pretrain_min_delta", float,
     "convergence stop: relative improvement of the epoch SC loss that counts (1e-3 = 0.1%%)"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes (streaming path only)"),
    ("--data-path", "data_path", str,
     "memory: decode once into a cached uint8 tensor | stream: decode every step | auto: memory if it fits"),
    ("--memory-budget-gb", "memory_budget_gb", _optional_float,
     "GiB the memory path may take ('none': a quarter of this machine's RAM)"),
    ("--output-dir", "output_dir", str, "run directory: checkpoints, metrics, exported backbone, figures"),
    ("--init-from", "init_from", str, "finetune: a run dir, checkpoint dir or backbone .safetensors"),
    ("--checkpoint-every", "checkpoint_every", _optional_int,
     "save a checkpoint every N steps and at each stage end ('none': stage ends only)"),
    ("--seed", "seed", int, "global seed (model init, shuffling, augmentation, patch positions)"),
    ("--knn-k", "knn_k", int, "k of the kNN probe run during SC pre-training"),
    ("--eval-every", "eval_every", int, "evaluate every N epochs (the last epoch always)"),
    ("--eval-every-steps", "eval_every_steps", _optional_int,
     "also evaluate every N optimizer steps (test/val accuracy; kNN probe in pretraining); 'none': off"),
    ("--plateau-patience", "plateau_patience", int, "plateau schedule: epochs without improvement before lr / 10"),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many complete checkpoints to keep"),
    ("--on-nonfinite", "on_nonfinite", str, "on a NaN/inf loss: raise (stop, keep the last checkpoint) | skip"),
]


def with_preset(defaults: dict[str, Any], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The recipe's defaults with the SC preset and the ``--config`` file of ``argv`` laid over them.

    Order of precedence, lowest first: TrainConfig's defaults, the recipe's, the recipe's own preset, the
    ``--config`` file (a run's config.json or a YAML file), the preset of an explicit ``--preset``, explicit flags.
    An explicit ``--preset`` replaces the recipe's preset (it is not laid over it).

    Raises:
        ValueError: For a config file that cannot be read or holds unknown fields.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None, choices=sorted(SC_PRESETS))
    pre.add_argument("--config", default=None)
    given = pre.parse_known_args(argv)[0]
    merged = dict(defaults)
    if given.preset is None and defaults.get("preset") is not None:
        merged.update(sc_preset(defaults["preset"]))
    if given.config is not None:
        merged.update(read_config_file(given.config))
    if given.preset is not None:
        merged.update(sc_preset(given.preset))
    merged["preset"] = given.preset or defaults.get("preset")
    return merged


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that remembers the option that sets each destination (``flags``), so that error
    messages can name the flag a CLI user typed instead of the Python argument (see :func:`cli_message`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: dict[str, argparse.Action] = {}  # first: argparse's __init__ adds --help through add_argument
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings:
            self.flags.setdefault(action.dest, action)
        return action


def cli_message(message: str, flags: Mapping[str, argparse.Action]) -> str:
    """A library message in the words of the command line: ``TrainConfig.image_size``, ``image_size=`` and
    ``image_size`` become ``--image-size``, ``resume=True`` becomes ``--resume``.

    Bare names are only rewritten when they hold an underscore (``patch_size``, not ``data``), and never inside
    a longer name, an attribute, a call or a path.
    """
    for dest in sorted(flags, key=len, reverse=True):
        action = flags[dest]
        flag = max(action.option_strings, key=len)
        name = re.escape(dest)
        message = re.sub(rf"\bTrainConfig\.{name}\b", flag, message)
        if action.const is not None:  # switches: resume=True -> --resume, hflip=False -> --no-hflip
            message = re.sub(rf"(?<![\w.(-]){name}={re.escape(repr(action.const))}(?![\w'])", flag, message)
        message = re.sub(rf"(?<![\w.(-]){name}='([^'\s]*)'", rf"{flag}=\1", message)
        message = re.sub(rf"(?<![\w.(-]){name}=(?=[^\s/.,)])", f"{flag}=", message)
        message = re.sub(rf"(?<![\w.(-]){name}=", flag, message)  # "pass train_split=/test_split=."
        if "_" in dest:
            message = re.sub(rf"(?<![\w./-]){name}(?![\w-])", flag, message)
    return re.sub(r"(--[\w-]+) to build_transform\b", r"\1", message)  # a function name means nothing here


def _is_user_error(error: BaseException) -> bool:
    """Bad input or a run that cannot go on as asked (not a bug in sclearn): one line, exit status 2."""
    user = (ValueError, FileNotFoundError)  # DataError, RunDirError and config errors are ValueErrors
    train = sys.modules.get("sclearn.train")  # loaded whenever a NonFiniteLossError can exist
    if train is not None:
        user += (train.NonFiniteLossError,)
    return isinstance(error, user)


@contextmanager
def cli_errors(flags: Mapping[str, argparse.Action] | None = None, *, debug: bool = False) -> Iterator[None]:
    """Top-level handler of a command: a user error prints ``error: <message>`` (naming CLI flags) to stderr
    and exits with status 2; with ``debug`` (``--debug``) or ``SCLEARN_DEBUG=1`` the traceback is shown."""
    try:
        yield
    except Exception as e:
        if debug or os.environ.get("SCLEARN_DEBUG") == "1" or not _is_user_error(e):
            raise
        print(f"error: {cli_message(str(e), flags or {})}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def build_parser(defaults: dict[str, Any], description: str) -> FlagParser:
    """An argparse parser whose defaults are the recipe's (after :func:`with_preset`); ``--help`` shows them."""
    parser = FlagParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    fields = {k: v for k, v in defaults.items() if k not in ("mode", "preset")}
    base = TrainConfig(**fields, mode="supervised").to_dict()
    base["mode"] = defaults.get("mode", "supervised")
    parser.set_defaults(**base)  # fields without a flag (momentum, model_kwargs...) keep a --config file's values
    parser.add_argument("--preset", default=defaults.get("preset"), choices=sorted(SC_PRESETS),
                        help="SC settings by name, over the recipe's defaults (explicit flags still win): paper = "
                             "the paper's L2/flatten/lambda 1; tuned = the ablation's joint choice (cosine T 0.1, "
                             "mean-pooled patches, lambda 0.1 ramped over 20%%); see sclearn/presets.py")
    for flag, name, kind, help_text in FLAGS:
        parser.add_argument(flag, dest=name, type=kind, default=base[name], help=help_text)
    parser.add_argument("--layers", nargs="+", default=list(base["layers"]),
                        help="layer names (from named_modules()) to attach SC to")
    parser.add_argument("--freeze", nargs="*", default=list(base["freeze"]),
                        help="backbone modules held fixed while fine-tuning / supervised (e.g. stages.0 stages.1)")
    parser.add_argument("--layer-patch-sizes", nargs="+", type=_patch_size, default=base["layer_patch_sizes"],
                        help="one SC patch size per --layers entry (overrides --patch-size)")
    parser.add_argument("--layer-weights", nargs="+", type=float, default=base["layer_weights"],
                        help="one SC weight per --layers entry (default 1 each)")
    parser.add_argument("--no-hflip", dest="hflip", action="store_false", default=base["hflip"],
                        help="switch off random horizontal flips (digits)")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="continue the run in --output-dir (or from the given checkpoint dir)")
    parser.add_argument("--overwrite", action="store_true", default=base["overwrite"],
                        help="delete the sclearn run in --output-dir first (only sclearn's own files)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for flag, name, help_text in [
        ("--gather-negatives", "gather_negatives", "contrast against the patches of every process (DDP)"),
        ("--compile", "compile", "torch.compile the model (hooks are registered first)"),
        ("--channels-last", "channels_last", "channels_last memory format"),
        ("--probe-linear", "probe_linear", "also log the linear probe after each SC pre-training epoch (on val "
                                           "when --val-per-class > 0, else on test)"),
    ]:
        parser.add_argument(flag, dest=name, action="store_true", default=base[name], help=help_text)
    parser.add_argument("--labeled-drop-last", dest="labeled_drop_last", default=base["labeled_drop_last"],
                        type=_auto_bool, metavar="{auto,true,false}",
                        help="drop the ragged last labelled batch of an epoch (auto: only in joint mode)")
    parser.add_argument("--no-eval-test", dest="eval_test", action="store_false", default=base["eval_test"],
                        help="do not score the test split during training (choose settings on --val-per-class)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=base["progress"],
                        help="no progress bars")
    parser.add_argument("--report-to", dest="report_to", default=base["report_to"],
                        help="accelerate tracker: auto (tensorboard when installed) | none | wandb ...")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="rerun or extend a run: start from its config.json (or a YAML file of TrainConfig "
                             "fields); flags given here override it. Use a new --output-dir (or --resume)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values.pop("debug", None)
    values.pop("preset", None)  # already applied to the defaults
    values.pop("config", None)  # likewise
    if values.get("protocol") in ("none", ""):
        values["protocol"] = None
    values["layers"] = tuple(values["layers"])
    values["freeze"] = tuple(values.get("freeze") or ())
    for name in ("layer_patch_sizes", "layer_weights"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    return TrainConfig(**values)


def _holds_file(directory: str, path: str) -> bool:
    """``path`` (a file, or a dir meaning its config.json) lies in ``directory``: a run's own config."""
    from pathlib import Path

    path = Path(path).resolve()
    return Path(directory).resolve() in (path, path.parent)


def run_recipe(defaults: dict[str, Any], description: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse flags over ``defaults`` (and ``--config``), train, print the summary as JSON and return it.

    A user error ends the process with ``error: <message>`` and status 2 (see :func:`cli_errors`).
    """
    try:
        merged = with_preset(defaults, argv)
    except ValueError as e:
        build_parser(defaults, description).error(str(e))
    parser = build_parser(merged, description)
    args = parser.parse_args(argv)
    with cli_errors(parser.flags, debug=args.debug):
        from .train import Trainer

        config = config_from_args(args)
        if args.config and not config.resume and _holds_file(config.output_dir, args.config):
            parser.error(f"--config {args.config} is the config of the run in {config.output_dir}, and "
                         f"--output-dir is that run: give a new --output-dir to rerun it there, or --resume to "
                         f"continue it")
        trainer = Trainer(config)
        summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        print(json.dumps({k: summary[k] for k in ("mode", "final_test_acc", "best_val_acc", "output_dir",
                                                  "wall_time_s", "figures")}, indent=2))
    return summary
