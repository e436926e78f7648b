"""The demo's comparison figure: each arm's test accuracy against steps, and the SC loss beside it."""

import json

import pytest

from sclearn.plots import comparison_figure, comparison_series, plot_comparison

pytest.importorskip("matplotlib")


def _run(path, records):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 9, "lo')
    return path


@pytest.fixture
def runs(tmp_path):
    joint = _run(tmp_path / "joint", [
        {"step": 20, "stage": "joint", "loss": 3.0, "ce": 2.0, "sc": 10.0},
        {"step": 40, "stage": "joint", "loss": 2.5, "ce": 1.6, "sc": 9.0},
        {"step": 40, "stage": "joint", "event": "eval", "test_acc": 0.5},
        {"step": 60, "stage": "joint", "loss": 2.0, "ce": 1.2, "sc": 8.0},
        {"step": 60, "stage": "joint", "event": "epoch_end", "epoch_loss": 2.5, "test_acc": 0.625},
    ])
    sup = _run(tmp_path / "sup", [
        {"step": 20, "stage": "supervised", "loss": 2.0, "ce": 2.0},
        {"step": 40, "stage": "supervised", "event": "eval", "test_acc": 0.55},
        {"step": 60, "stage": "supervised", "event": "epoch_end", "test_acc": 0.6},
    ])
    return {"joint SC + CE": joint, "supervised only": sup}


def test_series_are_the_logged_test_accuracies_and_sc_losses(runs):
    series = comparison_series(runs)
    assert series["joint SC + CE"] == {"test_acc": ([40, 60], [0.5, 0.625]), "sc": ([20, 40, 60], [10.0, 9.0, 8.0])}
    assert series["supervised only"] == {"test_acc": ([40, 60], [0.55, 0.6]), "sc": ([], [])}


def test_figure_has_an_accuracy_panel_with_every_arm_and_an_sc_panel(runs):
    fig = comparison_figure(comparison_series(runs), "title")
    acc_ax, sc_ax = fig.axes
    assert acc_ax.get_title() == "test accuracy" and "SC" in sc_ax.get_ylabel()
    plotted = {line.get_label(): line.get_xydata().ravel().tolist() for line in acc_ax.lines}  # x0 y0 x1 y1
    assert plotted.keys() == {"joint SC + CE (final 62.5%)", "supervised only (final 60.0%)"}
    assert plotted["joint SC + CE (final 62.5%)"] == pytest.approx([40, 50.0, 60, 62.5])  # percent
    assert plotted["supervised only (final 60.0%)"] == pytest.approx([40, 55.0, 60, 60.0])
    assert [(line.get_label(), line.get_xydata().tolist()) for line in sc_ax.lines] == [
        ("joint SC + CE", [[20, 10.0], [40, 9.0], [60, 8.0]])]
    notes = [t.get_text() for t in sc_ax.texts]
    assert notes == ["no SC term: supervised only"]  # the missing arm is explained, not silently absent


def test_plot_comparison_writes_a_png(runs, tmp_path):
    out = plot_comparison(runs, tmp_path / "figs" / "comparison.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
