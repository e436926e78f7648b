"""A run left alone is safe: overwrite deletes only sclearn's own files, one writer per run dir, resume only
what matches, and broken checkpoints are named and skipped."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sclearn.checkpoint import list_checkpoints
from sclearn.rundir import (
    BrokenCheckpointError,
    BrokenCheckpointWarning,
    RunDirError,
    RunDirLock,
    RunDirLockedError,
    clear_run,
    resolve_resume,
)
from sclearn.train import Trainer
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
NO_DATA = "idx:/nonexistent/data"  # a Trainer that reaches data loading fails with a DataError instead


def new_run(tmp_path: Path, out, **overrides) -> Trainer:
    """A Trainer on `out` that fails at data loading if the run-dir checks let it get that far."""
    return Trainer(tiny_config(Path("/nonexistent"), tmp_path, output_dir=str(out), data=NO_DATA, **overrides))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, idx_dir) -> Path:
    """A finished 4-step supervised run with a checkpoint after every step (kept: steps 1, 2, 3, 4)."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = run_config(idx_dir, tmp / "run")
    Trainer(cfg).fit()
    assert [c.name.split("-step-")[1] for c in list_checkpoints(tmp / "run" / "checkpoints")] == ["1", "2", "3", "4"]
    return tmp / "run"


def run_config(idx_dir, out: Path, **overrides):
    base = dict(mode="supervised", max_steps=4, epochs=4, checkpoint_every=1, keep_checkpoints=5,
                output_dir=str(out))
    return tiny_config(idx_dir, out.parent, **{**base, **overrides})


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    config = json.loads((dest / "config.json").read_text())
    config["output_dir"] = str(dest)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "backbone.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert torch.equal(value, b[k]), k


# -- data loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [".", "..", "home", "/", "repo"])
def test_overwrite_refuses_the_cwd_its_parents_home_root_and_repositories(tmp_path, monkeypatch, target):
    work, home = tmp_path / "work", tmp_path / "elsewhere" / "home"
    (work / "repo" / ".git").mkdir(parents=True)
    home.mkdir(parents=True)
    folders = (tmp_path, work, work / "repo", home)
    for folder in folders:  # each looks like a run dir, so only the protection stops the deletion
        (folder / "config.json").write_text('{"mode": "supervised", "backbone": "x", "output_dir": "."}')
        (folder / "mine.txt").write_text("the user's")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    out = {"home": str(home), "repo": "repo"}.get(target, target)
    reason = {"home": "home directory", "repo": "holds a .git", "/": "filesystem root"}.get(target, "current directory")
    with pytest.raises(RunDirError, match=rf"refusing to overwrite .*{reason}"):
        new_run(tmp_path, out, overwrite=True)
    for folder in folders:
        assert (folder / "mine.txt").read_text() == "the user's" and (folder / "config.json").is_file()
        assert not (folder / ".sclearn.lock").exists()  # refused before anything was created


def test_recipe_overwrite_of_the_current_directory_deletes_nothing(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "notes.txt").write_text("keep me")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "cifar10_joint.py"), "--output-dir", ".",
                           "--overwrite", "--data", NO_DATA], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: refusing to overwrite '.'") and "Traceback" not in proc.stderr
    assert "--overwrite" in proc.stderr and "--output-dir" in proc.stderr  # CLI words, not overwrite=True
    assert (tmp_path / "notes.txt").read_text() == "keep me" and (tmp_path / ".git").is_dir()


def test_overwrite_deletes_only_sclearn_files_of_the_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "best-by-hand").mkdir()
    (run / "checkpoints" / "best-by-hand" / "w.pt").write_text("mine")
    (run / "sclearn" / "ab").mkdir(parents=True)  # TensorBoard's folder: event files are sclearn's, the rest not
    (run / "sclearn" / "ab" / "events.out.tfevents.1.host").write_text("tb")
    (run / "sclearn" / "my_plot.png").write_text("mine")
    deleted = clear_run(run)
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == [".sclearn.lock", "checkpoints", "checkpoints/best-by-hand", "checkpoints/best-by-hand/w.pt",
                    "notes.txt", "sclearn", "sclearn/my_plot.png"]
    assert {p.name for p in deleted} >= {"config.json", "metrics.jsonl", "summary.json", "backbone.safetensors",
                                        "split_indices.json", "ckpt-000000-step-1", "events.out.tfevents.1.host"}


def test_overwrite_through_the_trainer_replaces_the_run(finished_run, idx_dir, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    trainer = Trainer(run_config(idx_dir, run, overwrite=True, max_steps=1, epochs=1))
    assert list_checkpoints(run / "checkpoints") == [] and not (run / "summary.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    trainer.fit()
    assert json.loads((run / "summary.json").read_text())["global_steps"] == 1


def test_overwrite_refuses_a_folder_without_an_sclearn_run(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"learning_rate": 3}')  # the user's own config and log
    (folder / "metrics.jsonl").write_text('{"acc": 1}\n')
    with pytest.raises(RunDirError, match=r"no sclearn run .*will not delete them"):
        new_run(tmp_path, folder, overwrite=True)
    assert (folder / "config.json").read_text() == '{"learning_rate": 3}' and (folder / "metrics.jsonl").is_file()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "photo.png").write_text("mine")
    assert clear_run(plain) == [] and (plain / "photo.png").is_file()  # nothing of a run: nothing to delete


@pytest.mark.parametrize("marker", ["config.json", "metrics.jsonl", "summary.json", "backbone.safetensors",
                                    "checkpoints"])
def test_any_run_file_means_a_run_is_here(tmp_path, marker):
    out = tmp_path / "run"
    out.mkdir()
    if marker == "checkpoints":
        (out / marker).mkdir()  # e.g. a finished run whose checkpoints were pruned
    else:
        (out / marker).write_text("{}")
    with pytest.raises(RunDirError, match=rf"already holds a run \({marker}\)\. Pass resume=True .*overwrite=True"):
        new_run(tmp_path, out)
    assert (out / marker).exists() and not (out / "split_indices.json").exists()


def test_files_a_new_run_would_overwrite_are_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "training_curves.png").write_text("my own figure")
    with pytest.raises(RunDirError, match=re.escape(f"{out} holds ['training_curves.png'], which a new run would "
                                                    "overwrite; move them or choose another output_dir.")):
        new_run(tmp_path, out)
    assert (out / "training_curves.png").read_text() == "my own figure"


def test_a_failed_set_up_leaves_no_run_behind(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, freeze=("stage.0",))
    with pytest.raises(ValueError, match="freeze names modules"):
        Trainer(cfg)
    run = Path(cfg.output_dir)
    assert not [p.name for p in run.iterdir() if p.name != ".sclearn.lock"]  # config.json etc. removed again
    with pytest.raises(ValueError, match="freeze names modules"):  # the same command is not "a run is here"
        Trainer(cfg)


# -- one writer per run dir ------------------------------------------------------------------------
def test_second_trainer_on_a_locked_run_dir_fails_naming_the_holder(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1)
    first = Trainer(cfg)
    holder = re.escape(f"{cfg.output_dir} is in use by another sclearn run (PID {os.getpid()} on {socket.gethostname()})")
    with pytest.raises(RunDirLockedError, match=holder):
        Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1, resume=True))
    first.fit()  # fit releases the lock at its end
    Trainer(tiny_config(idx_dir, tmp_path, mode="supervised", max_steps=1, epochs=1, resume=True)).fit()


def test_a_second_process_fails_at_once_and_a_killed_holder_leaves_no_stale_lock(idx_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripts" / "train_until_done.py"), str(idx_dir),
                               str(out), "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert holder.poll() is None, holder.stderr.read()[-2000:]
        # The second writer: a recipe on the same dir. Its data source does not exist, so an error about the data
        # would mean it got past the lock; it must stop before loading anything.
        second = subprocess.run([sys.executable, str(ROOT / "recipes" / "cifar10_joint.py"), "--output-dir", str(out),
                                 "--resume", "--data", NO_DATA], check=False, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines() == [
            f"error: {out} is in use by another sclearn run (PID {holder.pid} on {socket.gethostname()}); one run dir "
            "takes one writer at a time. Wait for that run to finish (or stop it), or choose another --output-dir."]
        assert holder.poll() is None  # the first run is undisturbed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunDirLock(out).acquire().release()  # the OS dropped the dead holder's lock


# -- resume only what matches ----------------------------------------------------------------------
def test_resume_from_another_runs_checkpoint_is_checked_against_that_run(finished_run, idx_dir, tmp_path):
    mid = list_checkpoints(finished_run / "checkpoints")[1]  # after step 2
    other = run_config(idx_dir, tmp_path / "new", resume=str(mid), lr=0.2)
    with pytest.raises(RunDirError, match=r"refusing to resume .*step-2 with a different config:\n  lr: run has "
                                          r"0.05, now 0.2\n"):
        Trainer(other)
    assert not (tmp_path / "new" / "config.json").exists()
    # The same settings continue that run into the new dir, exactly.
    Trainer(run_config(idx_dir, tmp_path / "new", resume=str(mid))).fit()
    assert_same_weights(weights(tmp_path / "new"), weights(finished_run))
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["global_steps"] == 4
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "img_per_s"} for x in p.read_text().splitlines()]
    assert strip(tmp_path / "new" / "metrics.jsonl") == strip(finished_run / "metrics.jsonl")


def test_a_run_dir_as_resume_means_its_latest_checkpoint(finished_run, idx_dir, tmp_path):
    assert resolve_resume(str(finished_run), tmp_path / "elsewhere") == list_checkpoints(finished_run / "checkpoints")[-1]
    trainer = Trainer(run_config(idx_dir, tmp_path / "cont", resume=str(finished_run)))
    assert trainer.state.global_step == 4 and trainer.state.stage_index == 1  # nothing left to train
    trainer.fit()
    assert_same_weights(weights(tmp_path / "cont"), weights(finished_run))
    log = (tmp_path / "cont" / "metrics.jsonl").read_text()
    assert log == (finished_run / "metrics.jsonl").read_text()  # the run's log came along with it


def test_a_checkpoint_away_from_its_run_cannot_be_checked(finished_run, idx_dir, tmp_path):
    loose = tmp_path / "loose" / "ckpt-000001-step-2"
    shutil.copytree(list_checkpoints(finished_run / "checkpoints")[1], loose)
    with pytest.raises(RunDirError, match=re.escape(f"cannot tell which settings wrote {loose}: no config.json beside "
                                                    "it or in its run dir")):
        Trainer(run_config(idx_dir, tmp_path / "new", resume=str(loose)))


def test_resume_from_a_dir_without_checkpoints_says_where_it_looked(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"holds no checkpoint (looked in {empty / 'checkpoints'})")):
        new_run(tmp_path, tmp_path / "new", resume=str(empty))
    assert resolve_resume(True, empty) is None  # resume=True on its own dir: nothing yet, start fresh


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damaged", "damage", "problem"), [
    ("model.safetensors", truncate, "model.safetensors is truncated or corrupt"),
    ("optimizer.bin", truncate, "optimizer.bin is truncated or corrupt"),
    ("trainer_state.json", lambda p: p.write_text(""), "trainer_state.json is empty"),
])
def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one(finished_run, idx_dir, tmp_path, damaged, damage,
                                                                   problem):
    run = copy_run(finished_run, tmp_path / "run")
    ckpts = list_checkpoints(run / "checkpoints")
    damage(ckpts[-1] / damaged)
    # Named explicitly: an error that names the file, the checkpoint and the one to pass instead.
    named = re.escape(f"checkpoint {ckpts[-1]} is broken: {problem}")
    instead = re.escape(f"The previous intact checkpoint is {ckpts[-2]}: pass resume='{ckpts[-2]}'.")
    with pytest.raises(BrokenCheckpointError, match=rf"{named}.*{instead}"):
        Trainer(run_config(idx_dir, run, resume=str(ckpts[-1])))
    # resume=True: a warning that names them, then the previous checkpoint, and the run ends where it should.
    skipped = re.escape(f"{ckpts[-1].name}: {problem}")
    with pytest.warns(BrokenCheckpointWarning, match=rf"{skipped}.*resuming from the previous intact one, "
                                                     rf"{re.escape(str(ckpts[-2]))}$"):
        trainer = Trainer(run_config(idx_dir, run, resume=True))
    assert trainer.state.global_step == 3
    trainer.fit()
    assert_same_weights(weights(run), weights(finished_run))


def test_an_empty_run_config_is_named(finished_run, idx_dir, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "config.json").write_text("")
    with pytest.raises(RunDirError, match=re.escape(f"the run's config {run / 'config.json'} is empty")):
        Trainer(run_config(idx_dir, run, resume=True))
    assert (run / "config.json").read_text() == ""  # not rewritten


def test_every_checkpoint_broken_says_so(finished_run, idx_dir, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    for ckpt in list_checkpoints(run / "checkpoints"):
        (ckpt / "trainer_state.json").write_text("")
    with pytest.raises(BrokenCheckpointError, match=r"every checkpoint in .* is broken .*overwrite=True"):
        Trainer(run_config(idx_dir, run, resume=True))


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="pass one of them, not both"):
        new_run(tmp_path, tmp_path / "run", resume=True, overwrite=True)
