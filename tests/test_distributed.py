"""Cross-process negatives: a 2-process gloo run equals one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from sclearn import MultiLayerSC, SpatialContrastiveLoss
from sclearn.distributed import all_gather_with_grad


def make_model() -> MultiLayerSC:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    # patch_size=1.0: the whole map, so no random patch positions differ between the two set-ups.
    return MultiLayerSC(net, layers=["2"], loss=SpatialContrastiveLoss(patch_size=1.0))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 5, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def step_loss(model, x, y, sc_only: bool = False):
    if sc_only:  # the SC-only forward stops after the hooked layer: the pool and the head never run
        out = model(x, return_logits=False)
        return out.sc_loss, out.sc_loss
    out = model(x)
    return nn.functional.cross_entropy(out.logits, y) + out.sc_loss, out.sc_loss


def grads_of(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, result_path: str, sc_only: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = make_model()
    model.loss_for("2").gather_fn = all_gather_with_grad
    ddp = DDP(model, find_unused_parameters=sc_only)  # as the Trainer does: SC alone leaves the head unused
    x, y = global_batch()
    n = x.shape[0] // world
    _, sc = step_loss(ddp, x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n], sc_only)
    loss, _ = step_loss(ddp, x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n], sc_only)
    loss.backward()
    if rank == 0:
        torch.save({"sc": sc.detach(), "grads": grads_of(model)}, result_path)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("sc_only", [False, True], ids=["joint", "sc_only"])
def test_gathered_negatives_equal_single_process(tmp_path, sc_only):
    result = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, free_port(), str(result), sc_only), nprocs=2, join=True)
    got = torch.load(result)

    model = make_model()
    x, y = global_batch()
    loss, sc = step_loss(model, x, y, sc_only)
    loss.backward()
    assert got["sc"].item() == pytest.approx(sc.item(), rel=1e-5)
    want = grads_of(model)
    assert (want["backbone.5.weight"] is None) == sc_only  # SC alone sends the head no gradient
    for k, g in want.items():
        if g is None:
            assert got["grads"][k] is None, k
        else:
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
