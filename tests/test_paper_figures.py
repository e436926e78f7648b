"""benchmarks/paper_figures.py: the marks it computes and the data its artists hold (not pixels)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_figures import main, table_figure, table_marks

TABLE3 = {"sc_init": {0: 0.36, 1: 0.33, 2: 0.38}, "no_init": {0: 0.45, 1: 0.49, 2: 0.44}}
PAPER3 = {"sc_init": (0.34, 0.02), "no_init": (0.63, 0.02)}


def test_marks_by_hand():
    sc, none = table_marks(TABLE3, PAPER3)
    assert (sc.name, sc.x, none.x) == ("sc_init", 0.0, 1.0)
    assert sc.seeds == none.seeds == [0, 1, 2]
    assert sc.point_x == pytest.approx([-0.12, 0.0, 0.12]) and none.point_x == pytest.approx([0.88, 1.0, 1.12])
    assert sc.values == [0.36, 0.33, 0.38]
    # mean 0.35667; deviations 0.00333, -0.02667, 0.02333 -> sample variance 0.0012667 / 2
    assert sc.mean == pytest.approx(1.07 / 3) and sc.std == pytest.approx((0.0012666667 / 2) ** 0.5)
    assert (sc.paper, sc.paper_std, none.paper) == (0.34, 0.02, 0.63)


def test_a_seed_keeps_its_offset_in_every_arm_and_lists_mean_seeds_0_to_n():
    a, b, c = table_marks({"a": {"s1": 1.0, "s3": 3.0}, "b": {"s2": 2.0, "s1": 1.5}, "c": [4.0]},
                          {"b": 7.0}, spread=0.3)
    # seeds in order of first appearance over all arms: s1, s3, s2, then 0 (arm c's list) -> 4 offsets
    assert a.seeds == ["s1", "s3"] and a.point_x == pytest.approx([-0.3, -0.1])
    assert b.seeds == ["s1", "s2"] and b.point_x == pytest.approx([0.7, 1.1])
    assert c.seeds == [0] and c.point_x == pytest.approx([2.3]) and c.std is None
    assert (b.paper, b.paper_std, a.paper) == (7.0, None, None)


def _by_gid(fig) -> dict[str, list]:
    ax = fig.axes[0]
    found: dict[str, list] = {}
    for artist in [*ax.collections, *ax.lines]:
        found.setdefault(artist.get_gid(), []).append(artist)
    return found


def _errorbar(fig, gid: str) -> tuple[float, float, tuple[float, float] | None]:
    """(x, y, (low, high) of the bar or None) of the errorbar whose data line has ``gid``."""
    (container,) = [c for c in fig.axes[0].containers if c.lines[0].get_gid() == gid]
    (x, y), = container.lines[0].get_xydata()
    bars = container.lines[2]
    if not bars:
        return x, y, None
    (bottom, top), = bars[0].get_segments()
    return x, y, (bottom[1], top[1])


def test_figure_draws_every_seed_the_mean_std_and_the_paper():
    fig = table_figure(TABLE3, paper=PAPER3, compare=("sc_init", "no_init"), title="MNIST, Table 3",
                       ylabel="test error (%)")
    drawn = _by_gid(fig)
    for m in table_marks(TABLE3, PAPER3):
        (points,) = drawn[f"points:{m.name}"]
        xs, ys = points.get_offsets().T.tolist()
        assert xs == pytest.approx(m.point_x) and ys == m.values
        x, y, (lo, hi) = _errorbar(fig, f"mean:{m.name}")
        assert y == pytest.approx(m.mean) and (lo, hi) == pytest.approx((m.mean - m.std, m.mean + m.std))
        x_paper, y_paper, bar = _errorbar(fig, f"paper:{m.name}")
        assert y_paper == m.paper and bar == pytest.approx((m.paper - 0.02, m.paper + 0.02))
        assert m.x - 0.5 < min(m.point_x) and max(m.point_x) < x < x_paper < m.x + 0.5  # inside the arm's slot
    for seed in (0, 1, 2):  # each seed's two points joined
        (line,) = drawn[f"seed:{seed}"]
        assert line.get_ydata().tolist() == [TABLE3["sc_init"][seed], TABLE3["no_init"][seed]]
    # differences -0.09, -0.16, -0.06: mean -0.103, sd 0.0513 -> t = -3.49 on 2 df, p = 0.073 (t-table: 0.05-0.10)
    assert fig.axes[0].get_title() == "sc_init − no_init: -0.10 ± 0.05, paired t-test p = 0.073 (3 seeds)"
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["sc_init\nours 0.36 ± 0.03 (n=3)\npaper 0.34 ± 0.02",
                      "no_init\nours 0.46 ± 0.03 (n=3)\npaper 0.63 ± 0.02"]


def test_seed_lines_join_only_neighbouring_arms_that_both_ran_the_seed():
    fig = table_figure({"a": [1.0, 2.0], "b": {1: 3.0}, "c": [5.0, 6.0]})
    drawn = _by_gid(fig)
    assert [line.get_ydata().tolist() for line in drawn["seed:1"]] == [[2.0, 3.0], [3.0, 6.0]]
    assert "seed:0" not in drawn  # b has no seed 0: a and c are not joined across it
    assert "paper:a" not in {c.lines[0].get_gid() for c in fig.axes[0].containers}


def test_errors():
    with pytest.raises(ValueError, match=r"paper values for arms that are not plotted: \['sc'\]"):
        table_marks({"a": [1.0]}, {"sc": 0.3})
    with pytest.raises(ValueError, match=r"arms without a result: \['b'\]"):
        table_marks({"a": [1.0], "b": {}})
    with pytest.raises(ValueError, match="compare="):
        table_figure({"a": [1.0]}, compare=("a", "z"))


def test_cli_writes_a_png_from_a_results_json(tmp_path, capsys):
    spec = {"title": "T", "ylabel": "err", "arms": {k: {str(s): v for s, v in d.items()} for k, d in TABLE3.items()},
            "paper": PAPER3, "compare": ["sc_init", "no_init"]}
    (tmp_path / "t.json").write_text(json.dumps(spec))
    main([str(tmp_path / "t.json"), str(tmp_path / "figs" / "t.png")])
    assert (tmp_path / "figs" / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(tmp_path / "figs" / "t.png")
    (tmp_path / "bad.json").write_text(json.dumps({"arm": {}}))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.json"), str(tmp_path / "x.png")])
    assert "needs 'arms'" in capsys.readouterr().err
