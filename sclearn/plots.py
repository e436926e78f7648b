"""Plots of a run: training curves from ``metrics.jsonl`` and first-layer filters (the paper's Figure 2).

Figures are built with ``matplotlib.figure.Figure`` and saved directly, never through ``pyplot``: nothing
is shown, no global backend is switched, and no figure is left open in a long training process.
matplotlib is an optional dependency (``pip install sclearn[viz]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["comparison_figure", "comparison_series", "plot_comparison", "plot_first_layer_filters",
           "plot_training_curves", "read_metrics"]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sclearn.plots needs matplotlib: pip install 'sclearn[viz]'") from e
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def read_metrics(metrics_jsonl: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` that have a ``"step"``.

    Event lines without a step, blank lines and unparsable lines (e.g. a half-written last line of a
    running job) are skipped.
    """
    records = []
    for line in Path(metrics_jsonl).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records where ``key`` holds a finite number."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _panel(ax: Any, records: list[dict[str, Any]], keys: list[str], title: str, log: bool = False) -> None:
    plotted = []
    for key in keys:
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
            plotted.extend(ys)
    ax.set_title(title)
    ax.set_xlabel("step")
    if not plotted:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    if log and min(plotted) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def _mark_stages(axes: list[Any], records: list[dict[str, Any]]) -> None:
    """Dashed vertical line where ``"stage"`` changes (e.g. pretrain -> finetune)."""
    prev = None
    for r in records:
        stage = r.get("stage")
        if stage is not None and prev is not None and stage != prev:
            for ax in axes:
                ax.axvline(r["step"], color="gray", ls="--", lw=0.8)
            axes[0].annotate(
                str(stage),
                (r["step"], 1),
                xycoords=("data", "axes fraction"),
                fontsize="small",
                va="top",
                color="gray",
            )
        prev = stage if stage is not None else prev


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Four panels against step: losses (total and CE), SC per layer, accuracies, learning rate.

    Any key may be missing from any record; an empty panel says "no data". Accuracy keys are
    ``test_acc``, ``val_acc``, ``train_acc`` and any ``*_top1`` (e.g. ``knn_top1``).

    Returns:
        ``out_png`` as a ``Path``.
    """
    records = read_metrics(metrics_jsonl)
    keys = sorted({k for r in records for k in r})
    sc_keys = [k for k in ("sc",) if k in keys] + [k for k in keys if k.startswith("sc/")]
    acc_keys = [k for k in ("test_acc", "val_acc", "train_acc") if k in keys] + [
        k for k in keys if k.endswith("_top1")
    ]

    fig = _figure(11, 7)
    axes = list(fig.subplots(2, 2).flat)
    _panel(axes[0], records, ["loss", "ce"], "loss / cross-entropy")
    _panel(axes[1], records, sc_keys, "spatial contrasting loss")
    _panel(axes[2], records, acc_keys, "accuracy")
    _panel(axes[3], records, ["lr"], "learning rate", log=True)
    _mark_stages(axes, records)
    fig.suptitle(Path(metrics_jsonl).parent.name or str(metrics_jsonl))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def comparison_series(runs: Mapping[str, str | Path]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per arm, the curves of the comparison figure: ``{"test_acc": (steps, acc), "sc": (steps, sc loss)}``.

    Args:
        runs: Arm name -> run dir (its ``metrics.jsonl`` is read). Accuracy comes from every record that has
            ``test_acc`` (``eval_every_steps`` evaluations and epoch ends); the SC loss from the logged windows.
    """
    series = {}
    for arm, run in runs.items():
        records = read_metrics(Path(run) / "metrics.jsonl")
        series[arm] = {"test_acc": _series(records, "test_acc"), "sc": _series(records, "sc")}
    return series


def comparison_figure(series: dict[str, dict[str, tuple[list[float], list[float]]]], title: str = "") -> Any:
    """Two panels: test accuracy (%) of every arm against step, and the SC loss of the arms that have one."""
    fig = _figure(11, 4.2)
    acc_ax, sc_ax = fig.subplots(1, 2)
    no_sc = []
    for i, (arm, curves) in enumerate(series.items()):
        color = f"C{i}"
        steps, acc = curves["test_acc"]
        if steps:  # the final accuracy goes in the legend: labels at the line ends collide when arms are close
            acc_ax.plot(steps, [100 * a for a in acc], marker="o", ms=4, color=color,
                        label=f"{arm} (final {100 * acc[-1]:.1f}%)")
        steps, sc = curves["sc"]
        if steps:
            sc_ax.plot(steps, sc, color=color, label=arm)
        else:
            no_sc.append(arm)
    acc_ax.set(title="test accuracy", xlabel="optimizer step", ylabel="top-1 on the test split (%)")
    sc_ax.set(title="spatial contrasting loss (training batches)", xlabel="optimizer step",
              ylabel="SC loss (before the weight λ)")
    if no_sc:  # say why an arm is missing rather than leave the reader to guess
        sc_ax.text(0.98, 0.97, f"no SC term: {', '.join(no_sc)}", transform=sc_ax.transAxes, ha="right",
                   va="top", fontsize="small", color="gray")
    for ax in (acc_ax, sc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="lower right" if ax is acc_ax else "lower left")
    if title:
        fig.suptitle(title)
    return fig


def plot_comparison(runs: Mapping[str, str | Path], out_png: str | Path, title: str = "") -> Path:
    """Write :func:`comparison_figure` of the ``runs`` (arm name -> run dir) to ``out_png``; returns its path."""
    fig = comparison_figure(comparison_series(runs), title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError("model has no nn.Conv2d")


def _filter_mosaic(weight: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Tile filters (O, I, kh, kw) into one image (H, W, 3 or 1) with white gaps, each filter in [0, 1].

    Each filter is min-max normalised on its own (as in the paper's Figure 2); 3 input channels are
    shown as RGB, any other count as the grayscale mean over channels.
    """
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True)  # (O, 1, kh, kw)
    lo = w.amin((1, 2, 3), keepdim=True)
    hi = w.amax((1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)  # (O, c, kh, kw) in [0, 1]
    n, _c = w.shape[:2]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w = F.pad(w, (0, pad, 0, pad), value=1.0)  # (O, c, kh+pad, kw+pad): white gap right of / below each
    w = torch.cat([w, torch.ones(rows * cols - n, *w.shape[1:])])  # blank tiles fill the last row
    grid = rearrange(w, "(r q) c h w -> (r h) (q w) c", r=rows)  # (rows*(kh+pad), cols*(kw+pad), c)
    grid = F.pad(grid, (0, 0, pad, 0, pad, 0), value=1.0)  # top and left border
    return grid


def plot_first_layer_filters(model: nn.Module, out_png: str | Path, *, max_filters: int = 64) -> Path:
    """Grid of the first ``nn.Conv2d``'s filters (at most ``max_filters``), like the paper's Figure 2.

    Returns:
        ``out_png`` as a ``Path``.
    """
    name, conv = _first_conv(model)
    weight = conv.weight[:max_filters]  # (O, I, kh, kw)
    grid = _filter_mosaic(weight)  # (H, W, c)
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    if grid.shape[-1] == 3:
        ax.imshow(grid.numpy(), interpolation="nearest")
    else:
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    o, i, kh, kw = conv.weight.shape
    ax.set_title(
        f"{name}: {weight.shape[0]} of {o} filters, {kh}x{kw}, {i} input channel(s)", fontsize="small"
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
