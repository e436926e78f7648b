"""Atomic, rotating checkpoints on top of ``Accelerator.save_state``.

A checkpoint is written into ``.tmp-<name>`` and renamed into place only once complete, so a kill at any
moment leaves every visible checkpoint whole. Names carry a sequence number: the latest is the highest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^ckpt-(\d{6})-step-(\d+)$")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    """The trainer's counters saved with a checkpoint."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not an sclearn checkpoint: {STATE_FILE} is missing")
    return json.loads(path.read_text())


class CheckpointManager:
    """Saves ``accelerator`` state plus trainer counters; keeps the newest ``keep``.

    Args:
        accelerator: Its ``save_state`` writes model, optimizers, registered objects and RNG states.
        directory: Where checkpoints live, e.g. ``<output_dir>/checkpoints``.
        keep: How many complete checkpoints to keep.
    """

    def __init__(self, accelerator: Accelerator, directory: str | Path, keep: int = 2) -> None:
        self.accelerator = accelerator
        self.directory = Path(directory)
        self.keep = max(1, keep)
        if accelerator.is_main_process:
            self.directory.mkdir(parents=True, exist_ok=True)
            for partial in self.directory.glob(".tmp-*"):  # left by a kill during a save
                shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()

    def latest(self) -> Path | None:
        found = list_checkpoints(self.directory)
        return found[-1] if found else None

    def save(self, trainer_state: dict[str, Any]) -> Path:
        """Write a checkpoint atomically and return its final path. Call on every process."""
        existing = list_checkpoints(self.directory)
        seq = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 0
        name = f"ckpt-{seq:06d}-step-{trainer_state['global_step']}"
        tmp, final = self.directory / f".tmp-{name}", self.directory / name
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=True)
        self.accelerator.wait_for_everyone()  # every process's RNG file is in tmp before it becomes visible
        if self.accelerator.is_main_process:
            state_path = tmp / STATE_FILE
            state_path.write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
            with open(state_path, "rb+") as f:  # flush before the rename makes it visible
                os.fsync(f.fileno())
            os.replace(tmp, final)
            for old in list_checkpoints(self.directory)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final
