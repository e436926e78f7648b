"""Evaluation: top-1 accuracy, and kNN / linear probes on frozen features.

A probe asks how good a representation is without fine-tuning it: extract features once from a frozen
model (at any named layer, e.g. the SC layer), then fit a cheap classifier on them.

- ``knn_probe``: weighted kNN on cosine similarity, as in InstDisc (Wu et al. 2018) and DINO's
  ``eval_knn.py``: each of the k nearest training features votes for its label with weight
  ``exp(sim / temperature)``.
- ``linear_probe``: multinomial logistic regression fitted full-batch with L-BFGS on standardised features.
- ``probe_splits`` (several eval sets) and ``probe_representation`` (one): both probes of a model's features
  at a layer. The Trainer's per-epoch probe of SC pre-training and ``python -m sclearn.probe`` run these.
- ``evaluate_accuracy``: top-1 of a model's logits, across processes when given accelerate's gather; the
  Trainer's test and val accuracy.

All loaders yield ``(images, labels)`` (a tuple/list, or a dict with "image"/"label" keys).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import StopForward, run_until_stopped

__all__ = ["evaluate_accuracy", "extract_features", "knn_probe", "linear_probe", "probe_representation",
           "probe_splits"]

# Cap on the elements of one (test chunk x train) similarity block: 2**24 floats = 64 MiB,
# so a 10k x 60k probe is done in ~36 blocks of ~280 test rows instead of one 2.4 GB matrix.
_KNN_BLOCK_ELEMS = 2**24


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside; afterwards every module gets back its own mode (frozen layers of a training model
    stay in eval mode, which ``model.train(was_training)`` would undo)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _pool_map(x: Tensor, pool: int | None) -> Tensor:
    """(B, C, H, W) -> (B, C * pool * pool), or (B, C) if pool is None; (B, D) passes through."""
    if x.ndim == 2:
        return x
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) map or (B, D) features, got shape {tuple(x.shape)}")
    if pool is None:
        return x.mean((2, 3))  # (B, C)
    return F.adaptive_avg_pool2d(x, pool).flatten(1)  # (B, C * pool * pool)


def _final_features(model: nn.Module, images: Tensor) -> Tensor:
    """Globally pooled last features: timm's ``forward_head(pre_logits=True)`` where the model has it."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(images), pre_logits=True)  # (B, D)
    if hasattr(model, "forward_features"):
        return _pool_map(model.forward_features(images), None)
    return _pool_map(model(images), None)


def _layer_features(model: nn.Module, module: nn.Module, images: Tensor, pool: int | None,
                    to_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Run ``model`` up to ``module`` (a forward hook stops the pass there) and pool its output."""
    store: list[Tensor] = []

    def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise StopForward(store)  # nothing after the probed layer needs computing

    handle = module.register_forward_hook(hook)
    try:
        run_until_stopped(store, model, images)
    finally:
        handle.remove()
    if not store:
        raise RuntimeError("the probed layer was not called in the forward pass")
    out = store[0] if to_map is None else to_map(store[0], tuple(images.shape[-2:]))  # (B, C, H, W)
    return _pool_map(out, pool)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    *,
    layer: str | None = None,
    pool: int | None = 2,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    to_map: Callable[..., Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Features of a frozen model for every sample of ``loader``.

    Args:
        model: any ``nn.Module``; put in eval mode for the pass and restored afterwards.
        loader: yields ``(images, labels)`` batches.
        layer: name (as in ``model.named_modules()``) of the module whose output to take. Its map
            (B, C, H, W) is average-pooled to ``pool x pool`` and flattened; a (B, D) output is kept. The
            forward pass stops at that module: later layers are never run.
            ``None``: the model's globally pooled last features (``forward_head(pre_logits=True)`` for timm
            models, else the global average of ``forward_features`` or of the output).
        pool: output grid side for a layer's map; ``None`` means global average pooling.
        device: where to run; default: the model's device.
        max_batches: stop after this many batches.
        to_map: ``(layer_output, input_hw) -> (B, C, H, W)`` for layers that give NHWC maps or tokens, e.g. a
            :class:`sclearn.layouts.FeatureLayout` (``MultiLayerSC`` keeps one per hooked layer).

    Returns:
        ``(features, labels)``: float32 (N, D) and int64 (N,), on the CPU.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    module = None
    if layer is not None:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(f"no module named {layer!r}; some names: {list(modules)[1:12]}")
        module = modules[layer]
    feats, labels = [], []
    with _eval_mode(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images, y = _unpack(batch)
            images = images.to(device, non_blocking=True)
            f = (
                _final_features(model, images)
                if module is None
                else _layer_features(model, module, images, pool, to_map)
            )
            feats.append(f.float().cpu())  # (B, D)
            labels.append(y.long().cpu())  # (B,)
    if not feats:
        raise ValueError("the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def _num_classes(*labels: Tensor) -> int:
    return int(max(int(y.max()) for y in labels)) + 1


@torch.no_grad()
def knn_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of a weighted kNN classifier on cosine similarity.

    Each test feature takes its ``k`` most similar training features (cosine); neighbour j votes for its
    label with weight ``exp(sim_j / temperature)``; the class with the largest total wins.

    Args:
        train_feats: Shape: (N, D).
        train_labels: Shape: (N,), int class ids.
        test_feats: Shape: (M, D).
        test_labels: Shape: (M,).
        k: neighbours per test sample (clipped to N).
        temperature: vote sharpness; small values approach a majority vote of the nearest few.
        num_classes: default ``max label + 1``.

    Returns:
        Fraction of test samples classified correctly, in [0, 1].
    """
    num_classes = num_classes or _num_classes(train_labels, test_labels)
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)  # (N, D)
    test = F.normalize(test_feats.float(), dim=1).to(train.device)  # (M, D)
    train_labels = train_labels.to(train.device)
    chunk = max(1, _KNN_BLOCK_ELEMS // train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)  # (m, C)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        pred = votes.argmax(1).cpu()  # (m,)
        correct += int((pred == test_labels[start : start + chunk].cpu()).sum())
    return correct / test.shape[0]


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    l2: float = 1e-4,
    max_iter: int = 200,
    standardize: bool = True,
) -> float:
    """Top-1 accuracy of a multinomial logistic regression fitted on frozen features.

    Minimises ``mean CE + l2 * ||W||^2`` (bias not penalised) full-batch with L-BFGS (strong-Wolfe line
    search), starting from zero. With ``standardize`` each feature is shifted and scaled by the *training*
    mean and std, so the test set never informs the fit.

    Args:
        train_feats: Shape: (N, D).
        train_labels: Shape: (N,), int class ids.
        test_feats: Shape: (M, D).
        test_labels: Shape: (M,).
        l2: weight of the squared-L2 penalty on the weights.
        max_iter: L-BFGS iterations.
        standardize: z-score the features with training statistics.

    Returns:
        Fraction of test samples classified correctly, in [0, 1].
    """
    x, xt = train_feats.float(), test_feats.float().to(train_feats.device)
    y = train_labels.long().to(x.device)
    if standardize:
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)  # (D,)
        x, xt = (x - mean) / std, (xt - mean) / std
    num_classes = _num_classes(train_labels, test_labels)
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)  # (D, C)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)  # (C,)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may hold a no_grad context
        opt.step(closure)
    with torch.no_grad():
        pred = (xt @ w + b).argmax(1).cpu()  # (M,)
    return (pred == test_labels.cpu()).float().mean().item()


def probe_splits(
    model: nn.Module,
    layer: str | None,
    train_loader: Iterable,
    eval_loaders: Mapping[str, Iterable],
    *,
    pool: int | None = 2,
    k: int = 20,
    linear: Collection[str] = (),
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    to_map: Callable[..., Tensor] | None = None,
) -> dict[str, dict[str, float | int]]:
    """kNN (and linear) probes of ``model``'s frozen features at ``layer``, fitted on ``train_loader`` and scored on
    each of ``eval_loaders``. The training features are extracted once (see :func:`extract_features` for
    ``layer``, ``pool``, ``device`` and ``to_map``).

    Args:
        eval_loaders: Split name -> loader, e.g. ``{"test": ..., "val": ...}``.
        k: Neighbours of :func:`knn_probe`.
        linear: The splits that also get :func:`linear_probe` (names not in ``eval_loaders`` are ignored).
        num_classes: For the kNN vote; default: the largest label + 1.

    Returns:
        ``{split: {"knn_top1": float, "feature_dim": int, "linear_top1": float (splits in linear)}}``.
    """
    train_x, train_y = extract_features(model, train_loader, layer=layer, pool=pool, device=device, to_map=to_map)
    out: dict[str, dict[str, float | int]] = {}
    for name, loader in eval_loaders.items():
        x, y = extract_features(model, loader, layer=layer, pool=pool, device=device, to_map=to_map)
        out[name] = {"knn_top1": knn_probe(train_x, train_y, x, y, k=k, num_classes=num_classes),
                     "feature_dim": train_x.shape[1]}
        if name in linear:
            out[name]["linear_top1"] = linear_probe(train_x, train_y, x, y)
    return out


def probe_representation(
    model: nn.Module,
    layer: str | None,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    pool: int | None = 2,
    k: int = 20,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
) -> dict[str, float | int]:
    """kNN and linear probes of ``model``'s features at ``layer``, on one test set (see :func:`probe_splits`).

    Returns:
        ``{"knn_top1": float, "linear_top1": float, "feature_dim": int}``.
    """
    return probe_splits(model, layer, train_loader, {"test": test_loader}, pool=pool, k=k, linear=("test",),
                        num_classes=num_classes, device=device)["test"]


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    gather: Callable[[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]] | None = None,
) -> float:
    """Top-1 accuracy of ``model``'s logits over ``loader`` (in eval mode; every module's mode is restored after).

    Args:
        model: Returns logits (B, num_classes), or an object with ``.logits`` (a :class:`sclearn.MultiLayerSC`,
            which skips SC in eval mode).
        device: Where to run; default: the model's device.
        gather: ``(predictions, labels) -> (predictions, labels)`` of every process, e.g. accelerate's
            ``Accelerator.gather_for_metrics`` (which drops the padding of uneven shards): each process then
            returns the accuracy over the whole set.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    correct = total = 0
    with _eval_mode(model):
        for batch in loader:
            images, y = _unpack(batch)
            out = model(images.to(device, non_blocking=True))
            logits = getattr(out, "logits", out)  # (B, num_classes)
            pred, y = logits.argmax(1), y.to(logits.device)  # (B,), (B,)
            if gather is not None:
                pred, y = gather((pred, y))
            correct += int((pred == y).sum())
            total += y.numel()
    if total == 0:
        raise ValueError("the loader yielded no batches")
    return correct / total
