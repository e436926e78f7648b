"""Paired comparison of two arms run over the same seeds: mean ± std per arm, per-seed differences, paired t-test.

The benchmarks run each arm (e.g. ``sc_init`` and ``no_init``) once per seed, and a seed fixes the split, the
initialisation and the data order of *both* arms. The per-seed difference therefore removes what the seed
does to both, and the paired t-test asks whether its mean is zero (what ``scipy.stats.ttest_rel`` computes;
scipy is not a dependency here, so the t distribution comes from mpmath's regularised incomplete beta)::

    from paired_stats import paired_comparison
    paired_comparison({0: 0.36, 1: 0.35, 2: 0.38}, {0: 0.45, 1: 0.47, 2: 0.44}, names=("sc_init", "no_init"))

Seeds are keys (ints or strings); results are plain dicts of floats, ready for ``json.dumps``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import mpmath

__all__ = ["arm_summary", "paired_comparison", "paired_t_test", "student_t_two_sided_p"]

Seed = int | str


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom.

    Uses ``P = I_x(df / 2, 1 / 2)`` with ``x = df / (df + t^2)`` (Abramowitz & Stegun 26.7.1 with 26.5.27);
    ``t = ±inf`` gives 0.
    """
    if not df > 0:
        raise ValueError(f"the t distribution needs df > 0, got {df}")
    if math.isnan(t):
        raise ValueError("t is NaN")
    x = 0.0 if math.isinf(t) else df / (df + t * t)
    return float(mpmath.betainc(df / 2, 0.5, 0, x, regularized=True))


def arm_summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std"}`` of one arm's per-seed results; ``std`` is the sample std (n - 1), None for n = 1."""
    if not values:
        raise ValueError("an arm needs at least one result")
    vals = [float(v) for v in values]
    return {"n": len(vals), "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None}


def paired_t_test(differences: Sequence[float]) -> dict[str, Any]:
    """Two-sided one-sample t-test of ``mean(differences) = 0``: ``{"t", "df", "p_value"}``.

    ``t = mean / (sd / sqrt(n))`` with the sample sd, ``df = n - 1``. Fewer than 2 differences: all None
    (no test is possible). Differences that are all equal: ``t = ±inf, p = 0`` if they are non-zero, and
    ``t = 0, p = 1`` if they are all zero (no evidence of any difference).
    """
    n = len(differences)
    if n < 2:
        return {"t": None, "df": None, "p_value": None}
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return {"t": t, "df": n - 1, "p_value": student_t_two_sided_p(t, n - 1)}


def paired_comparison(a: Mapping[Seed, float], b: Mapping[Seed, float], *,
                      names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """Both arms summarised, and ``a - b`` paired by seed.

    Args:
        a: ``{seed: result}`` of the first arm (e.g. test error %).
        b: ``{seed: result}`` of the second arm.
        names: The arms' names in the output.

    Returns:
        ``{"arms": {name: arm_summary + "values"}, "paired": {"seeds", "differences", "mean_difference",
        "std_difference", "t", "df", "p_value"}, "unpaired_seeds": {name: [...]}}``. Each arm's summary covers
        all its seeds; the paired part only the seeds both arms have (a seed run by one arm only is listed
        in ``unpaired_seeds``, never silently paired with anything).
    """
    if names[0] == names[1]:
        raise ValueError(f"the two arms need different names, got {names}")
    shared = [s for s in a if s in b]
    diffs = [float(a[s]) - float(b[s]) for s in shared]
    spread = arm_summary(diffs) if diffs else {"mean": None, "std": None}
    paired = {"seeds": shared, "differences": dict(zip(shared, diffs)), "mean_difference": spread["mean"],
              "std_difference": spread["std"], **paired_t_test(diffs)}
    return {
        "arms": {name: {**arm_summary(list(arm.values())), "values": dict(arm)} for name, arm in zip(names, (a, b))},
        "paired": paired,
        "unpaired_seeds": {names[0]: [s for s in a if s not in b], names[1]: [s for s in b if s not in a]},
    }

