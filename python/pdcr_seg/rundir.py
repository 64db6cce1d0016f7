"""Where a command writes, and the rules that keep every earlier run intact.

A training run owns one folder (`--out`, default a new ``runs/<date>-<time>-<model>``):

- A new run needs a new or empty folder. A folder that holds anything is refused, in one line,
  unless ``--resume`` (continue the run in it) or ``--overwrite`` (replace it: the files a run
  writes, RUN_FILES and RUN_FOLDERS, are removed; anything else in the folder is left alone).
- Nothing is written, and nothing removed, before the run has checked its settings, its data
  and its model (`prepare` is the first call that touches the folder).
- Every file is written atomically: into a temporary file beside it, then renamed over it, so
  that a kill at any moment leaves the old file or the new one, never half of one. A
  temporary file orphaned by a kill (``.NAME.*.tmp``) is removed the next time a run prepares
  the folder.

`pdcr-seg eval` and `predict` follow the same rule for their ``--out`` (`check_output_folder`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .config import ConfigError

RUN_FILES = ("config.yaml", "checkpoint_last.pt", "checkpoint_best.pt", "summary.json", "progress.png")
RUN_FOLDERS = ("overlays", "eval")  # eval/: where README's `pdcr-seg eval --out RUN/eval` writes
RUNS_ROOT = Path("runs")
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: files get the usual permissions, not mkstemp's owner-only 0600


def new_run_folder(model: str, root: Path = RUNS_ROOT) -> Path:
    """A folder name no run has used: root/<YYYYmmdd-HHMMSS>-<model>[-2, -3, ...]."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{model.replace('/', '_')}"
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return path


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def check_output_folder(folder: Path, *, option: str = "--out", overwrite: bool = False) -> None:
    """ConfigError unless `folder` is new, empty, or `overwrite` is given; never a file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file, not a folder")
    if folder.is_dir() and not overwrite:
        entries = _entries(folder)
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise ConfigError(f"{option} {folder} is not empty ({shown}); choose a new folder, or add --overwrite "
                              "to replace what is there")


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """The rules for a training run's folder, checked before anything is read or written."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if resume:
        if not out.is_dir():
            raise ConfigError(f"--resume: there is no run in {out} (no such folder)")
        if not (out / "checkpoint_last.pt").is_file():
            raise ConfigError(f"--resume: {out} has no checkpoint_last.pt (the run stopped before its first epoch "
                              f"ended); start it again with --overwrite --out {out}")
        return
    check_output_folder(out, overwrite=overwrite)


def prepare(out: Path, *, overwrite: bool) -> None:
    """Creates the run folder; with `overwrite`, first removes the files of the run there. Call it
    only once the new run has checked everything it can check."""
    if out.is_dir():
        clean_temporaries(out)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                shutil.rmtree(out / name, ignore_errors=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)


def clean_temporaries(folder: Path) -> None:
    """Removes temporary files a killed write left behind (``.NAME.*.tmp``)."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Calls `write(file)` on a temporary file in `path`'s folder, then renames it to `path`.

    On any exception, KeyboardInterrupt included, the temporary file is removed and `path` is
    untouched; the data reach the disk (fsync) before the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    atomic_write(path, lambda file: torch.save(state, file))


__all__ = ["RUN_FILES", "RUN_FOLDERS", "new_run_folder", "check_output_folder", "check_run_folder", "prepare",
           "clean_temporaries", "atomic_write", "write_text", "save_checkpoint"]
