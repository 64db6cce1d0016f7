"""The source distribution builds: sdist -> wheel in a clean folder -> a fresh venv -> native ops.

An index serves the sdist wherever no wheel fits, and packaging recipes start from it, so it must
hold every file the build needs (MANIFEST.in). This test builds it from the checkout, unpacks it
into an empty folder, builds the wheel there with `pip wheel --no-build-isolation --no-deps` (the
README's install), installs the wheel into a new virtual environment and computes a loss and its
gradient natively there, compared with the reference. Slow: it compiles the extension (minutes on
2 cores); it is the check to run whenever setup.py, pyproject.toml, MANIFEST.in or the csrc/ files
change.

Which torch the fresh venv gets: the very torch this test runs with, seen through a .pth file that
adds this interpreter's site-packages behind the venv's own. Installing torch into the venv
instead would take a second copy (about 800 MB unpacked, a minute) from a local wheel where one
happens to lie on disk, and from an index otherwise, where `pip install torch==X` on Linux fetches
the CUDA build (several GB): slow, and a network dependency of the test suite. The .pth keeps the
test offline and the torch identical to the one the wheel was compiled against, which is what
"a wheel beside the user's torch" means; the venv's own site-packages comes first on its path, so
the installed pdcr_ext, not the checkout, is what imports (the test checks the paths).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# Builds without CUDA (a CPU torch has none to build, and a CUDA torch would spend many minutes on
# kernels that `make cuda-check` compiles anyway); the CUDA sources' presence in the sdist is
# checked file by file below. MAX_JOBS: ninja's parallel compile jobs, one per core.
BUILD_ENV = {"PDCR_SKIP_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 1)}

CHECK = r"""
import json, sys
import torch
import pdcr_ext, pdcr_reference
torch.manual_seed(0)
rows = torch.randn(3, 20, 12, dtype=torch.float64, requires_grad=True)
raw = torch.rand(3, 2, 20, 3, dtype=torch.float64)
phi = (raw / raw.sum(-1, keepdim=True))[..., :2]
native = pdcr_ext.dragsaw_loss(rows, phi, tau=0.5, reduction="sum", backend="native")
(grad_native,) = torch.autograd.grad(native, rows)
reference = pdcr_reference.dragsaw_row_loss(rows, phi, rows, phi, 0.5).sum()
(grad_reference,) = torch.autograd.grad(reference, rows)
labels = torch.randint(0, 3, (2, 9, 11))
boxes = torch.tensor([[0, 0, 4, 4], [2, 3, 8, 10], [-2, -2, 1, 1]])
ratios = pdcr_ext.foreground_ratios(labels, boxes, 3, backend="native")
ratios_ref = pdcr_ext.foreground_ratios(labels, boxes, 3, backend="reference")
print(json.dumps({
    "native_available": pdcr_ext.native_available,
    "version": pdcr_ext.__version__,
    "pdcr_ext": pdcr_ext.__file__,
    "library": pdcr_ext._ops._C.__file__,
    "torch": torch.__file__,
    "cpu_isa": pdcr_ext._ops._C.cpu_isa(),
    "loss": [native.item(), reference.item()],
    "grad_err": (grad_native - grad_reference).abs().max().item(),
    "ratios_err": (ratios - ratios_ref).abs().max().item(),
}))
"""


def run(cmd, cwd, env=None, timeout=1800):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def clean_env(**extra) -> dict:
    """This environment without the checkout on the path (PYTHONPATH), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def build_needs() -> set[str]:
    """Files of the checkout that a build from source needs: every C++/CUDA source and header,
    every module of the Python packages, the build configuration."""
    patterns = {"csrc": ("*.cpp", "*.h", "*.cu", "*.cuh"), "pdcr_ext": ("*.py",), "python": ("*.py",)}
    needs = {"setup.py", "pyproject.toml", "README.md"}
    for folder, globs in patterns.items():
        for pattern in globs:
            needs |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob(pattern)
                      if "__pycache__" not in p.parts}
    return needs


@pytest.mark.slow
def test_wheel_built_from_the_sdist_runs_natively_in_a_fresh_venv(tmp_path):
    # 1. The sdist, from the checkout (egg-info written to tmp, not into the checkout).
    dist = tmp_path / "dist"
    run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", tmp_path, "sdist", "--dist-dir", dist],
        cwd=ROOT, env=clean_env(**BUILD_ENV))
    (sdist,) = dist.glob("pdcr_ext-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        top = members[0].split("/")[0]
        contents = {name.split("/", 1)[1] for name in members if "/" in name}
        missing = sorted(build_needs() - contents)
        assert not missing, f"the sdist lacks files the build needs: {missing}"
        assert not [n for n in contents if n.endswith((".so", ".o", ".pyd"))], "built files in the sdist"
        # our own archive, just built; the data filter where this Python has it (>= 3.11.4)
        archive.extractall(tmp_path / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))

    # 2. The wheel, built in the unpacked sdist (a folder with nothing else in it).
    source = tmp_path / "src" / top
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
         "-w", wheels, source], cwd=tmp_path, env=clean_env(**BUILD_ENV))
    (wheel,) = wheels.glob("pdcr_ext-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert [n for n in names if n.startswith("pdcr_ext/_C") and n.endswith(".so")], names
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        assert "pdcr-seg = pdcr_seg.console:main" in entry_points

    # 3. A fresh venv beside this torch (see the module docstring), the wheel installed with its
    # dependencies checked against what is there (--no-index: nothing is fetched). Without a pip
    # of its own: the venv would get Python's bundled setuptools, older than torch requires; this
    # interpreter's pip (seen through the .pth) installs into the venv all the same.
    env_dir = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp_path)
    python = env_dir / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=tmp_path).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "beside_the_test_torch.pth").write_text("\n".join(sorted(ours)) + "\n")
    run([python, "-m", "pip", "install", "--no-index", wheel], cwd=tmp_path, env=clean_env())

    # 4. Native ops there, against the reference; the environment report; the console script.
    out = json.loads(run([python, "-c", CHECK], cwd=tmp_path, env=clean_env()).stdout.strip().splitlines()[-1])
    assert out["native_available"] is True
    assert Path(out["pdcr_ext"]).is_relative_to(env_dir), out["pdcr_ext"]
    assert Path(out["library"]).is_relative_to(env_dir), out["library"]
    assert Path(out["torch"]).resolve() == Path(torch.__file__).resolve()
    native, reference = out["loss"]
    assert abs(native - reference) <= 1e-9 * abs(reference)
    assert out["grad_err"] < 1e-9 and out["ratios_err"] == 0
    text = run([python, "-m", "pdcr_ext"], cwd=tmp_path, env=clean_env()).stdout
    report = dict(line.split(" : ", 1) for line in text.splitlines())
    report = {key.strip(): value for key, value in report.items()}
    assert report["pdcr_ext"] == out["version"] and report["native library"].startswith("loaded")
    assert report["CPU kernels"].startswith(out["cpu_isa"])
    run([env_dir / "bin" / "pdcr-seg", "--help"], cwd=tmp_path, env=clean_env())
