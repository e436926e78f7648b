"""The run directory: what counts as a run, one writer at a time, safe overwrite, and what a resume loads.

    lock = RunDirLock(out).acquire()             # the second process on `out` fails at once, naming the holder
    clear_run(out)                               # overwrite: only sclearn's own files of an sclearn run go
    ckpt = resolve_resume(True, out)             # the latest intact checkpoint (an older one, with a warning)
    check_resume_matches(config, ckpt, num_processes=1)   # the request against the run that wrote `ckpt`

The Trainer calls :func:`prepare_run_dir`, which does all of it in that order, on the main process only.
Any of :data:`RUN_MARKERS` in a directory means "a run is here": a new run refuses to start over it without
``resume`` or ``overwrite``. Errors are :class:`RunDirError` (a ``ValueError``) and name the file at fault.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open

from .checkpoint import STATE_FILE, list_checkpoints
from .config import TrainConfig

# Any of these means a run is here (a new run must not write over it).
RUN_MARKERS: tuple[str, ...] = ("config.json", "metrics.jsonl", "summary.json", "backbone.safetensors", "checkpoints")
# Every top-level file a run writes (and its temporary files): the only ones `clear_run` deletes.
RUN_FILES: tuple[str, ...] = (
    "config.json", "config.tmp", "metrics.jsonl", "summary.json", "split_indices.json",
    "backbone.safetensors", "backbone.json", "backbone.tmp",
    "pretrain_backbone.safetensors", "pretrain_backbone.json", "pretrain_backbone.tmp",
    "training_curves.png", "first_layer_filters.png", ".write-test", "command.json", "probe.json",
)
# The hub-format folder a run writes (sclearn.export); training_config.json marks it as sclearn's.
EXPORT_DIR = "export"
EXPORT_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "README.md", "training_config.json")
CHECKPOINTS_DIR = "checkpoints"
TRACKER_RUN_NAME = "sclearn"  # accelerate's TensorBoard tracker logs into <run dir>/<this>/
LOCK_FILE = ".sclearn.lock"
OWNER_FILE = ".sclearn.lock.owner"  # pid and host of the lock's holder, for the error message
_TB_EVENTS = "events.out.tfevents."


class RunDirError(ValueError):
    """The run dir cannot be used as asked: another writer, a run already there, a mismatched resume."""


class RunDirLockedError(RunDirError):
    """Another process holds the run dir's lock."""


class BrokenCheckpointError(RunDirError):
    """A checkpoint has a truncated, empty or missing file."""


class BrokenCheckpointWarning(UserWarning):
    """A broken checkpoint was skipped in favour of an older intact one."""


# -- one writer per run dir -------------------------------------------------------------------------
class RunDirLock:
    """An exclusive OS file lock on a run dir (``flock``): released by :meth:`release` or when the process dies,
    so a SIGKILL never leaves a stale lock.

    Args:
        run_dir: The directory to lock; it must exist.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK_FILE))

    def acquire(self) -> RunDirLock:
        """Take the lock without waiting; raise :class:`RunDirLockedError` naming the holder if it is taken."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunDirLockedError(
                f"{self.run_dir} is in use by another sclearn run ({self._holder()}); one run dir takes one "
                "writer at a time. Wait for that run to finish (or stop it), or choose another output_dir."
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        (self.run_dir / OWNER_FILE).write_text(json.dumps(owner) + "\n")
        return self

    def _holder(self) -> str:
        try:
            owner = json.loads((self.run_dir / OWNER_FILE).read_text())
            return f"PID {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):  # written a moment after the lock is taken
            return "PID unknown"

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            (self.run_dir / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()


# -- what is in a run dir ---------------------------------------------------------------------------
def run_markers(run_dir: str | Path) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``run_dir`` (``checkpoints/`` counts even when empty)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def run_dir_of(path: str | Path) -> Path | None:
    """The run dir holding ``config.json`` for a run dir, a file in it, or a checkpoint (``<run>/checkpoints/ckpt-…``)."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def read_run_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a run's ``config.json``; a :class:`RunDirError` names a broken file."""
    path = Path(path)
    try:
        text = path.read_text()
        values = json.loads(text)
    except (OSError, ValueError) as e:
        what = "empty" if path.is_file() and not path.stat().st_size else f"not readable JSON ({e})"
        raise RunDirError(
            f"the run's config {path} is {what}, so sclearn cannot check that this request matches that run. "
            "Restore the file from a copy, or start a new run (overwrite=True, or another output_dir)."
        ) from None
    if not _is_sclearn_config(values):
        keys = sorted(values)[:6] if isinstance(values, dict) else type(values).__name__
        raise RunDirError(f"{path} is not an sclearn config (keys {keys}): it was not written by sclearn. Point at "
                          "an sclearn run dir, or choose another output_dir.")
    return TrainConfig.from_dict(values)


def _is_sclearn_config(values) -> bool:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return isinstance(values, dict) and {"mode", "backbone", "output_dir"} <= set(values) <= fields


def _is_sclearn_run(run_dir: Path) -> bool:
    """True when ``run_dir`` was written by sclearn: its config.json is a TrainConfig, or (no config.json) its
    checkpoints/ holds sclearn checkpoints."""
    config = run_dir / "config.json"
    if config.exists():
        try:
            return _is_sclearn_config(json.loads(config.read_text()))
        except (OSError, ValueError):
            return False
    return any((c / STATE_FILE).is_file() for c in list_checkpoints(run_dir / CHECKPOINTS_DIR))


# -- overwrite --------------------------------------------------------------------------------------
def check_overwrite_target(run_dir: str | Path) -> None:
    """Refuse to overwrite ``/``, the home directory, the current directory or any parent of them, and any
    directory that holds a ``.git``."""
    target = Path(run_dir).expanduser().resolve()
    protected = [Path.cwd().resolve(), Path.home().resolve()]
    reason = None
    if target == Path(target.anchor):
        reason = "it is the filesystem root"
    elif any(p == target or target in p.parents for p in protected):
        reason = "it is the current directory, the home directory or a parent of them"
    elif (target / ".git").exists():
        reason = "it holds a .git repository"
    if reason:
        raise RunDirError(f"refusing to overwrite {str(run_dir)!r} ({target}): {reason}. overwrite=True deletes "
                          "a run dir's files; give a dedicated output_dir (e.g. runs/<name>).")


def clear_run(run_dir: str | Path) -> list[Path]:
    """Delete the sclearn run in ``run_dir``: only the files sclearn writes (:data:`RUN_FILES`, its
    checkpoints, its hub folder's files, its TensorBoard event files), never anything else. Returns what was deleted.

    Raises:
        RunDirError: ``run_dir`` is protected (see :func:`check_overwrite_target`), or it holds run files
            that sclearn did not write (e.g. your own config.json).
    """
    run_dir = Path(run_dir)
    check_overwrite_target(run_dir)
    found = [n for n in (*RUN_MARKERS, *RUN_FILES, TRACKER_RUN_NAME) if (run_dir / n).exists()]
    if not found:
        return []
    if not _is_sclearn_run(run_dir):
        raise RunDirError(
            f"{run_dir} holds {sorted(set(found))} but no sclearn run (its config.json was not written by sclearn), "
            "so overwrite=True will not delete them. Move those files, or choose another output_dir."
        )
    deleted = [run_dir / n for n in RUN_FILES if (run_dir / n).is_file()]
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        ours = [*list_checkpoints(checkpoints), *checkpoints.glob(".tmp-ckpt-*")]
        for ckpt in ours:
            shutil.rmtree(ckpt)
        deleted += ours
    export = run_dir / EXPORT_DIR
    if (export / EXPORT_FILES[-1]).is_file():
        deleted += [export / n for n in EXPORT_FILES if (export / n).is_file()]
    tracker = run_dir / TRACKER_RUN_NAME
    if tracker.is_dir():
        deleted += [p for p in tracker.rglob(f"{_TB_EVENTS}*") if p.is_file()]
    for path in deleted:
        if path.is_file():
            path.unlink()
    subfolders = sorted(tracker.rglob("*"), reverse=True) if tracker.is_dir() else []
    for folder in (checkpoints, export, *subfolders, tracker):
        if folder.is_dir() and not any(folder.iterdir()):  # kept when it still holds files of yours
            folder.rmdir()
    return deleted


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """What is wrong with a checkpoint (a missing, empty or truncated file), or None when it is intact.

    Cheap: reads safetensors headers and zip directories (``torch.save`` files), not the tensors.
    """
    ckpt = Path(checkpoint)
    for required in (STATE_FILE, "model.safetensors"):
        if not (ckpt / required).is_file():
            return f"{required} is missing"
    for path in sorted(ckpt.iterdir()):
        if not path.is_file():
            continue
        if path.stat().st_size == 0:
            return f"{path.name} is empty (0 bytes)"
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix in (".bin", ".pkl", ".pt"):
                with zipfile.ZipFile(path):  # torch.save's format; a cut file loses its central directory
                    pass
            elif path.suffix == ".json":
                state = json.loads(path.read_text())
                if path.name == STATE_FILE and not (isinstance(state, dict) and "global_step" in state):
                    return f"{path.name} holds no trainer state"
        except (SafetensorError, zipfile.BadZipFile, ValueError, OSError) as e:
            return f"{path.name} is truncated or corrupt ({type(e).__name__}: {e})"
    return None


def resolve_resume(resume: bool | str, run_dir: str | Path, *, warn: bool = True) -> Path | None:
    """The checkpoint a resume loads: ``resume=True`` or a run dir: its latest intact checkpoint; a checkpoint
    dir: that one. None when there is nothing to resume (``resume=True`` on a dir without checkpoints).

    A broken latest checkpoint of a run dir is skipped for the previous intact one, with a
    :class:`BrokenCheckpointWarning`; a broken checkpoint named explicitly raises, naming the one to pass.
    """
    if not resume:
        return None
    run_dir = Path(run_dir)
    source = run_dir if resume is True else Path(resume)
    if resume is not True and not source.exists():
        raise FileNotFoundError(f"resume={str(resume)!r} does not exist; give a run dir or a checkpoint dir "
                                f"(<run dir>/{CHECKPOINTS_DIR}/ckpt-…)")
    if resume is not True and ((source / STATE_FILE).exists() or source in list_checkpoints(source.parent)):
        problem = checkpoint_problem(source)
        if problem:
            older = [c for c in list_checkpoints(source.parent) if c.name < source.name]
            intact = next((c for c in reversed(older) if checkpoint_problem(c) is None), None)
            hint = f"The previous intact checkpoint is {intact}: pass resume={str(intact)!r}." if intact else \
                "No older intact checkpoint is left in its directory."
            raise BrokenCheckpointError(f"checkpoint {source} is broken: {problem}. {hint}")
        return source
    folder = source if source.name == CHECKPOINTS_DIR else source / CHECKPOINTS_DIR
    found = list_checkpoints(folder)
    if not found:
        if resume is True:
            return None
        raise FileNotFoundError(f"resume={str(resume)!r} holds no checkpoint (looked in {folder}); give a run dir "
                                f"with checkpoints or a checkpoint dir (<run dir>/{CHECKPOINTS_DIR}/ckpt-…)")
    broken = []
    for ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if broken and warn:
                skipped = "; ".join(f"{c.name}: {p}" for c, p in broken)
                warnings.warn(f"skipping broken checkpoint(s) in {folder} ({skipped}); resuming from the previous "
                              f"intact one, {ckpt}", BrokenCheckpointWarning, stacklevel=2)
            return ckpt
        broken.append((ckpt, problem))
    details = "; ".join(f"{c.name}: {p}" for c, p in broken)
    raise BrokenCheckpointError(f"every checkpoint in {folder} is broken ({details}); nothing intact is left to "
                                "resume. Start over with overwrite=True, or in another output_dir.")


def check_resume_matches(config: TrainConfig, checkpoint: Path | None, *, num_processes: int) -> None:
    """Refuse a resume whose settings differ from those of the run that wrote ``checkpoint`` (and from the run
    already in ``config.output_dir``), or whose process count differs from the checkpoint's."""
    out = Path(config.output_dir)
    configs: list[Path] = []
    if checkpoint is not None:
        writer = run_dir_of(checkpoint)
        if writer is None:
            raise RunDirError(
                f"cannot tell which settings wrote {checkpoint}: no config.json beside it or in its run dir "
                f"({checkpoint.parent.parent}). Resume from a checkpoint inside its run dir "
                f"(<run dir>/{CHECKPOINTS_DIR}/ckpt-…), or put that run's config.json back."
            )
        configs.append(writer / "config.json")
    if (out / "config.json").is_file():
        configs.append(out / "config.json")
    for path in dict.fromkeys(p.resolve() for p in configs):
        diff = config.diff(read_run_config(path))
        if diff:
            lines = "\n".join(f"  {k}: run has {old!r}, now {new!r}" for k, (new, old) in diff.items())
            target = checkpoint if checkpoint is not None else out
            raise RunDirError(
                f"refusing to resume {target} with a different config:\n{lines}\n"
                f"(the run's settings: {path}). Resume with the original settings, or start a new output_dir."
            )
    if checkpoint is not None:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        if saved.get("num_processes", 1) != num_processes:
            # Shards, batches per epoch and the position inside the epoch all depend on the process count.
            raise RunDirError(
                f"{checkpoint} was written by {saved.get('num_processes', 1)} process(es); resume it with the same "
                f"number (now {num_processes})"
            )


def _bring_log_along(writer: Path | None, out: Path) -> None:
    """Continuing another run in ``out``: its metrics log comes along (the Trainer cuts what follows the
    checkpoint), so the new dir holds the whole history."""
    log, here = (writer / "metrics.jsonl" if writer else None), out / "metrics.jsonl"
    if log is not None and log.is_file() and writer.resolve() != out.resolve() and not here.exists():
        shutil.copyfile(log, here)


# -- all of it, for the Trainer ---------------------------------------------------------------------
@dataclass
class PreparedRunDir:
    """What :func:`prepare_run_dir` leaves: the held lock, the checkpoint to resume from (or None), and the run
    files that were already there (the rest are this run's)."""

    lock: RunDirLock
    resume_from: Path | None
    existed: frozenset[str] = frozenset()

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """Set-up failed before training: remove the run files this run wrote (config.json, split indices, an
        empty checkpoints/), so that the fixed command can start again, then release the lock."""
        run_dir = self.lock.run_dir
        for name in set(RUN_FILES) - self.existed:
            (run_dir / name).unlink(missing_ok=True)
        checkpoints = run_dir / CHECKPOINTS_DIR
        if CHECKPOINTS_DIR not in self.existed and checkpoints.is_dir() and not any(checkpoints.iterdir()):
            checkpoints.rmdir()
        self.release()


def prepare_run_dir(config: TrainConfig, *, num_processes: int = 1,
                    log: Callable[[str], None] = print) -> PreparedRunDir:
    """Make ``config.output_dir`` ready for one run, on the main process, before any data is loaded.

    In order: refuse ``overwrite`` of a protected dir; create the dir and check that it is writable; take its
    lock; delete the old run (``overwrite``) or refuse to start over one (neither ``resume`` nor
    ``overwrite``); resolve the resume checkpoint and check that it matches; write ``config.json``.
    The lock stays held (release it with ``.lock.release()``) unless this raises.
    """
    out = Path(config.output_dir)
    if config.overwrite and config.resume:
        raise RunDirError("overwrite=True deletes the run that resume continues; pass one of them, not both")
    if config.overwrite:
        check_overwrite_target(out)  # before anything is created in it
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"output_dir {str(out)!r} is not writable ({e.strerror}); choose another "
                          "output_dir") from e
    lock = RunDirLock(out).acquire()
    existed = frozenset(n for n in (*RUN_FILES, CHECKPOINTS_DIR) if (out / n).exists())
    try:
        if config.overwrite:
            deleted = clear_run(out)
            if deleted:
                log(f"overwrite: deleted the previous run in {out} ({len(deleted)} files and checkpoints)")
        elif not config.resume:
            found = run_markers(out)
            if found:
                raise RunDirError(
                    f"{out} already holds a run ({', '.join(found)}). Pass resume=True to continue it, "
                    "overwrite=True to delete it and start again, or choose another output_dir."
                )
            clashes = [n for n in RUN_FILES if (out / n).exists()]
            if clashes:
                raise RunDirError(f"{out} holds {clashes}, which a new run would overwrite; move them or choose "
                                  "another output_dir.")
        resume_from = resolve_resume(config.resume, out)
        if config.resume:
            check_resume_matches(config, resume_from, num_processes=num_processes)
        if resume_from is not None:
            _bring_log_along(run_dir_of(resume_from), out)
        config.save(out / "config.json")
    except BaseException:
        lock.release()
        raise
    return PreparedRunDir(lock, resume_from, existed)


__all__ = [
    "RUN_FILES", "RUN_MARKERS", "BrokenCheckpointError", "BrokenCheckpointWarning", "PreparedRunDir", "RunDirError",
    "RunDirLock", "RunDirLockedError", "check_overwrite_target", "check_resume_matches", "checkpoint_problem",
    "clear_run", "prepare_run_dir", "read_run_config", "resolve_resume", "run_dir_of", "run_markers",
]
