"""CIFAR-10 with 4000 labels, SC trained jointly with cross-entropy (the paper's proposed future work).

Each step draws a labelled and an unlabelled batch, runs one forward pass over both, and minimises
CE(labelled) + lambda * SC(all images). The SC settings are the ``tuned`` preset (sclearn/presets.py: cosine,
T 0.1, mean-pooled patches, lambda 0.1 ramped over the first 20% of the steps), the best joint setting of our
Fashion-MNIST ablation; ``--preset paper`` gives the paper's L2 loss with lambda 1, which was the worst there.

    accelerate launch recipes/cifar10_joint.py                    # uoft-cs/cifar10 from the HF hub
    python recipes/cifar10_joint.py --data idx:/usr/share/datasets/fashion-mnist --image-size 32 --no-hflip
    python recipes/cifar10_joint.py --mode supervised             # the CE-only baseline, same budget
"""

from _paper import CIFAR10

from sclearn.cli import run_recipe

PAPER_DEFAULTS = dict(
    **CIFAR10,
    mode="joint", preset="tuned", lr=0.1, schedule="cosine",
    epochs=30, batch_size=64, unlabeled_ratio=2.0,
    output_dir="runs/cifar10_joint",
)

if __name__ == "__main__":
    run_recipe(PAPER_DEFAULTS, __doc__.splitlines()[0])
