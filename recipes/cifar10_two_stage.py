"""CIFAR-10 with 4000 labels, the paper's Table 2: SC pre-training on all 50k train images, fine-tune on 400/class.

    accelerate launch recipes/cifar10_two_stage.py               # uoft-cs/cifar10 from the HF hub
    python recipes/cifar10_two_stage.py --data parquet:/data/cifar10 --max-steps 20

Paper: 79.2% test accuracy with SC initialisation, 72.4% without. Net: Table 4's CIFAR-10 column, SC after the
second 2x2 max-pool + BN (``stages.1``), patches covering ~30% of the map.
"""

from _paper import CIFAR10, TWO_STAGE

from sclearn.cli import run_recipe

PAPER_DEFAULTS = dict(
    **CIFAR10,
    **TWO_STAGE,
    patch_size=0.55,  # 0.55^2 ~ 30% of the map area
    pretrain_epochs=50, epochs=50, batch_size=128,
    output_dir="runs/cifar10_two_stage",
)

if __name__ == "__main__":
    run_recipe(PAPER_DEFAULTS, __doc__.splitlines()[0])
