"""The distance, pool and batch-size checks: one definition each, the same answer at every entry point."""

import pytest
import timm
import torch

from sclearn import (
    MultiLayerSC,
    SpatialContrastiveLoss,
    pairwise_distance,
    sample_patches,
    spatial_contrastive_loss,
)
from sclearn.config import TrainConfig
from sclearn.losses import DISTANCES, MIN_SC_BATCH
from sclearn.sampling import POOLS

BATCH_MESSAGE = (r"spatial contrasting needs at least 2 images per batch \(the other images are the contrasting "
                 r"samples\), got 1\. ")


def test_every_distance_and_pool_is_accepted_at_every_entry_point():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    for distance in DISTANCES:
        TrainConfig(distance=distance)
        SpatialContrastiveLoss(distance=distance)
        assert pairwise_distance(a, b, distance).shape == (3, 3)
    assert DISTANCES == ("l2", "sqeuclidean", "cosine")
    fmap = torch.randn(2, 4, 5, 5)
    for pool in POOLS:
        TrainConfig(pool=pool)
        SpatialContrastiveLoss(pool=pool)
        assert sample_patches(fmap, 3, pool=pool).shape == (2, 2, 4 * 9 if pool == "flatten" else 4)
    assert POOLS == ("flatten", "mean")


def test_an_unknown_distance_or_pool_is_refused_with_the_same_choices_everywhere():
    choices = str(DISTANCES).replace("(", r"\(").replace(")", r"\)")
    for build in (lambda: TrainConfig(distance="manhattan"), lambda: SpatialContrastiveLoss(distance="manhattan"),
                  lambda: pairwise_distance(torch.randn(2, 3), torch.randn(2, 3), "manhattan")):
        with pytest.raises(ValueError, match=f"'manhattan'.*{choices}"):
            build()
    with pytest.raises(ValueError, match=r"TrainConfig.pool='max' is not one of \('flatten', 'mean'\)"):
        TrainConfig(pool="max")
    for build in (lambda: SpatialContrastiveLoss(pool="max"), lambda: sample_patches(torch.randn(2, 4, 5, 5), 3,
                                                                                      pool="max")):
        with pytest.raises(ValueError, match="pool must be 'flatten' or 'mean', got 'max'"):
            build()


def test_a_single_image_batch_gets_one_message_with_a_fix_for_each_entry_point():
    assert MIN_SC_BATCH == 2
    with pytest.raises(ValueError, match=BATCH_MESSAGE + r"Set TrainConfig.pretrain_batch_size \(or batch_size\)"):
        TrainConfig(mode="pretrain", batch_size=1)
    with pytest.raises(ValueError, match=BATCH_MESSAGE + "Use drop_last=True in the DataLoader, or compute_sc=False"):
        MultiLayerSC(timm.create_model("resnet18"), layers=["layer3"])(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=BATCH_MESSAGE + "Use a batch size >= 2 and drop_last=True"):
        spatial_contrastive_loss(torch.randn(1, 4), torch.randn(1, 4))
    TrainConfig(mode="pretrain", batch_size=2)  # the smallest batch that contrasts
