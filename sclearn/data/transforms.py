"""Per-image transforms (torchvision v2) and the normalisation statistics the Trainer uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image as PILImage
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from .augment import PADDING_MODES, _per_channel, fold_index
from .decode import _decode, _raw_images
from .errors import DataError
from .splits import SemiSupervisedSplits


class ConvertMode:
    """PIL image of any mode -> ``mode`` ("L" or "RGB"); tensors pass through.

    Palette images go through RGBA (PIL warns otherwise); alpha is dropped; integer ("I", "I;16") images
    are scaled from the 16-bit range to 8 bits instead of clipped.
    """

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, PILImage.Image) or img.mode == self.mode:
            return img
        if img.mode.startswith("I"):  # "I", "I;16", "I;16B", ...
            arr = np.asarray(img).astype(np.float32)
            img = PILImage.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))  # 16-bit range -> 8
        elif img.mode == "F":
            img = PILImage.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
        elif img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        return img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class RandomTranslate(nn.Module):
    """Shift by up to ``pad`` pixels each way, like ``RandomCrop(size, padding=pad)`` for any image size.

    Done with two ``index_select``s (or a slice copy for zeros) instead of pad + crop: torch's reflect
    pad kernel wakes the intra-op thread pool even for a 28x28 image, which costs milliseconds on a
    busy machine.
    """

    def __init__(self, pad: int, padding_mode: str = "reflect"):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise DataError(f"padding_mode={padding_mode!r}; use 'reflect', 'symmetric', 'edge' or 'constant'.")
        self.pad, self.padding_mode = pad, padding_mode

    def forward(self, img: Tensor) -> Tensor:  # (C, H, W) -> (C, H, W)
        h, w = img.shape[-2:]
        p = min(self.pad, h - 1, w - 1)  # reflect needs p < size
        if p <= 0:
            return img
        sy, sx = (torch.randint(-p, p + 1, (2,))).tolist()
        if self.padding_mode in ("constant", "zeros"):
            out = torch.zeros_like(img)
            out[..., max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)] = (
                img[..., max(0, sy) : h + min(0, sy), max(0, sx) : w + min(0, sx)])
        else:
            rows = fold_index(torch.arange(h) + sy, h, self.padding_mode)
            cols = fold_index(torch.arange(w) + sx, w, self.padding_mode)
            out = img.index_select(-2, rows).index_select(-1, cols)
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.Image) else out

    def extra_repr(self) -> str:
        return f"pad={self.pad}, padding_mode={self.padding_mode!r}"


def _model_in_chans(model: nn.Module | None) -> int | None:
    """Input channels of a model: its first conv's (timm's data config says 3 even for in_chans=1)."""
    if model is None:
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else getattr(model, "in_chans", None)


def is_grayscale(img: PILImage.Image) -> bool:
    """Whether a PIL image has one colour channel (converting it to RGB repeats that channel)."""
    return img.mode in ("1", "L", "LA", "F") or img.mode.startswith("I")


def _decode_steps(image_size: int | None, channels: int) -> list[Callable]:
    steps: list[Callable] = [ConvertMode("L" if channels == 1 else "RGB"), v2.ToImage()]  # uint8 (C, H, W)
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    return steps


def decode_transform(*, image_size: int | None = None, channels: int = 3) -> Callable[[PILImage.Image], Tensor]:
    """PIL image of any mode -> uint8 ``(channels, image_size, image_size)``: what ``build_transform`` does first.

    The memory path stores its output once; the Trainer's streaming path runs it per image and leaves the
    random augmentation and normalisation to :class:`sclearn.data.BatchAugment`.
    """
    if channels not in (1, 3):
        raise DataError(f"channels={channels}; only 1 (grayscale) or 3 (RGB) are supported.")
    return v2.Compose(_decode_steps(image_size, channels))


def build_transform(
    *,
    train: bool,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    translate: int = 2,
    hflip: bool = True,
    model: nn.Module | None = None,
    padding_mode: str = "reflect",
) -> Callable[[PILImage.Image], Tensor]:
    """A torchvision v2 pipeline: PIL image -> normalised float tensor.

    Steps: convert to "L" (``channels=1``) or "RGB" (grayscale is repeated to 3 channels) -> tensor ->
    [Resize + CenterCrop to ``image_size``] -> [train: random translation by up to ``translate`` px,
    random horizontal flip] -> float32 in [0, 1] -> [Normalize]. The paper's augmentation is "small
    translations and horizontal flips".

    Args:
        train: add the random augmentation; eval is deterministic.
        image_size: square output side; None keeps the images' size.
        mean, std: per-channel normalisation (1 value is broadcast); None: from ``model``'s timm data
            config if ``model`` is given, else no normalisation.
        channels: 1 or 3; None: ``model``'s first conv's input channels, else 3.
        translate: max shift in pixels (pad + random crop); 0 disables.
        hflip: random horizontal flips when training (turn off for digits).
        model: a timm/torchvision model to take mean/std/channels from.
        padding_mode: "reflect", "constant" (zeros), "edge" or "symmetric" for the translation.

    Returns:
        A callable: PIL image -> Tensor (C, H, W) float32.
    """
    channels = channels or _model_in_chans(model) or 3
    if channels not in (1, 3):
        raise DataError(f"channels={channels}; only 1 (grayscale) or 3 (RGB) are supported.")
    if (mean is None) != (std is None):
        raise DataError("Pass both mean= and std=, or neither.")
    if mean is None and model is not None:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        mean, std = cfg["mean"], cfg["std"]
    steps = _decode_steps(image_size, channels)
    if train and translate > 0:
        steps.append(RandomTranslate(translate, padding_mode))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))  # augment on uint8 (cheaper), then scale to [0, 1]
    if mean is not None:
        steps.append(v2.Normalize(_per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")))
    return v2.Compose(steps)


def dataset_stats(ds: Dataset, *, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixel values in [0, 1], over up to ``max_images`` evenly spaced rows.

    One channel if every sampled image is grayscale, else three (grayscale images count as RGB).

    Args:
        ds: a Dataset with an ``image`` column (a transform set on it is ignored).
        max_images: cap on the images read (deterministic, evenly spaced rows).

    Returns:
        (mean, std), each a tuple of 1 or 3 floats.
    """
    if len(ds) == 0:
        raise DataError("dataset_stats got an empty dataset.")
    rows = np.unique(np.linspace(0, len(ds) - 1, min(max_images, len(ds))).astype(np.int64)).tolist()
    raw, to_rgb = _raw_images(ds), ConvertMode("RGB")
    total, total_sq, count, all_gray = np.zeros(3), np.zeros(3), 0, True
    for start in range(0, len(rows), 512):
        for j, item in enumerate(raw[rows[start : start + 512]]["image"]):
            img = _decode(item, j)
            all_gray &= is_grayscale(img)
            x = np.asarray(to_rgb(img), dtype=np.float64).reshape(-1, 3) / 255.0  # (H*W, 3)
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    keep = 1 if all_gray else 3  # grayscale -> RGB repeats the channel, so any one of them is the answer
    return tuple(float(m) for m in mean[:keep]), tuple(float(v) for v in std[:keep])


def normalization_stats(splits: SemiSupervisedSplits, *, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The Trainer's input normalisation for ``splits``: per-channel mean and std for ``channels`` inputs.

    Measured on the unlabelled images (all the train images by default), or on the labelled ones when there
    are none, so every run on the same data normalises alike whatever its label budget. Grayscale stats are
    repeated for 3-channel inputs; RGB stats are averaged for 1-channel inputs.

    Use it to build loaders that see exactly what a trained model saw, e.g. to probe it at another label
    budget::

        mean, std = normalization_stats(splits, channels=1)
        tf = build_transform(train=False, mean=mean, std=std, channels=1)
    """
    mean, std = dataset_stats(splits.labeled if splits.unlabeled is None else splits.unlabeled)
    if channels == 3 and len(mean) == 1:  # grayscale data repeated to RGB
        mean, std = mean * 3, std * 3
    if channels == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return tuple(mean), tuple(std)
