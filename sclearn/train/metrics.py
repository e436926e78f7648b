"""What a run logs: ``metrics.jsonl`` and accelerate's trackers (``MetricsLog``), and the running means between two
log lines (``LogWindow``).

One JSON record per line: a log window (``step``, ``stage``, ``epoch``, every loss term, ``lr``, ``img_per_s``, ...)
or an event (``"event": "epoch_end" | "stage_stopped" | "nonfinite_skipped"``). A resumed run first cuts what the
interrupted one logged after its checkpoint, so the log reads as that of an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

__all__ = ["LogWindow", "MetricsLog"]


class MetricsLog:
    """Appends records to ``path`` (main process) and to the accelerator's trackers (numbers only).

    Args:
        accelerator: Says which process writes and which trackers are on.
        path: ``<output_dir>/metrics.jsonl``.
    """

    def __init__(self, accelerator: Accelerator, path: str | Path) -> None:
        self.accelerator, self.path = accelerator, Path(path)

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                                 step=record["step"])

    def truncate_after(self, last_step: int) -> None:
        """Drop the records after ``last_step`` (what an interrupted run logged after its checkpoint), and a line
        cut short by a kill. ``last_step=-1`` drops everything."""
        if not (self.accelerator.is_main_process and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= last_step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))


class LogWindow:
    """Running sums of loss terms between two log lines, kept on the device: no host sync per step.

    Its clock measures the training loop only: restart it after work that is not training (a checkpoint
    write), or run that work inside :meth:`paused`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros(()))
        self.sums: dict[str, float] = {}
        self.count = 0  # micro-batches added on this process
        self.count_all = 0  # ... on all processes, known after means()
        self.images = 0
        self._start = time.perf_counter()

    def add(self, terms: dict[str, Tensor], n_images: int) -> None:
        """One micro-batch's loss terms (0-dim tensors) and its image count."""
        for k, v in terms.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k].to(v.device) + v
        self.count += 1
        self.images += n_images

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and over all processes, so every process logs and schedules alike."""
        keys = sorted(self._sums)
        if not keys:
            return {}
        packed = torch.stack([self._sums[k] for k in keys] + [torch.tensor(float(self.count)).to(self._sums[keys[0]])])
        if accelerator.num_processes > 1:
            packed = accelerator.reduce(packed, reduction="sum")
        values = packed.tolist()  # the one host sync of the window
        self.count_all = int(values[-1])
        self.sums = dict(zip(keys, values[:-1]))
        return {k: v / max(1, self.count_all) for k, v in self.sums.items()}

    def restart_clock(self) -> None:
        self._start = time.perf_counter()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (e.g. an evaluation between steps) does not count towards the window's clock."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start
