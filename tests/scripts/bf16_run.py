"""bf16 runs in a process of their own (accelerate keeps one mixed precision per process); used by test_train.

Usage: python bf16_run.py <idx_dir> <output_root>

Trains 2 joint steps with mixed_precision="bf16", then sets up a second Trainer whose config says "no" while the
launcher's environment says bf16, as under `accelerate launch --mixed_precision bf16`. Prints one JSON line.
"""

import json
import os
import sys
from pathlib import Path

os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"  # what `accelerate launch --mixed_precision bf16` sets

from sclearn.train import Trainer
from tests.test_train import read_metrics, tiny_config

idx_dir, root = Path(sys.argv[1]), Path(sys.argv[2])
cfg = tiny_config(idx_dir, root, mode="joint", mixed_precision="bf16", max_steps=2, epochs=1)
summary = Trainer(cfg).fit()
asked = tiny_config(idx_dir, root, mode="supervised", output_dir=str(root / "launched"))
launched = Trainer(asked)
launched.release_run_dir()
print(json.dumps({
    "global_steps": summary["global_steps"],
    "losses": [r["loss"] for r in read_metrics(Path(cfg.output_dir)) if "loss" in r],
    "asked": asked.mixed_precision,
    "effective": launched.config.mixed_precision,
    "recorded": json.loads((root / "launched" / "config.json").read_text())["mixed_precision"],
}))
