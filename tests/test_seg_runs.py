"""Run directories and --resume: no run is ever lost, and a stopped run continues exactly.

The kill test trains real `python -m pdcr_seg` processes: one uninterrupted, one killed with
SIGKILL in the middle of an epoch and then resumed: both summary.json must agree (losses, best
epoch, test metrics; only times and paths differ); a third is stopped with SIGINT (Ctrl-C) and
must say in one line how to resume. That a run stopped by Ctrl-C resumes exactly is tested in
the same process (with DataLoader workers), where Ctrl-C is raised at a chosen step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdcr_seg import rundir, train as train_module
from pdcr_seg.cli import main

# 24 training images, batches of 4: 6 steps an epoch; PDCR and UAFR on a UNet of width 4 at 32 px
TINY = ["--data", "synthetic", "--fraction", "0.25", "--model", "unet", "--width", "4", "--image-size", "32",
        "--batch-size", "4", "--overlays", "1", "--device", "cpu", "--pdcr", "--uafr"]

pytestmark = pytest.mark.usefixtures("one_thread")


def comparable(summary_path: Path) -> dict:
    """summary.json without what differs between two runs of the same settings: times, paths, ids."""
    summary = json.loads(summary_path.read_text())
    for key in ("run_id", "seconds_per_step"):
        summary.pop(key)
    summary["config"].pop("out")
    for epoch in summary["epochs"]:
        epoch.pop("seconds_per_step")
    return summary


def _as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as in a terminal where Ctrl-C reaches the program:
    a shell starts background jobs (`make test &`, CI runners) with SIGINT ignored, every child
    inherits that, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(out: Path, *extra: str, epochs: int = 3) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pdcr_seg", "train", *TINY, "--epochs", str(epochs), "--overlays", "0",
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_as_in_a_terminal)


def _stop_in_epoch_2(process: subprocess.Popen, sig: int) -> None:
    """Sends `sig` about one and a half steps into epoch 2 (timed by epoch 1's seconds per step)."""
    for line in process.stdout:
        if line.startswith("epoch 1/"):
            seconds_per_step = float(line.rsplit(",", 1)[1].split()[0])
            time.sleep(min(1.5 * seconds_per_step, 2.0))
            process.send_signal(sig)
            return
    raise AssertionError(f"the run ended before its first epoch: {process.stderr.read()[-500:]}")


@pytest.mark.slow
def test_a_killed_run_resumes_exactly_and_ctrl_c_says_how(tmp_path):
    runs = {name: tmp_path / name for name in ("whole", "killed", "ctrl_c")}
    # the Ctrl-C run has epochs to spare: its epoch-1 line may be read only after the killed run's
    # wait, and with 3 epochs of tiny steps it could have ended by then (seen on a loaded machine)
    whole, killed, ctrl_c = _start(runs["whole"]), _start(runs["killed"]), _start(runs["ctrl_c"], epochs=50)
    _stop_in_epoch_2(killed, signal.SIGKILL)
    _stop_in_epoch_2(ctrl_c, signal.SIGINT)
    for process in (whole, killed, ctrl_c):
        process.wait(timeout=300)
    assert whole.returncode == 0, whole.stderr.read()[-2000:]
    assert killed.returncode == -signal.SIGKILL
    # Ctrl-C: status 130 and one line saying how to continue (after the progress bar's last frame)
    err = ctrl_c.stderr.read()
    assert ctrl_c.returncode == 130, f"status {ctrl_c.returncode}; stdout: {ctrl_c.stdout.read()[-1500:]} stderr: {err[-1500:]}"
    assert "Traceback" not in err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("pdcr-seg train: interrupted in epoch ")
    assert last.endswith(f"; continue with: pdcr-seg train --resume --out {runs['ctrl_c']}")
    for name in ("killed", "ctrl_c"):
        run = runs[name]
        assert not (run / "summary.json").exists() and not list(run.glob(".*.tmp"))
        stopped_at = torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"]
        assert 1 <= stopped_at < (3 if name == "killed" else 50)  # after epoch 1's checkpoint, before the end
    resumed = subprocess.run([sys.executable, "-m", "pdcr_seg", "train", "--resume", "--out", str(runs["killed"])],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from checkpoint_last.pt" in resumed.stdout
    expected = comparable(runs["whole"] / "summary.json")
    assert len(expected["epochs"]) == 3 and expected["steps"] == 18
    assert comparable(runs["killed"] / "summary.json") == expected


def test_ctrl_c_with_loader_workers_resumes_exactly(tmp_path, monkeypatch, capsys):
    """With --workers the augmentation runs in worker processes, re-seeded every epoch from torch's
    generator (restored on resume): Ctrl-C in epoch 2, resume, and the run is the same."""
    args = [*TINY, "--epochs", "3", "--workers", "1", "--overlays", "0"]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    real_step, calls = train_module.train_step, []

    def step_then_ctrl_c(run, batch):
        calls.append(1)
        if len(calls) == 8:  # the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(run, batch)

    monkeypatch.setattr(train_module, "train_step", step_then_ctrl_c)
    assert main(["train", *args, "--out", str(tmp_path / "stopped")]) == 130
    assert "interrupted in epoch 2 of 3 (step 7)" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert main(["train", "--resume", "--out", str(tmp_path / "stopped")]) == 0
    assert comparable(tmp_path / "stopped" / "summary.json") == comparable(tmp_path / "whole" / "summary.json")


def test_a_run_is_replaced_only_when_asked_and_keeps_nothing_of_the_old_one(tmp_path, capsys):
    out = tmp_path / "run"
    quick = [*TINY, "--epochs", "1", "--max-steps", "1"]
    assert main(["train", *quick, "--overlays", "3", "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())
    (out / "notes.txt").write_text("mine")
    assert main(["eval", "--checkpoint", str(out / "checkpoint_best.pt"), "--out", str(out / "eval"),
                 "--device", "cpu", "--overlays", "0"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", *quick, "--seed", "1", "--out", str(out)]) == 2  # refused: nothing changes
    assert "not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["train", *quick, "--seed", "1", "--overlays", "1", "--out", str(out), "--overwrite"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["run_id"] != first["run_id"] and second["config"]["seed"] == 1
    assert len(list((out / "overlays").glob("*.png"))) == 1  # the old run's three are gone, not mixed in
    assert not (out / "eval").exists()  # the old model's evaluation went with it
    assert (out / "notes.txt").read_text() == "mine"  # not a run file: left alone
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        assert torch.load(out / name, weights_only=False)["run_id"] == second["run_id"]


def test_without_out_every_run_gets_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = [*TINY, "--epochs", "1", "--max-steps", "1", "--overlays", "0"]
    assert main(["train", *quick]) == 0
    assert main(["train", *quick]) == 0
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(f.name.endswith("-unet") for f in folders[:1])
    assert all((f / "summary.json").is_file() for f in folders)


def _folder_without_val_foreground(root: Path) -> str:
    """train/val/test folders whose validation masks are empty: validation Dice is undefined."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            if split != "val":
                mask[8:20, 10:24] = 255
            for sub, array in (("images", (rng.random((32, 32)) * 255).astype(np.uint8)), ("masks", mask)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / sub / f"{split}{i}.png")
    return f"folder:{root}"


def test_without_a_defined_validation_dice_the_test_uses_this_runs_latest_epoch(tmp_path):
    data = _folder_without_val_foreground(tmp_path / "data")
    args = ["--data", data, "--model", "unet", "--width", "4", "--image-size", "32", "--batch-size", "4",
            "--overlays", "0", "--device", "cpu", "--epochs", "2"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(np.isnan(e["val"]["dice"]) for e in summary["epochs"])
    assert summary["best_epoch"] == 1  # the latest, not the first epoch kept for ever
    best = torch.load(tmp_path / "run" / "checkpoint_best.pt", weights_only=False)
    assert best["run_id"] == summary["run_id"] and best["epoch"] == 2


def test_writes_are_atomic_and_stale_temporaries_go(tmp_path):
    target = tmp_path / "summary.json"
    rundir.write_text(target, "old")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not owner-only

    def fails(file):
        file.write(b"half of it")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir.atomic_write(target, fails)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    (tmp_path / ".checkpoint_last.pt.abc123.tmp").write_bytes(b"left by a SIGKILL")
    rundir.prepare(tmp_path, overwrite=False)
    assert not list(tmp_path.glob(".*.tmp")) and target.read_text() == "old"
