"""Plots write readable PNGs of the expected size, whatever keys the metrics log holds."""

import json

import pytest
import timm
import torch

import sclearn.models  # noqa: F401  (registers the Table-4 nets)
from sclearn.plots import _filter_mosaic, plot_first_layer_filters, plot_training_curves, read_metrics

mpl_image = pytest.importorskip("matplotlib.image")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    return mpl_image.imread(path)  # (H, W, 4) floats


def _write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _synthetic_records():
    recs = [{"event": "start", "config": {"mode": "two_stage"}}]
    for step in range(0, 200, 10):
        stage = "pretrain" if step < 100 else "finetune"
        r = {"step": step, "epoch": step // 50, "stage": stage, "lr": 0.1 * 0.99**step, "img_per_s": 800.0}
        if stage == "pretrain":
            r.update(
                {"loss": 12.0 - step / 20, "sc": 12.0 - step / 20, "sc/stages.1": 6.0, "sc/stages.2": 6.5}
            )
        else:
            r.update({"loss": 2.3 - step / 200, "ce": 2.3 - step / 200})
        if step % 50 == 0:
            r.update({"val_acc": step / 250, "knn_top1": step / 300})
        recs.append(r)
    recs.append({"step": 200, "test_acc": 0.8})
    recs.append({"event": "end"})
    return recs


def test_read_metrics_skips_events_and_broken_lines(tmp_path):
    path = _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_records(), tail='\n{"step": 210, "lo')
    recs = read_metrics(path)
    assert len(recs) == 21 and all("step" in r for r in recs)


def test_training_curves_png(tmp_path):
    (tmp_path / "run").mkdir()
    path = _write_jsonl(tmp_path / "run" / "metrics.jsonl", _synthetic_records())
    out = plot_training_curves(path, tmp_path / "plots" / "curves.png")
    img = _read_png(out)
    assert img.shape[0] == pytest.approx(700, abs=5) and img.shape[1] == pytest.approx(1100, abs=5)
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize(
    "records",
    [[], [{"event": "start"}], [{"step": 0, "lr": 0.1}], [{"step": 1, "loss": float("nan"), "ce": None}]],
)
def test_training_curves_missing_keys(tmp_path, records):
    path = _write_jsonl(tmp_path / "metrics.jsonl", records)
    out = plot_training_curves(path, tmp_path / "curves.png")
    assert _read_png(out).shape[:2] == (700, 1100)


@pytest.mark.parametrize("name, channels", [("sc_cifar10", 3), ("sc_mnist", 1)])
def test_first_layer_filters_png(tmp_path, name, channels):
    model = timm.create_model(name)
    out = plot_first_layer_filters(model, tmp_path / f"{name}.png", max_filters=16)
    img = _read_png(out)
    assert img.shape[:2] == (600, 600)
    assert img[..., :3].std() > 0.05


def test_filter_mosaic_layout_and_normalisation():
    w = torch.randn(10, 3, 5, 5) * torch.arange(1, 11).view(10, 1, 1, 1)
    grid = _filter_mosaic(w)  # 10 filters -> 4 columns x 3 rows of 5x5 tiles with 1-px gaps
    assert grid.shape == (3 * 6 + 1, 4 * 6 + 1, 3)
    tile0, tile9 = grid[1:6, 1:6], grid[13:18, 7:12]
    for tile in (tile0, tile9):
        assert tile.min() == 0 and tile.max() == 1  # each filter min-max normalised on its own
    torch.testing.assert_close(tile0, (w[0] - w[0].min()).permute(1, 2, 0) / (w[0].max() - w[0].min()))
    assert _filter_mosaic(torch.randn(4, 1, 3, 3)).shape == (2 * 4 + 1, 2 * 4 + 1, 1)
