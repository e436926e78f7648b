"""benchmarks/paired_stats.py against t-tables, closed forms of the t distribution and a hand-worked example."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paired_stats import arm_summary, paired_comparison, paired_t_test, student_t_two_sided_p


def closed_form_p(t: float, df: int) -> float:
    """Two-sided p of Student's t for df 1, 2 and 5, from the textbook closed forms of its CDF."""
    t = abs(t)
    if df == 1:  # Cauchy
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    if df == 5:  # odd df: F(t) = 1/2 + (theta + sin cos (1 + 2/3 cos^2)) / pi, theta = atan(t / sqrt(5))
        theta = math.atan(t / math.sqrt(5))
        c = math.cos(theta)
        return 1 - 2 / math.pi * (theta + math.sin(theta) * c * (1 + 2 / 3 * c * c))
    raise ValueError(df)


@pytest.mark.parametrize("df, t, p", [(2, 2.920, 0.10), (2, 4.303, 0.05), (2, 9.925, 0.01),
                                      (5, 2.015, 0.10), (5, 2.571, 0.05), (5, 4.032, 0.01), (1, 12.706, 0.05)])
def test_t_table_critical_values(df, t, p):
    # printed tables round t to 3 decimals, which moves p by < 1e-4 here
    assert student_t_two_sided_p(t, df) == pytest.approx(p, abs=1e-4)
    assert student_t_two_sided_p(-t, df) == student_t_two_sided_p(t, df)


@pytest.mark.parametrize("df", [1, 2, 5])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 7.0, 40.0])
def test_p_matches_the_closed_forms(df, t):
    assert student_t_two_sided_p(t, df) == pytest.approx(closed_form_p(t, df), rel=1e-9, abs=1e-15)


def test_p_limits_and_errors():
    assert student_t_two_sided_p(0.0, 3) == 1.0 and student_t_two_sided_p(math.inf, 3) == 0.0
    for bad in (0, -1):
        with pytest.raises(ValueError, match="df > 0"):
            student_t_two_sided_p(1.0, bad)
    with pytest.raises(ValueError, match="NaN"):
        student_t_two_sided_p(math.nan, 2)


def test_paired_comparison_worked_by_hand():
    # test error %, like the paper's Table 3 (SC init 0.34 ± 0.02 vs none 0.63 ± 0.02)
    sc = {0: 0.34, 1: 0.36, 2: 0.35}
    none = {0: 0.63, 1: 0.61, 2: 0.65}
    out = paired_comparison(sc, none, names=("sc_init", "no_init"))
    # differences -0.29, -0.25, -0.30: mean -0.28; deviations -0.01, 0.03, -0.02 -> sd = sqrt(0.0014 / 2)
    sd = math.sqrt(0.0007)
    t = -0.28 / (sd / math.sqrt(3))  # -18.33
    paired = out["paired"]
    assert paired["seeds"] == [0, 1, 2]
    assert paired["differences"] == pytest.approx({0: -0.29, 1: -0.25, 2: -0.30})
    assert paired["mean_difference"] == pytest.approx(-0.28) and paired["std_difference"] == pytest.approx(sd)
    assert paired["t"] == pytest.approx(t) and paired["df"] == 2
    assert paired["p_value"] == pytest.approx(closed_form_p(t, 2), rel=1e-9)  # 0.00296
    assert out["arms"]["sc_init"] == {"n": 3, "mean": pytest.approx(0.35), "std": pytest.approx(0.01),
                                      "values": sc}
    assert out["arms"]["no_init"]["std"] == pytest.approx(0.02)
    assert out["unpaired_seeds"] == {"sc_init": [], "no_init": []}
    json.dumps(out)  # goes straight into a results file


def test_seeds_missing_from_one_arm_are_listed_not_paired():
    out = paired_comparison({0: 1.0, 1: 2.0, 3: 9.0}, {1: 1.5, 0: 0.5, 2: 7.0}, names=("x", "y"))
    assert out["paired"]["seeds"] == [0, 1] and out["paired"]["differences"] == {0: 0.5, 1: 0.5}
    assert out["unpaired_seeds"] == {"x": [3], "y": [2]}
    assert out["arms"]["x"]["n"] == 3 and out["arms"]["x"]["mean"] == pytest.approx(4.0)  # all of the arm's seeds
    assert out["paired"]["t"] == math.inf and out["paired"]["p_value"] == 0.0  # equal non-zero differences


def test_degenerate_inputs():
    assert paired_t_test([0.2]) == {"t": None, "df": None, "p_value": None}  # one seed: no test
    assert paired_t_test([0.0, 0.0, 0.0]) == {"t": 0.0, "df": 2, "p_value": 1.0}
    assert paired_t_test([-0.1, -0.1]) == {"t": -math.inf, "df": 1, "p_value": 0.0}
    assert arm_summary([0.5]) == {"n": 1, "mean": 0.5, "std": None}
    out = paired_comparison({0: 1.0}, {1: 2.0})
    assert out["paired"]["seeds"] == [] and out["paired"]["mean_difference"] is None
    with pytest.raises(ValueError, match="at least one result"):
        arm_summary([])
    with pytest.raises(ValueError, match="different names"):
        paired_comparison({0: 1.0}, {0: 1.0}, names=("a", "a"))
