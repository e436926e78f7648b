"""STL-10, the paper's Table 1: SC pre-training on train + unlabelled (105k), fine-tune on the 5k train images.

    accelerate launch recipes/stl10_two_stage.py                 # jxie/stl10 from the HF hub
    python recipes/stl10_two_stage.py --data parquet:/data/stl10 --max-steps 20   # local copy, smoke run

Paper: 81.34% test accuracy with SC initialisation, 72.6% without. Net: Table 4's STL-10 column, SC after the
third block (``stages.2``), patches covering ~30% of the map, SGD lr 0.1 (SC) then 0.01 (fine-tune), lr / 10 on
plateau, small translations and horizontal flips.
"""

from _paper import TWO_STAGE

from sclearn.cli import run_recipe

PAPER_DEFAULTS = dict(
    data="jxie/stl10", protocol="stl10",
    image_size=96, channels=3, translate=6,  # ~6% of 96 px, the same fraction as 2 px on 32 px
    backbone="sc_stl10", layers=("stages.2",),
    **TWO_STAGE,
    patch_size=0.55,  # 0.55^2 ~ 30% of the map area
    pretrain_epochs=50, epochs=50, batch_size=64,  # the paper trains "until convergence"; plateau drops the lr
    output_dir="runs/stl10_two_stage",
)

if __name__ == "__main__":
    run_recipe(PAPER_DEFAULTS, __doc__.splitlines()[0])
