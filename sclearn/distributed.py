"""Cross-process negatives: ``all_gather`` that keeps the gradient.

``torch.distributed.all_gather`` returns tensors with no autograd history, so a naive gather silently drops
the gradient of every remote patch (lightly #1176, pl_bolts #179). Here each process computes the *same*
global loss on the gathered batch. The backward all-reduces (sums) the gradient of the gathered tensor and
keeps this process's slice; DDP then averages the parameter gradients over the W processes, and
W * (1/W) = 1, so the result equals one process training on the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks)  # (W * N, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every process's loss depends on our rows
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (N, ...) from every process in rank order, differentiably: (W * N, ...).

    Returns ``x`` unchanged when torch.distributed is not initialised or has one process. Every process
    must pass the same N (use ``drop_last=True``).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)
