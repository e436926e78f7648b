"""SC-only forward passes (``return_logits=False``) stop after the deepest hooked layer, and change nothing else."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import sclearn  # noqa: F401  registers sc_cifar10
from sclearn import MultiLayerSC, SpatialContrastiveLoss
from sclearn.hooks import StopForward, run_until_stopped


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def count_calls(net: nn.Module, names: list[str]) -> Counter:
    """Counts the forward calls of the named modules (pre-hooks: they fire even if the call is cut short)."""
    calls: Counter = Counter()
    modules = dict(net.named_modules())
    for name in names:
        modules[name].register_forward_pre_hook(lambda m, i, name=name: calls.update([name]))
    return calls


@pytest.mark.parametrize("layers", [["layer2", "layer3"], ["layer3", "layer2"]])
def test_nothing_after_the_deepest_hooked_layer_runs(images, layers):
    net = timm.create_model("resnet18", num_classes=10)
    calls = count_calls(net, ["layer3", "layer4", "global_pool", "fc"])
    model = MultiLayerSC(net, layers=layers)
    out = model(images, return_logits=False)
    assert set(out.sc_losses) == {"layer2", "layer3"} and out.logits is None
    assert calls == {"layer3": 1}  # the order of `layers` does not matter: layer3 runs last
    model(images)
    assert calls == {"layer3": 2, "layer4": 1, "global_pool": 1, "fc": 1}


def test_batch_norm_statistics_of_layers_not_reached_stay_untouched(images):
    net = timm.create_model("resnet18", num_classes=10)
    model = MultiLayerSC(net, layers=["layer3"]).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    model(images, return_logits=False)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("bn1", "layer1", "layer2", "layer3")) for k in changed)
    assert not any(k.startswith("layer4") for k in changed)
    assert after["layer3.1.bn2.num_batches_tracked"] == 1
    model(images)  # the full forward does update layer4: the check above can fail
    assert after["layer4.1.bn2.num_batches_tracked"] == 1


@pytest.mark.parametrize("backbone, layers", [("resnet18", ["layer2", "layer3"]), ("sc_cifar10", None)])
def test_losses_and_gradients_equal_those_of_the_full_forward(images, backbone, layers):
    torch.manual_seed(0)
    net = timm.create_model(backbone, num_classes=10)
    model = MultiLayerSC(net, layers=layers or [net.sc_layer], loss=SpatialContrastiveLoss(0.5, distance="cosine"))

    def sc_step(**kwargs) -> tuple[dict[str, float], dict[str, torch.Tensor | None]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same patch positions in both passes
        out = model(images, **kwargs)
        out.sc_loss.backward()
        grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
        return {k: v.item() for k, v in out.sc_losses.items()}, grads

    full_losses, full_grads = sc_step()
    losses, grads = sc_step(return_logits=False)
    assert losses == pytest.approx(full_losses, rel=1e-6) and all(v > 0 for v in losses.values())
    assert any(g is None for g in grads.values())  # the head gets no gradient either way
    for k, g in full_grads.items():
        if g is None:
            assert grads[k] is None, k
        else:
            torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=1e-7, msg=k)


def test_hooked_layer_that_never_runs_is_still_an_error():
    class SkipsTail(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.body(x)

    model = MultiLayerSC(SkipsTail(), layers=["body", "unused"])
    with pytest.raises(RuntimeError, match=r"\['unused'\] did not run"):
        model(torch.randn(2, 3, 8, 8), return_logits=False)
    assert model._state.stop_when_done == set() and model._state.capturing == set()


def test_a_stop_for_another_owner_passes_through():
    mine, theirs = object(), object()

    def stops(owner):
        raise StopForward(owner)

    assert run_until_stopped(mine, stops, mine) is None
    assert run_until_stopped(mine, lambda v: v + 1, 1) == 2
    with pytest.raises(StopForward) as info:
        run_until_stopped(mine, stops, theirs)
    assert info.value.owner is theirs


def test_benchmark_smoke_reports_both_ratios():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "benchmarks/early_stop.py", "--smoke", "--cases", "resnet18_32"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = json.loads(proc.stdout)["results"]
    assert result["layer"] == "layer3" and result["rounds"]["used"] == 2
    for key in ("early_over_stem", "full_over_early"):
        assert result[key]["n"] == 2 and result[key]["median"] > 0
    assert set(result["ms_per_step"]) == {"early", "stem", "full"}
    # Work, not time: the early stop computes exactly the hand-written stem, and less than the full forward.
    assert result["flops_early_over_stem"] == 1.0 and result["flops_full_over_early"] > 1.05
