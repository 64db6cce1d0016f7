"""Copies the results of one GPU check (benchmarks/gpu_check.sh) into benchmarks/results:

    make gpu-results FROM=runs/gpu-check/20261205-101500    # the run's folder, or
    make gpu-results FROM=gpu-check.tar.gz                   # the archive it wrote (ARCHIVE=...)

The benchmarks' JSON and Markdown (<machine>.json, uafr-<machine>.*, train-step-<machine>-amp.*,
volumes-<machine>.*) replace the previous measurements of that machine in benchmarks/results, the
files the README's tables cite (git keeps the earlier ones). Everything else of the run (summary,
logs, the tests' JUnit XML) goes to a new folder benchmarks/results/<machine>-logs/<run>/; an
existing one is never overwritten. Prints what it copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_folder(source: Path, scratch: Path) -> Path:
    """The run's results folder: `source` itself, or the one folder inside the archive."""
    if source.is_dir():
        return source
    with tarfile.open(source) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and 3.8-3.10 security releases)
            archive.extractall(scratch, filter="data")
        else:  # older patch releases (Debian 12's 3.11.2): refuse what the data filter refuses
            for member in archive.getmembers():
                target = (scratch / member.name).resolve()
                if not (member.isfile() or member.isdir()) or not target.is_relative_to(scratch.resolve()):
                    sys.exit(f"{source}: refusing {member.name!r} (not a plain file or folder inside the archive)")
            archive.extractall(scratch)
    folders = [p for p in scratch.iterdir() if p.is_dir()]
    if len(folders) != 1:
        sys.exit(f"{source}: expected one results folder in the archive, found {len(folders)}")
    return folders[0]


def copy_results(run: Path, results: Path) -> list[Path]:
    if not (run / "summary.txt").exists():
        sys.exit(f"{run} has no summary.txt: not the results of benchmarks/gpu_check.sh")
    machine_file = run / "machine.txt"
    machine = machine_file.read_text().strip() if machine_file.exists() else "gpu"
    logs = results / f"{machine}-logs" / run.name
    if logs.exists():
        sys.exit(f"{logs} exists already: this run was copied before (nothing changed)")
    copied = []
    logs.mkdir(parents=True)
    for path in sorted(run.iterdir()):
        if not path.is_file():
            continue
        is_measurement = path.suffix in (".json", ".md") and machine in path.name
        target = results / path.name if is_measurement else logs / path.name
        shutil.copy2(path, target)
        copied.append(target)
    return copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a gpu_check.sh results folder or its .tar.gz archive")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where the results go (default: benchmarks/results)")
    args = parser.parse_args()
    if not args.source.exists():
        sys.exit(f"{args.source} does not exist")
    with tempfile.TemporaryDirectory() as scratch:
        for path in copy_results(run_folder(args.source, Path(scratch)), args.results):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
