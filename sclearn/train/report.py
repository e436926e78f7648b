"""What a finished run leaves beside its checkpoints and log: ``backbone.json``'s meta, ``summary.json`` and the
figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config import TrainConfig
from .state import TrainState

__all__ = ["export_meta", "run_summary", "write_figures", "write_summary"]


def export_meta(config: TrainConfig, splits: Any, *, input_size: list[int], mean: list[float],
                std: list[float]) -> dict[str, Any]:
    """What ``backbone.json`` says beside the exported weights: the architecture, the classes, the input
    ``[C, H, W]`` and the normalisation the run trained on (the hub folder needs them)."""
    return {"architecture": config.backbone, "num_classes": splits.num_classes, "in_chans": config.channels,
            "class_names": list(splits.class_names), "sc_layers": list(config.layers), "mode": config.mode,
            "image_size": config.image_size, "input_size": input_size, "mean": mean, "std": std}


def run_summary(config: TrainConfig, state: TrainState, splits: Any, *, num_processes: int, wall_time_s: float,
                backbone_path: Path, figures: list[str]) -> dict[str, Any]:
    """The content of ``summary.json``.

    ``stages`` holds each stage's results: accuracies or probe scores, ``epochs``, ``steps``, the convergence stop's
    fields, ``wall_time_s`` (the whole stage) and ``train_loop_s`` (its training steps alone: data, forward,
    backward and optimizer; no evaluation, checkpoint or logging time).
    """
    final = state.stage_results.get(config.stages[-1], {})
    return {
        "num_processes": num_processes,
        "mode": config.mode,
        "final_test_acc": final.get("test_acc"),
        "best_val_acc": final.get("best_val_acc"),
        "stages": state.stage_results,
        "global_steps": state.global_step,
        "nonfinite_skipped": state.nonfinite_skipped,
        "wall_time_s": round(wall_time_s, 2),
        "num_labeled": len(splits.labeled),
        "num_unlabeled": len(splits.unlabeled) if splits.unlabeled is not None else 0,
        "num_test": len(splits.test),
        "backbone": str(backbone_path),
        "output_dir": str(Path(config.output_dir)),
        "figures": figures,
    }


def write_summary(summary: dict[str, Any], output_dir: Path) -> None:
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def write_figures(metrics_path: Path, backbone: nn.Module, output_dir: Path,
                  log: Callable[[str], None] = print) -> list[str]:
    """``training_curves.png`` and ``first_layer_filters.png``; none without matplotlib (the ``[viz]`` extra)."""
    try:
        from ..plots import plot_first_layer_filters, plot_training_curves
    except ImportError:
        return []
    try:
        return [
            str(plot_training_curves(metrics_path, output_dir / "training_curves.png")),
            str(plot_first_layer_filters(backbone, output_dir / "first_layer_filters.png")),
        ]
    except ImportError as e:
        log(f"figures skipped: {e}")
        return []
