"""End a forward pass early from a forward hook, once everything needed has been computed.

A hook that has what it came for raises :class:`StopForward`; :func:`run_until_stopped` catches it, so the
layers after the hooked one never run (no compute, no batch-norm statistics updated). The feature probes
(:func:`sclearn.evaluation.extract_features`) and the SC-only forward of :class:`sclearn.MultiLayerSC`
both stop this way.

    def hook(module, inputs, output):
        store.append(output)
        raise StopForward(owner)

    run_until_stopped(owner, model, images)  # None if the hook stopped it, else model(images)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class StopForward(Exception):
    """Raised by a forward hook to skip the rest of the forward pass.

    Args:
        owner: Whoever catches it (see :func:`run_until_stopped`). A stop raised for another owner, e.g. a
            probe's hook inside a wrapper's forward, passes through to its own catcher.
    """

    @property
    def owner(self) -> object:
        return self.args[0]


def run_until_stopped(owner: object, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or None when a hook raised ``StopForward(owner)`` during the call."""
    try:
        return fn(*args, **kwargs)
    except StopForward as stop:
        if stop.owner is not owner:
            raise
        return None


__all__ = ["StopForward", "run_until_stopped"]
