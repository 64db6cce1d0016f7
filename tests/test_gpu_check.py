"""The GPU check (benchmarks/gpu_check.sh) as a dry run on the CPU, so that the script that runs on
a GPU machine cannot rot here: its steps, their logs and summary, the test selection it uses, the
benchmark options it passes, and the command that copies its results into benchmarks/results.
Also the collection rule the GPU image needs: a test module that imports a missing optional
package is skipped, not a collection error."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["environment", "build", "diagnosis", "cuda-tests", "cuda-raises", "bench-ops", "bench-uafr",
         "bench-train-step", "bench-volumes", "suite"]


@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_step_and_its_results_copy(tmp_path):
    results = tmp_path / "run-1"
    diagnose = tmp_path / "diagnose.sh"
    diagnose.write_text("echo facts\n")
    env = dict(os.environ, DRY_RUN="1", RESULTS=str(results), PYTHON=sys.executable,
               DIAGNOSE=str(diagnose), ARCHIVE=str(tmp_path / "gpu-check.tar.gz"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (results / "summary.txt").read_text()
    lines = {line.split()[0]: line.split()[1] for line in summary.splitlines()}
    assert list(lines) == STEPS, summary
    assert lines["environment"] == "passed"
    assert all(status == "skipped" for step, status in lines.items() if step != "environment"), summary
    for step in STEPS:
        assert (results / f"{step}.log").exists(), step
    environment = (results / "environment.log").read_text()
    assert "torch" in environment and "monai" in environment and "xdist" in environment
    assert "setup.py build_ext --inplace" in (results / "build.log").read_text()
    # the crash-prone tests are selected by their marker, the others collected
    raising = (results / "cuda-raises-list.log").read_text()
    assert "test_cuda.py::test_too_many_patch_sizes_is_an_error" in raising
    assert "test_cuda.py::test_float16_kernel_gradients_do_not_underflow" not in raising
    assert "deselected" in (results / "cuda-tests.log").read_text()  # the others, run together
    assert "not found" not in summary  # every benchmark script and option exists
    again = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, text=True,
                           capture_output=True, timeout=60)
    assert again.returncode == 2 and "earlier run's results" in again.stderr  # never overwritten
    # one command copies the run (from its archive) into a results folder
    with tarfile.open(tmp_path / "gpu-check.tar.gz") as archive:
        assert "run-1/summary.txt" in archive.getnames()
    destination = tmp_path / "benchmarks-results"
    destination.mkdir()
    copy = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_results.py"),
                           str(tmp_path / "gpu-check.tar.gz"), "--results", str(destination)],
                          text=True, capture_output=True, timeout=60)
    assert copy.returncode == 0, copy.stdout + copy.stderr
    machine = (results / "machine.txt").read_text().strip()
    assert (destination / f"{machine}-logs" / "run-1" / "summary.txt").exists()
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_results.py"),
                            str(results), "--results", str(destination)], text=True, capture_output=True)
    assert again.returncode != 0 and "exists already" in again.stderr  # never overwritten


def test_gpu_results_puts_measurements_beside_the_others_and_logs_apart(tmp_path):
    run = tmp_path / "20261205-101500"
    run.mkdir()
    for name in ("summary.txt", "build.log", "cuda-tests.xml", "nvidia-h200.json", "nvidia-h200.md",
                 "uafr-nvidia-h200.json", "train-step-nvidia-h200-amp.md"):
        (run / name).write_text(name)
    (run / "machine.txt").write_text("nvidia-h200\n")
    destination = tmp_path / "results"
    destination.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_results.py"), str(run),
                           "--results", str(destination)], text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in destination.iterdir() if p.is_file()) == [
        "nvidia-h200.json", "nvidia-h200.md", "train-step-nvidia-h200-amp.md", "uafr-nvidia-h200.json"]
    logs = destination / "nvidia-h200-logs" / "20261205-101500"
    assert sorted(p.name for p in logs.iterdir()) == ["build.log", "cuda-tests.xml", "machine.txt", "summary.txt"]


def test_a_test_module_needing_a_missing_optional_package_is_skipped_not_an_error(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_needs_monai.py").write_text(
        "import sys\nsys.modules['monai'] = None  # as if not installed\n"
        "import monai.networks\n\ndef test_x():\n    pass\n")
    (tmp_path / "test_broken.py").write_text("import not_an_optional_package_xyz\n")
    (tmp_path / "test_fine.py").write_text("def test_y():\n    pass\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "python"), str(ROOT / "tests")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q",
                           "--continue-on-collection-errors",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          env=env, text=True, capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "needs 'monai', which is not installed" in out, out
    summary = out.strip().splitlines()[-1]
    for part in ("1 passed", "1 skipped", "1 error"):  # another missing module stays an error
        assert part in summary, out
