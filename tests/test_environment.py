"""What a user can ask about an install: the version, the environment report (`python -m pdcr_ext`,
`pdcr_ext.info()`), and `pdcr-seg` without its extra."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import pdcr_ext
from pdcr_ext import _ops
from pdcr_ext.environment import _covered

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def parse(report: str) -> dict:
    return {key.strip(): value for key, value in (line.split(" : ", 1) for line in report.splitlines())}


def test_one_version_for_the_distribution():
    import pdcr_seg

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", pdcr_ext.__version__)
    assert pdcr_seg.__version__ == pdcr_ext.__version__
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pdcr_ext._version.__version__"}


def test_info_prints_what_a_bug_report_needs():
    import torch

    out = io.StringIO()
    fields = pdcr_ext.info(file=out)
    report = parse(out.getvalue())
    assert report.keys() == fields.keys()
    assert report["pdcr_ext"] == pdcr_ext.__version__
    assert report["torch"] == torch.__version__
    assert report["torch CUDA"] == (torch.version.cuda or "none (CPU build)")
    assert report["devices"].startswith("cpu")
    if pdcr_ext.native_available:
        assert report["native library"] == f"loaded ({_ops._C.__file__})"
        assert report["CPU kernels"].startswith(_ops._C.cpu_isa() + " (this CPU: ")
        if pdcr_ext.has_cuda_kernels:  # the build recorded its architectures
            assert _ops._C.cuda_arch_list() and report["CUDA kernels"].startswith("built for ")
        else:
            assert report["CUDA kernels"] == "not built" and _ops._C.cuda_arch_list() == ""
    for index in range(torch.cuda.device_count()):
        assert f"cuda:{index} {torch.cuda.get_device_name(index)}" in report["devices"]


def test_python_m_pdcr_ext_names_a_forced_instruction_set():
    if not pdcr_ext.native_available:
        pytest.skip("extension not built")
    out = subprocess.run([sys.executable, "-m", "pdcr_ext"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PDCR_CPU_ISA": "baseline"})
    assert out.returncode == 0, out.stderr
    assert parse(out.stdout)["CPU kernels"].startswith("baseline (")
    assert "chosen by PDCR_CPU_ISA=baseline" in out.stdout


def test_report_keeps_the_import_error_of_the_native_library():
    out = python("import sys; sys.modules['pdcr_ext._C'] = None\nimport pdcr_ext; pdcr_ext.info()")
    assert out.returncode == 0, out.stderr
    report = parse(out.stdout)
    assert report["native library"].startswith("NOT loaded: ModuleNotFoundError(")
    assert "pdcr_ext._C" in report["native library"]
    assert report["CPU kernels"] == "none (the reference runs instead)"


@pytest.mark.parametrize("capability, archs, runs", [
    ((9, 0), ["8.0", "8.6", "9.0+PTX"], True),
    ((8, 9), ["8.0", "8.6"], True),          # sm_86 machine code runs on sm_89
    ((7, 5), ["8.0", "8.6", "9.0+PTX"], False),
    ((10, 0), ["8.0", "9.0+PTX"], True),     # PTX: compiled by the driver for later devices
    ((10, 0), ["8.0", "9.0"], False),
    ((9, 0), [], None),                      # not recorded
])
def test_which_devices_a_build_covers(capability, archs, runs):
    assert _covered(capability, archs) is runs


# pdcr-seg without the `seg` extra: yaml and monai hidden as in a plain `pip install pdcr_ext`.
HIDE_EXTRA = "import sys\nfor name in ('yaml', 'monai'):\n    sys.modules[name] = None\n"


@pytest.mark.parametrize("entry", [
    "from pdcr_seg.console import main\nsys.exit(main(['models']))",  # the pdcr-seg script
    "import runpy\nsys.argv = ['pdcr_seg', 'models']\nrunpy.run_module('pdcr_seg', run_name='__main__')",
])
def test_pdcr_seg_without_its_extra_says_what_to_install(entry):
    out = python(HIDE_EXTRA + entry)
    assert out.returncode == 2
    assert out.stderr.strip() == ('pdcr-seg needs the seg extra (missing: monai, pyyaml): '
                                  'pip install "pdcr_ext[seg]"')
    assert out.stdout == ""


def test_the_check_knows_every_distribution_of_the_seg_extra():
    from pdcr_seg.console import SEG_EXTRA_MODULES, missing_seg_modules

    extra = {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()
             for req in PYPROJECT["project"]["optional-dependencies"]["seg"]}
    assert set(SEG_EXTRA_MODULES) == extra
    assert missing_seg_modules() == []  # the test environment has the extra


def test_pdcr_seg_with_its_extra_runs_the_command():
    from pdcr_seg.console import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
