"""A figure per table of the paper: each seed's result as a point per arm, mean ± std, the paper's value beside it.

    python benchmarks/paper_figures.py table3.json benchmarks/figures/table3.png

``table3.json`` (the arms' per-seed results; ``paper``, ``compare`` and the labels are optional)::

    {"title": "MNIST, Table 3", "ylabel": "test error (%)",
     "arms": {"sc_init": {"0": 0.36, "1": 0.33, "2": 0.35}, "no_init": {"0": 0.45, "1": 0.49, "2": 0.44}},
     "paper": {"sc_init": [0.34, 0.02], "no_init": [0.63, 0.02]},
     "compare": ["sc_init", "no_init"]}

:func:`probe_figure` draws the SC pre-training's probe curves (one point per SC epoch, a line per seed) above its
epoch loss, for the arms whose SC stage ran until convergence.

A seed's points sit at the same offset in every arm and are joined by a thin line, so a paired comparison reads
off the slopes; ``compare`` adds the paired difference and t-test of :mod:`paired_stats` to the title. Figures
are built on ``matplotlib.figure.Figure`` (no pyplot), as in ``sclearn/plots.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paired_stats import arm_summary, paired_comparison

__all__ = ["ArmMarks", "probe_figure", "save_probe_figure", "save_table_figure", "table_figure", "table_marks"]

Seed = int | str
ArmResults = Mapping[Seed, float] | Sequence[float]  # {seed: value}, or values of seeds 0, 1, ...
PaperValue = float | Sequence[float]  # mean, or (mean, std)

POINT_SPREAD = 0.12  # half-width of the band a arm's points are spread over (x units: arms are 1 apart)
MEAN_OFFSET = 0.24  # mean ± std bar, right of the points
PAPER_OFFSET = 0.36  # the paper's value, right of ours


@dataclass(frozen=True)
class ArmMarks:
    """What the figure draws for one arm (x in axis units; arm i is centred on x = i)."""

    name: str
    x: float
    seeds: list[Seed]
    values: list[float]  # one per seed, in the order of ``seeds``
    point_x: list[float]  # where each seed's point is drawn
    mean: float
    std: float | None  # sample std; None for one seed
    paper: float | None = None
    paper_std: float | None = None


def _as_mapping(results: ArmResults) -> dict[Seed, float]:
    if isinstance(results, Mapping):
        return {seed: float(v) for seed, v in results.items()}
    return {seed: float(v) for seed, v in enumerate(results)}


def _paper_value(value: PaperValue | None) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if isinstance(value, (int, float)):
        return float(value), None
    mean, std = value  # (mean, std)
    return float(mean), float(std)


def table_marks(arms: Mapping[str, ArmResults], paper: Mapping[str, PaperValue] | None = None, *,
                spread: float = POINT_SPREAD) -> list[ArmMarks]:
    """The marks of each arm, in the order of ``arms``.

    Every seed gets one offset in ``[-spread, spread]`` (evenly spaced, in order of first appearance over all
    arms), the same in every arm, so that a seed's points line up across arms and never overlap within one.

    Args:
        arms: ``{arm: {seed: result}}`` (or ``{arm: [result of seed 0, seed 1, ...]}``).
        paper: ``{arm: mean}`` or ``{arm: (mean, std)}`` for the arms the paper reports.
        spread: Half-width of the band of points.
    """
    if not arms:
        raise ValueError("no arms to plot")
    paper = dict(paper or {})
    unknown = set(paper) - set(arms)
    if unknown:
        raise ValueError(f"paper values for arms that are not plotted: {sorted(unknown)}; arms: {list(arms)}")
    results = {name: _as_mapping(r) for name, r in arms.items()}
    empty = [name for name, r in results.items() if not r]
    if empty:
        raise ValueError(f"arms without a result: {empty}")
    order: list[Seed] = list(dict.fromkeys(seed for r in results.values() for seed in r))
    step = 2 * spread / (len(order) - 1) if len(order) > 1 else 0.0
    offset = {seed: -spread + i * step if len(order) > 1 else 0.0 for i, seed in enumerate(order)}
    marks = []
    for i, (name, by_seed) in enumerate(results.items()):
        seeds = [s for s in order if s in by_seed]
        values = [by_seed[s] for s in seeds]
        summary = arm_summary(values)
        paper_mean, paper_std = _paper_value(paper.get(name))
        marks.append(ArmMarks(name=name, x=float(i), seeds=seeds, values=values,
                              point_x=[i + offset[s] for s in seeds], mean=summary["mean"], std=summary["std"],
                              paper=paper_mean, paper_std=paper_std))
    return marks


def _mean_std_text(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _comparison_text(arms: Mapping[str, ArmResults], compare: tuple[str, str], digits: int) -> str:
    a, b = compare
    paired = paired_comparison(_as_mapping(arms[a]), _as_mapping(arms[b]), names=(a, b))["paired"]
    n = len(paired["seeds"])
    if n == 0:
        return f"{a} − {b}: no seed in common"
    text = f"{a} − {b}: {_mean_std_text(paired['mean_difference'], paired['std_difference'], digits)}"
    if paired["p_value"] is not None:
        text += f", paired t-test p = {paired['p_value']:.2g}"
    return text + f" ({n} seed{'s' if n > 1 else ''})"


def table_figure(arms: Mapping[str, ArmResults], *, title: str = "", ylabel: str = "",
                 paper: Mapping[str, PaperValue] | None = None, compare: tuple[str, str] | None = None,
                 digits: int = 2, connect_seeds: bool = True) -> Any:
    """A ``matplotlib.figure.Figure`` of one table (see the module docstring).

    Artists carry ``gid`` ``points:<arm>``, ``mean:<arm>``, ``paper:<arm>`` and ``seed:<seed>`` (a line from
    a seed's point in one arm to its point in the next arm, where both ran it), so what is drawn can be checked
    without looking at pixels.
    """
    from matplotlib.figure import Figure

    marks = table_marks(arms, paper)
    if compare is not None and not set(compare) <= set(arms):
        raise ValueError(f"compare={list(compare)} names arms that are not plotted; arms: {list(arms)}")
    fig = Figure(figsize=(max(5.6, 1.9 * len(marks) + 1.5), 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    named = set()
    for m in marks:  # each seed named once, left of its first point
        for seed, x, y in zip(m.seeds, m.point_x, m.values):
            if seed not in named:
                ax.annotate(f"seed {seed}", (x, y), xytext=(-5, 0), textcoords="offset points", ha="right",
                            va="center", fontsize=7, color="0.4")
                named.add(seed)
    for left, right in itertools.pairwise(marks) if connect_seeds else ():  # only neighbours that both ran the seed
        for seed in (s for s in left.seeds if s in right.seeds):
            i, j = left.seeds.index(seed), right.seeds.index(seed)
            ax.plot([left.point_x[i], right.point_x[j]], [left.values[i], right.values[j]], color="0.8", lw=0.8,
                    zorder=1, gid=f"seed:{seed}")
    has_paper = False
    for m in marks:
        ax.scatter(m.point_x, m.values, s=36, color="C0", edgecolor="white", linewidth=0.6, zorder=3,
                   gid=f"points:{m.name}", label="one seed" if m is marks[0] else None)
        ax.errorbar([m.x + MEAN_OFFSET], [m.mean], yerr=None if m.std is None else [[m.std], [m.std]], fmt="_",
                    markersize=14, markeredgewidth=2, color="black", elinewidth=1.5, capsize=4, zorder=4,
                    gid=f"mean:{m.name}", label="mean ± std" if m is marks[0] else None)
        if m.paper is not None:
            ax.errorbar([m.x + PAPER_OFFSET], [m.paper], yerr=None if m.paper_std is None else
                        [[m.paper_std], [m.paper_std]], fmt="D", markersize=6, markerfacecolor="white",
                        color="crimson", elinewidth=1.2, capsize=3, zorder=4, gid=f"paper:{m.name}",
                        label=None if has_paper else "paper")
            has_paper = True
    ticks = []
    for m in marks:
        label = f"{m.name}\nours {_mean_std_text(m.mean, m.std, digits)} (n={len(m.values)})"
        if m.paper is not None:
            label += f"\npaper {_mean_std_text(m.paper, m.paper_std, digits)}"
        ticks.append(label)
    ax.set_xticks([m.x + MEAN_OFFSET / 2 for m in marks], ticks, fontsize="small")
    ax.set_xlim(-0.5, len(marks) - 0.5 + PAPER_OFFSET)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best", frameon=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    if compare is not None:
        ax.set_title(_comparison_text(arms, compare, digits), fontsize="small")
    return fig


def save_table_figure(arms: Mapping[str, ArmResults], out_png: str | Path, **kwargs: Any) -> Path:
    """:func:`table_figure` written to ``out_png`` (parent folders made); returns the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    table_figure(arms, **kwargs).savefig(out)
    return out


PROBE_LINES = {"linear_val_top1": ("linear probe (val)", "-"), "knn_val_top1": ("kNN probe (val)", ":"),
               "linear_top1": ("linear probe (test)", "-"), "knn_top1": ("kNN probe (test)", ":")}


def probe_figure(curves: Mapping[Seed, Sequence[Mapping[str, Any]]], *, title: str = "") -> Any:
    """A ``matplotlib.figure.Figure``: top, each probe of :data:`PROBE_LINES` present (accuracy, %) per SC epoch;
    bottom, the epoch SC loss, with a mark at each epoch whose lr is lower than the epoch before's. One colour per
    seed.

    Args:
        curves: ``{seed: [{"epoch", "epoch_loss", "lr", <probe keys>...}, ...]}``, one point per SC epoch (what
            ``table_runs.probe_curve`` returns).

    Artists carry ``gid`` ``<probe key>:<seed>``, ``loss:<seed>`` and ``lr_drop:<seed>``.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no probe curve to plot")
    fig = Figure(figsize=(6.4, 5.6), dpi=120, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, (seed, points) in enumerate(curves.items()):
        color = f"C{i % 10}"
        epochs = [p["epoch"] for p in points]
        for key, (label, style) in PROBE_LINES.items():
            if any(key in p for p in points):
                xs = [p["epoch"] for p in points if key in p]
                top.plot(xs, [100 * p[key] for p in points if key in p], style, color=color, marker=".",
                         label=f"{label}, seed {seed}", gid=f"{key}:{seed}")
        bottom.plot(epochs, [p["epoch_loss"] for p in points], color=color, marker=".", label=f"seed {seed}",
                    gid=f"loss:{seed}")
        drops = [b for a, b in itertools.pairwise(points)
                 if a.get("lr") is not None and b.get("lr") is not None and b["lr"] < a["lr"]]
        if drops:
            bottom.scatter([p["epoch"] for p in drops], [p["epoch_loss"] for p in drops], marker="v", s=40,
                           color=color, zorder=3, gid=f"lr_drop:{seed}", label="lr / 10" if i == 0 else None)
    top.set_ylabel("probe accuracy (%)")
    top.grid(alpha=0.3)
    top.legend(fontsize="x-small", frameon=False, ncol=2)
    bottom.set_xlabel("SC epoch")
    bottom.set_ylabel("epoch SC loss")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize="x-small", frameon=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def save_probe_figure(curves: Mapping[Seed, Sequence[Mapping[str, Any]]], out_png: str | Path, **kwargs: Any) -> Path:
    """:func:`probe_figure` written to ``out_png`` (parent folders made); returns the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    probe_figure(curves, **kwargs).savefig(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table_json", help='{"arms": {arm: {seed: value}}, "paper"?, "compare"?, "title"?, "ylabel"?}')
    parser.add_argument("out_png")
    parser.add_argument("--digits", type=int, default=2, help="decimals of the means and stds in the labels")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.table_json).read_text())
    unknown = set(spec) - {"arms", "paper", "compare", "title", "ylabel"}
    if "arms" not in spec or unknown:
        parser.error(f"{args.table_json}: needs 'arms' and may have paper, compare, title, ylabel; "
                     f"unexpected: {sorted(unknown)}")
    compare = tuple(spec["compare"]) if spec.get("compare") else None
    path = save_table_figure(spec["arms"], args.out_png, paper=spec.get("paper"), compare=compare,
                             title=spec.get("title", ""), ylabel=spec.get("ylabel", ""), digits=args.digits)
    print(path)


if __name__ == "__main__":
    main()
