"""Named SC settings: the paper's exact choices, and the joint-training setting our ablation chose.

A preset is a dict of :class:`~sclearn.config.TrainConfig` fields for the SC loss and its weight. Recipes take
``--preset NAME``; explicit flags still win over it. In Python::

    from sclearn import TrainConfig
    from sclearn.presets import SC_PRESETS

    cfg = TrainConfig(data=..., mode="joint", **SC_PRESETS["tuned"])

``paper``  Hoffer et al. (2016): un-squared L2 between flattened patches, temperature 1, two patches per image
           at independent uniform positions, lambda 1 with no ramp. No patch size: the paper's is per dataset
           (the recipes set it: about 30% of the map area for CIFAR/STL, almost the whole map for MNIST).
           :func:`sclearn.losses.paper_loss` is the same loss as a module.
``tuned``  the best joint (CE + SC) setting of ``benchmarks/sc_ablation.py`` on Fashion-MNIST with the paper's
           MNIST net, chosen on a validation split: cosine distance at temperature 0.1 between mean-pooled
           patches of 0.43 of the map side (3 x 3 on a 7 x 7 map), lambda 0.1 ramped up over the first 20% of
           the steps. On that task the paper's setting was the worst joint setting measured (at init its SC term
           is several times the CE term and swamps it); this one is the least harmful SC term found, *not* a
           proven gain over supervised-only. The numbers, kept up to date, are in ``benchmarks/RESULTS.md``
           ("SC ablation"). Use it as the start of a search on your own validation split.
"""

from __future__ import annotations

from typing import Any

SC_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "distance": "l2",
        "temperature": 1.0,
        "pool": "flatten",
        "num_patches": 2,
        "min_offset": 0,
        "projector_dim": None,
        "sc_weight": 1.0,
        "sc_rampup_steps": 0,
    },
    "tuned": {
        "distance": "cosine",
        "temperature": 0.1,
        "pool": "mean",
        "patch_size": 0.43,
        "num_patches": 2,
        "min_offset": 0,
        "projector_dim": None,
        "sc_weight": 0.1,
        "sc_rampup_steps": 0.2,  # a fraction of the joint stage's steps
    },
}


def sc_preset(name: str) -> dict[str, Any]:
    """A copy of the named preset's TrainConfig fields; a ValueError lists the names when it is unknown."""
    if name not in SC_PRESETS:
        raise ValueError(f"unknown SC preset {name!r}; choose one of {sorted(SC_PRESETS)}")
    return dict(SC_PRESETS[name])
