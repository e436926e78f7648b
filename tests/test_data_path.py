"""The Trainer's input pipeline: batched device augmentation, the memory path, the path choice, the cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sclearn import data as D
from sclearn.config import TrainConfig
from sclearn.data import BatchAugment, build_loaders, decode_split, translate_flip
from sclearn.data import memory as M
from sclearn.data import pipeline as P
from tests.conftest import write_idx_dir

NUMPY_PAD = {"reflect": "reflect", "symmetric": "symmetric", "edge": "edge", "constant": "constant",
             "zeros": "constant"}


def reference_translate_flip(img: np.ndarray, dy: int, dx: int, flip: bool, mode: str) -> np.ndarray:
    """One image (C, H, W): numpy pad by the largest shift, crop at the offset, then flip (RandomCrop + hflip)."""
    p = max(abs(dy), abs(dx))
    padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode=NUMPY_PAD[mode])
    h, w = img.shape[1:]
    out = padded[:, p + dy : p + dy + h, p + dx : p + dx + w]
    return out[:, :, ::-1] if flip else out


@pytest.mark.parametrize("mode", sorted(NUMPY_PAD))
def test_batched_translate_flip_matches_per_image_numpy_reference(mode):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 2, 7, 9), dtype=torch.uint8, generator=g)
    shifts = torch.randint(-3, 4, (48, 2), generator=g)
    flips = torch.rand(48, generator=g) < 0.5
    out = translate_flip(images, shifts, flips, mode)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    for b in range(len(images)):
        ref = reference_translate_flip(images[b].numpy(), int(shifts[b, 0]), int(shifts[b, 1]), bool(flips[b]), mode)
        np.testing.assert_array_equal(out[b].numpy(), ref, err_msg=f"sample {b}")


def coordinate_images(n: int, size: int = 15) -> torch.Tensor:
    """(n, 1, size, size) uint8 whose pixel (i, j) holds i * size + j: the output shows where it read from."""
    grid = torch.arange(size * size, dtype=torch.uint8).view(1, 1, size, size)
    return grid.expand(n, 1, size, size).clone()


def read_offset(out: torch.Tensor, size: int = 15) -> tuple[int, int, bool]:
    """(dy, dx, flipped) of one augmented coordinate image, read at its centre (far from any border)."""
    c = size // 2
    v, right = int(out[0, c, c]), int(out[0, c, c + 1])
    flipped = right < v
    return v // size - c, v % size - c, flipped


def test_batch_augment_draws_per_sample_and_covers_every_offset_and_flip():
    aug = BatchAugment(channels=1, translate=2, hflip=True)  # no mean/std: only scaled to [0, 1]
    seen: set = set()
    torch.manual_seed(0)
    per_batch = []
    for _ in range(4):
        out = (aug(coordinate_images(64)) * 255).round().to(torch.uint8)
        offsets = [read_offset(o) for o in out]
        per_batch.append(len(set(offsets)))
        seen.update(offsets)
    assert seen == set(itertools.product(range(-2, 3), range(-2, 3), (False, True)))  # all 50, nothing else
    assert min(per_batch) > 20  # each sample draws its own: one batch already holds most combinations


def test_batch_augment_normalises_like_torchvision_and_repeats_grayscale():
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    got = BatchAugment(mean=mean, std=std, channels=3)(images)
    ref = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(images.expand(-1, 3, -1, -1).contiguous()))
    assert torch.equal(got, ref)


def base_config(**overrides) -> TrainConfig:
    kw = dict(mode="supervised", batch_size=16, translate=0, hflip=False, channels=3, report_to="none", seed=0)
    kw.update(overrides)
    return TrainConfig(**kw)


def reference_batches(ds, cfg, mean, std):
    """The classic per-image path: build_transform(train=False) over every image, batched in order."""
    tf = D.build_transform(train=False, image_size=cfg.image_size, mean=mean, std=std, channels=cfg.channels)
    loader = D.make_loader(D.with_image_transform(ds, tf), max(cfg.batch_size, 256), shuffle=False)
    return [x for x, _ in loader]


@pytest.mark.parametrize("source, channels, image_size", [
    ("idx", 1, None), ("idx", 3, None), ("cifar", 3, None), ("cifar", 3, 20), ("folder", 3, 24), ("folder", 1, 24),
])
def test_memory_and_stream_give_the_same_normalised_tensors(source, channels, image_size, idx_dir,
                                                             cifar_parquet_dir, imagefolder_dir):
    where = {"idx": f"idx:{idx_dir}", "cifar": f"parquet:{cifar_parquet_dir}", "folder": f"imagefolder:{imagefolder_dir}"}
    dsd = D.load_image_dataset(where[source])
    if source == "cifar":  # 4k train images: keep the unlabelled pool small
        dsd["train"] = dsd["train"].select(range(300))
    splits = D.semi_supervised_splits(dsd, labels_per_class=2)
    cfg = base_config(channels=channels, image_size=image_size, mode="two_stage", translate=2, hflip=True)
    built = {path: build_loaders(TrainConfig(**{**cfg.to_dict(), "data_path": path}), splits)
             for path in ("memory", "stream")}
    assert {p: b.path for p, b in built.items()} == {"memory": "memory", "stream": "stream"}
    assert built["memory"].mean == built["stream"].mean
    # Augmentation off (eval, probe): both equal the classic per-image build_transform(train=False).
    for name, ds in (("test", splits.test), ("bank", splits.labeled)):
        ref = torch.cat(reference_batches(ds, cfg, built["memory"].mean, built["memory"].std))
        for path, b in built.items():
            loader = b.eval["test"] if name == "test" else b.probe["bank"]
            assert torch.equal(torch.cat([x for x, _ in loader]), ref), (path, name)
    # Augmentation on: the same seed gives the same training batches on both paths.
    batches = {}
    for path, b in built.items():
        torch.manual_seed(7)
        batches[path] = [(x, y) for x, y in b.train["unlabeled"]]
    assert len(batches["memory"]) == len(batches["stream"]) > 0
    for (xm, ym), (xs, ys) in zip(batches["memory"], batches["stream"]):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_a_part_spanning_two_splits_reads_both(stl_parquet_dir):
    splits = D.semi_supervised_splits(D.load_image_dataset(f"parquet:{stl_parquet_dir}"), protocol="stl10")
    assert len(splits.origins["unlabeled"]) == 2  # STL-10: the unlabeled split, then the train images
    b = build_loaders(base_config(mode="pretrain", data_path="memory", batch_size=8), splits)
    rows = b.train["unlabeled"].dataset
    assert isinstance(rows, D.MemoryRows) and len(rows) == len(splits.unlabeled)
    decode = D.decode_transform(channels=3)
    for i in (0, 39, 40, len(rows) - 1):  # first and last of each split
        images, _ = rows.__getitems__([i])
        ref = decode(splits.unlabeled[i]["image"])
        assert torch.equal(images[0], ref), i


def test_auto_takes_the_memory_path_when_it_fits_and_streams_with_a_note_when_not(idx_dir):
    splits = D.semi_supervised_splits(D.load_image_dataset(f"idx:{idx_dir}"), labels_per_class=2)
    fits = build_loaders(base_config(), splits)
    assert fits.path == "memory" and fits.reason.startswith("auto: ")
    over = build_loaders(base_config(memory_budget_gb=1e-6), splits)
    assert over.path == "stream" and "too large" in over.reason and "--memory-budget-gb" in over.reason
    assert build_loaders(base_config(data_path="stream"), splits).path == "stream"
    forced = build_loaders(base_config(data_path="memory", memory_budget_gb=1e-6), splits)
    assert forced.path == "memory"  # asked for: honoured, whatever the budget


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_stl10_sized_data_takes_the_memory_path_on_a_24_gib_machine(monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}
    monkeypatch.setattr(P.os, "sysconf", lambda name: pages[name])
    assert P.default_memory_budget() == 6 * 2**30
    monkeypatch.setattr(P, "decoded_shape", lambda ds, **kw: (3, 96, 96))
    stl = {"unlabeled": [(_Sized(100_000), None), (_Sized(5_000), list(range(5000)))],
           "test": [(_Sized(8_000), None)]}
    path, reason = P._choose_path(base_config(image_size=96), stl)
    assert path == "memory", reason
    assert "2.91 GiB" in reason  # (100k + 5k + 8k) x 3 x 96 x 96 bytes
    pages["SC_PHYS_PAGES"] = 8 * 2**30 // 4096  # on an 8 GiB machine it streams
    assert P._choose_path(base_config(image_size=96), stl)[0] == "stream"


def mapped_file_of(t: torch.Tensor) -> str:
    """The file whose memory mapping holds the tensor's data (Linux /proc/self/maps), or ""."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps")
    ptr = t.data_ptr()
    for line in maps.read_text().splitlines():
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= ptr < end:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_memory_cache_is_reused_and_memory_mapped(tmp_path, monkeypatch):
    root = write_idx_dir(tmp_path / "digits", train_per_class=3, test_per_class=1)
    train = D.load_image_dataset(f"idx:{root}", cache_dir=str(tmp_path / "cache"))["train"]
    first = decode_split(train, image_size=None, channels=1)
    assert mapped_file_of(first.chunks[0]).startswith(str(tmp_path / "cache"))  # a view of the cached arrow file

    def no_decode(self, images, rows):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(M._DecodeToPixels, "__call__", no_decode)
    again = decode_split(train, image_size=None, channels=1)  # a second run: straight from the cache
    assert torch.equal(again.gather(torch.arange(len(again))), first.gather(torch.arange(len(first))))
    with pytest.raises(AssertionError, match="decoded again"):  # other settings: another cache entry
        decode_split(train, image_size=20, channels=1)


def test_image_stack_gathers_across_chunks():
    chunks = [torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2) + 100 * k for k, n in enumerate((3, 1, 4))]
    stack = M.ImageStack(chunks)
    whole = torch.cat(chunks)
    rows = torch.tensor([7, 0, 3, 3, 5, 2])
    assert len(stack) == 8 and torch.equal(stack.gather(rows), whole[rows])


def test_memory_path_refuses_images_of_different_sizes_without_image_size(imagefolder_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    for i, side in enumerate((8, 8, 9)):
        Image.new("L", (side, side), color=i * 40).save(folder / f"{i}.png")
    ds = D.load_image_dataset(f"imagefolder:{tmp_path / 'folder'}")["train"]
    with pytest.raises(D.DataError, match=r"Row 2: the image is \(9, 9\).*--image-size"):
        decode_split(ds, image_size=None, channels=1)
    assert decode_split(ds, image_size=8, channels=1).shape == (1, 8, 8)


# -- the Trainer on either path -----------------------------------------------------------------------

def _run(idx_dir, out: Path, *, die_after_save: int | None = None, resume: bool = False, **overrides) -> None:
    """A tiny joint run (10 steps, a checkpoint every 3); optionally killed right after its n-th checkpoint."""
    from sclearn.checkpoint import CheckpointManager
    from sclearn.train import Trainer
    from tests.test_train import tiny_config

    cfg = tiny_config(idx_dir, out.parent, mode="joint", output_dir=str(out), max_steps=10, resume=resume,
                      **overrides)
    real_save, saves = CheckpointManager.save, []

    def save(self, state):
        path = real_save(self, state)
        saves.append(state["global_step"])
        if len(saves) == die_after_save:
            raise KeyboardInterrupt("simulated kill")
        return path

    CheckpointManager.save = save
    try:
        Trainer(cfg).fit()
    finally:
        CheckpointManager.save = real_save


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "backbone.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(idx_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    _run(idx_dir, out, data_path="memory")
    return _weights(out)


def test_memory_and_streaming_runs_train_identical_weights(idx_dir, tmp_path, uninterrupted):
    _run(idx_dir, tmp_path / "stream", data_path="stream", num_workers=2)
    got = _weights(tmp_path / "stream")
    assert all(torch.equal(got[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("before, after", [
    (dict(data_path="stream", num_workers=2), dict(data_path="stream", num_workers=2)),  # killed with workers
    (dict(data_path="stream", num_workers=0), dict(data_path="stream", num_workers=2)),  # 0 workers, resumed with 2
    (dict(data_path="memory"), dict(data_path="stream", num_workers=1)),  # another data path on resume
])
def test_resume_is_exact_with_workers_and_across_data_paths(idx_dir, tmp_path, uninterrupted, before, after):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(idx_dir, out, die_after_save=2, **before)  # after step 6 of 10, mid-epoch
    _run(idx_dir, out, resume=True, **after)
    got = _weights(out)
    assert got.keys() == uninterrupted.keys()
    for k in uninterrupted:
        assert torch.equal(got[k], uninterrupted[k]), k


def test_recipe_flags_set_the_data_path_and_budget():
    from sclearn.cli import build_parser, config_from_args

    def parse(*argv):
        return config_from_args(build_parser({}, "t").parse_args(list(argv)))

    assert (parse().data_path, parse().memory_budget_gb) == ("auto", None)
    cfg = parse("--data-path", "stream", "--memory-budget-gb", "2.5")
    assert (cfg.data_path, cfg.memory_budget_gb) == ("stream", 2.5)
    with pytest.raises(ValueError, match="data_path='disk' is not one of"):
        parse("--data-path", "disk")
    with pytest.raises(ValueError, match="memory_budget_gb must be > 0"):
        parse("--memory-budget-gb", "0")
