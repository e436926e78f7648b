"""The report of a paper-table benchmark (``mnist_table3``, ``table2_convergence``): each arm's test error over
its seeds, the paired comparisons fixed in advance (:mod:`paired_stats`), a one-sentence verdict computed from
each, the figures (:mod:`paper_figures`) and the lines of the RESULTS.md block.

Test error is in percent of the test set, differences in percentage points, ``arm - baseline`` (negative: the arm
has the lower error). A comparison is significant when the two-sided paired t-test gives p < :data:`ALPHA`; the
level is fixed here, before any run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import _harness as harness
import table_runs
from common import BENCH_DIR, markdown_table
from paired_stats import arm_summary, paired_comparison
from paper_figures import save_probe_figure, save_table_figure
from table_runs import library_versions

ALPHA = 0.05
DIGITS = 2  # test error in %: 0.01 is one image of a 10,000-image test set

Errors = dict[str, dict[int, float]]  # {arm: {seed: test error %}}


def errors_by_arm(records: Iterable[dict[str, Any]], arms: Sequence[str]) -> Errors:
    """``{arm: {seed: test error %}}`` of the finished records, every arm of ``arms`` present (maybe empty)."""
    out: Errors = {arm: {} for arm in arms}
    for r in records:
        if r["arm"] in out and r.get("test_err_pct") is not None:
            out[r["arm"]][r["seed"]] = float(r["test_err_pct"])
    return out


def verdict(paired: Mapping[str, Any], arm: str, baseline: str, *, alpha: float = ALPHA) -> str:
    """One sentence on ``arm`` against ``baseline`` from their paired comparison (``paired_comparison()["paired"]``).
    """
    seeds, n = paired["seeds"], len(paired["seeds"])
    if n == 0:
        return f"{arm} and {baseline} have no seed in common yet: no comparison."
    mean = paired["mean_difference"]
    if n == 1:
        return (f"One seed only: {arm} − {baseline} = {mean:+.{DIGITS}f} points of test error, and one pair "
                "admits no test.")
    lower = sum(paired["differences"][s] < 0 for s in seeds)
    spread = (f"{mean:+.{DIGITS}f} ± {paired['std_difference']:.{DIGITS}f} points of test error ({arm} − {baseline}, "
              f"{n} paired seeds, {lower} of {n} lower for {arm})")
    p = paired["p_value"]
    if p < alpha:
        return (f"{arm} has {'lower' if mean < 0 else 'higher'} test error than {baseline}: {spread}; paired t-test "
                f"p = {p:.2g} < {alpha}.")
    return f"No significant difference at n={n}: {spread}; paired t-test p = {p:.2g} ≥ {alpha}."


def compare(errors: Errors, arm: str, baseline: str) -> dict[str, Any]:
    """``arm`` against ``baseline``: the paired part of :func:`paired_stats.paired_comparison` and its verdict."""
    if errors[arm] and errors[baseline]:
        paired = paired_comparison(errors[arm], errors[baseline], names=(arm, baseline))["paired"]
    else:
        paired = {"seeds": [], "differences": {}, "mean_difference": None, "std_difference": None, "t": None,
                  "df": None, "p_value": None}
    return {"arm": arm, "baseline": baseline, **paired, "verdict": verdict(paired, arm, baseline)}


def arm_rows(errors: Errors, roles: Mapping[str, str], paper: Mapping[str, tuple[float, float]] | None,
             records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Markdown rows: arm, role, seeds, the error of each seed, mean ± std, the paper's value, val accuracy."""
    rows = []
    for arm, by_seed in errors.items():
        if not by_seed:
            rows.append([arm, roles.get(arm, ""), 0, "-", "-", _paper(paper, arm), "-"])
            continue
        s = arm_summary(list(by_seed.values()))
        vals = [r["val_acc"] for r in records if r["arm"] == arm and r.get("val_acc") is not None]
        rows.append([arm, roles.get(arm, ""), s["n"],
                     ", ".join(f"{seed}: {v:.{DIGITS}f}" for seed, v in sorted(by_seed.items())),
                     _mean_std(s["mean"], s["std"]), _paper(paper, arm),
                     f"{100 * arm_summary(vals)['mean']:.{DIGITS}f} %" if vals else "-"])
    return rows


def _paper(paper: Mapping[str, tuple[float, float]] | None, arm: str) -> str:
    return f"{paper[arm][0]} ± {paper[arm][1]} %" if paper and arm in paper else "-"


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.{DIGITS}f}" + (f" ± {std:.{DIGITS}f}" if std is not None else "") + " %"


def comparison_rows(comparisons: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Markdown rows: comparison, each seed's difference, mean ± std, t, df, p."""
    rows = []
    for c in comparisons:
        diffs = ", ".join(f"{s}: {d:+.{DIGITS}f}" for s, d in sorted(c["differences"].items())) or "-"
        mean = "-" if c["mean_difference"] is None else (
            f"{c['mean_difference']:+.{DIGITS}f}" + ("" if c["std_difference"] is None else
                                                      f" ± {c['std_difference']:.{DIGITS}f}"))
        rows.append([f"{c['arm']} − {c['baseline']}", diffs, mean, "-" if c["t"] is None else f"{c['t']:.2f}",
                     c["df"] if c["df"] is not None else "-", "-" if c["p_value"] is None else f"{c['p_value']:.3g}"])
    return rows


def report_lines(errors: Errors, comparisons: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], *,
                 roles: Mapping[str, str], paper: Mapping[str, tuple[float, float]] | None,
                 figures: Sequence[Path]) -> list[str]:
    """The RESULTS.md lines of the table: arms, paired comparisons, verdicts, figures."""
    return [
        markdown_table(["arm", "role", "seeds", "test error per seed (%)", "mean ± std", "paper", "val acc (mean)"],
                       arm_rows(errors, roles, paper, records)),
        "",
        markdown_table(["paired difference (points)", "per seed", "mean ± std", "t", "df", "p (two-sided)"],
                       comparison_rows(comparisons)),
        "",
        *(f"- **{'Reference' if c.get('role') == 'reference' else 'Verdict'}, {c['arm']} vs {c['baseline']}:** "
          f"{c['verdict']}" for c in comparisons),
        "",
        *(f"![{p.stem}]({figure_link(p)})" for p in figures),
        "",
        "Wall time per arm and seed (start-up, every Trainer run of the chain and its evaluations; one process, one "
        "torch thread):",
        "",
        markdown_table(["arm", "seed", "wall min", "share of a core", "1-min load start / end", "date"],
                       wall_time_rows(records)),
    ]


def wall_time_rows(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One row per record: its wall minutes, the sum over its Trainer runs. A run killed and resumed counts only
    the call that finished it, so the row is marked as a lower bound; its share of a core is then unknown."""
    rows = []
    for r in sorted(records, key=lambda r: (r["arm"], r["seed"])):
        minutes: Any = round(r["total_s"] / 60, 1) if r.get("total_s") else "-"
        if r.get("continued_from_checkpoint"):
            minutes = f"≥ {minutes} (resumed: the time before the kill is not counted)"
        share = r.get("cpu_share")
        rows.append([r["arm"], r["seed"], minutes, "-" if share is None else share,
                     f"{r.get('load_start', '?')} / {r.get('load_end', '?')}", r.get("date", "?")])
    return rows


def code_line(records: Sequence[dict[str, Any]]) -> str:
    """Whether every run ran the same sclearn code (one library digest), else which ran which."""
    versions = library_versions(records)
    if len(versions) <= 1:
        return f"every run on sclearn digest {next(iter(versions), '-')}."
    return ("runs on different sclearn code, rerun to one version: " +
            "; ".join(f"{v}: {', '.join(runs)}" for v, runs in versions.items()) + ".")


def reads_line(records: Sequence[dict[str, Any]]) -> str:
    """Whether each arm and seed read the test split exactly once (its metrics.jsonl records with a test number)."""
    counts = {f"{r['arm']} seed {r['seed']}": sum(r.get("test_reads", {}).values()) for r in records}
    off = {k: n for k, n in counts.items() if n != 1}
    return "once per arm and seed." if not off else "NOT once: " + ", ".join(f"{k}: {n}" for k, n in off.items())


def figure_link(path: Path) -> str:
    """``path`` as a link from benchmarks/RESULTS.md."""
    return Path(os.path.relpath(Path(path).resolve(), BENCH_DIR)).as_posix()


def table_figure(errors: Errors, out_png: Path, *, title: str, comparison: tuple[str, str] | None,
                 paper: Mapping[str, tuple[float, float]] | None) -> Path | None:
    """The table's figure: each seed's error per arm, mean ± std, the paper's value (arms without a result are
    left out; None when no arm has one)."""
    arms = {arm: by_seed for arm, by_seed in errors.items() if by_seed}
    if not arms:
        return None
    compare_arms = comparison if comparison and set(comparison) <= set(arms) else None
    return save_table_figure(arms, out_png, title=title, ylabel="test error (%)", compare=compare_arms,
                             paper={k: v for k, v in (paper or {}).items() if k in arms}, digits=DIGITS)


def probe_figures(records: Sequence[dict[str, Any]], arms: Sequence[str], out_dir: Path, name: str, *,
                  title: str) -> list[Path]:
    """One figure per SC arm with a probe curve: the probes and the SC loss per SC epoch, a line per seed."""
    out = []
    for arm in arms:
        curves = {r["seed"]: r["probe_curve"] for r in records if r["arm"] == arm and r.get("probe_curve")}
        if curves:
            out.append(save_probe_figure(curves, out_dir / f"{name}_probe_{arm}.png", title=f"{title}: {arm}"))
    return out


# -- the shared start and end of a table script's main() ---------------------------------------------------
def collect(name: str, args: argparse.Namespace, runs_of: Any) -> tuple[dict[str, Any], list[dict[str, Any]], Errors]:
    """Train (or, with ``--report-only``, read) every arm and seed of ``args``: the report so far (with the
    missing records, the runs and the errors), the records, and ``{arm: {seed: test error %}}``."""
    report, results, missing = table_runs.run_or_read(name, args, runs_of)
    errors = errors_by_arm(results, args.arms)
    report.update(missing=missing, runs=[{k: v for k, v in r.items() if k != "configs"} for r in results],
                  errors=errors)
    return report, results, errors


def publish(report: dict[str, Any], results: Sequence[dict[str, Any]], args: argparse.Namespace, name: str, *,
            projection: Callable[[Sequence[dict[str, Any]], argparse.Namespace], dict[str, Any]],
            markdown_block: Callable[[dict[str, Any]], str], draw: Callable[[Path], list[Path]]) -> None:
    """Add the code, test-read and projection lines, draw the figures (``draw(figure_dir)``; a temporary dir for
    ``--smoke`` without ``--figure-dir``), then print the report and, with ``--write-results``, its block."""
    report["code_line"] = code_line(results)
    report["test_split_line"] = reads_line(results)
    report["projection"] = projection(results, args)
    with tempfile.TemporaryDirectory() as tmp:
        figure_dir = args.figure_dir or (Path(tmp) if args.smoke else BENCH_DIR / "figures")
        report["figures"] = [str(f) for f in draw(figure_dir)]
        harness.publish(report, args, name, markdown_block)
