"""Run (or resume) a tiny joint training; used by the kill-and-resume test.

Usage: python train_until_done.py <idx_dir> <output_dir> <slow_save: 0|1> [<data_path> <num_workers>]

With slow_save=1 every checkpoint write pauses half-way (files written into the temporary dir, not yet
renamed), so that a SIGKILL sent at a random moment often lands inside a save.
"""

import sys
import time

from sclearn import checkpoint
from sclearn.config import TrainConfig
from sclearn.train import Trainer

idx_dir, output_dir, slow_save = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
data_path, num_workers = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else ("auto", 0)

if slow_save:
    real_replace = checkpoint.os.replace

    def slow_replace(src, dst):
        time.sleep(0.4)  # the temp dir is complete but not yet visible: a kill here must lose nothing
        real_replace(src, dst)

    checkpoint.os.replace = slow_replace

cfg = TrainConfig(
    data=f"idx:{idx_dir}", backbone="sc_mnist", layers=("stages.1",), channels=1, hflip=False, labels_per_class=5,
    batch_size=16, unlabeled_ratio=1.0, epochs=2, lr=0.05, patch_size=0.6, mode="joint", schedule="cosine",
    output_dir=output_dir, checkpoint_every=1, keep_checkpoints=2, log_every=1, report_to="none", progress=False,
    seed=0, resume=True, data_path=data_path, num_workers=num_workers,
)
Trainer(cfg).fit()
print("DONE", flush=True)
