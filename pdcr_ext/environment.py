"""The environment report: what a bug report needs (`python -m pdcr_ext` or `pdcr_ext.info()`).

Version, Python, torch and its CUDA, whether the native library loaded (and the import error when
it did not), the CPU kernels' instruction set, the CUDA architectures the library was built for,
and the devices torch sees, with whether the build has code for each.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from . import _ops
from ._version import __version__


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _arch(text: str) -> tuple[int, int] | None:
    """'8.6' or '9.0+PTX' or '9.0a' -> (8, 6); None for names torch also accepts ('Hopper')."""
    try:
        major, minor = text.split("+")[0].split(".")
        return int(major), int("".join(ch for ch in minor if ch.isdigit()))
    except ValueError:
        return None


def _covered(capability: tuple[int, int], archs: list[str]) -> bool | None:
    """Whether code built for `archs` runs on a device of `capability`: machine code (SASS) runs on
    the same major version at an equal or higher minor; PTX is compiled by the driver for any
    later device. None when the list is not known."""
    if not archs:
        return None
    for entry in archs:
        arch = _arch(entry)
        if arch is None:
            return None
        if arch[0] == capability[0] and arch[1] <= capability[1]:
            return True
        if entry.endswith("+PTX") and arch <= capability:
            return True
    return False


def environment() -> dict:
    """The report's fields as a dict (what `info()` prints)."""
    native = _ops.NATIVE
    lib = _ops._C
    # getattr: a library built before the list was recorded has no cuda_arch_list
    recorded = getattr(lib, "cuda_arch_list", lambda: "")() if native else ""
    archs = [a for a in recorded.split(",") if a]
    report = {
        "pdcr_ext": __version__,
        "location": str(Path(__file__).resolve().parent),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "CPU": f"{_cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "native library": f"loaded ({lib.__file__})" if native else f"NOT loaded: {_ops.IMPORT_ERROR!r}",
        "CPU kernels": None,
        "CUDA kernels": None,
        "devices": ["cpu"],
    }
    if native:
        forced = os.environ.get("PDCR_CPU_ISA")
        report["CPU kernels"] = (f"{lib.cpu_isa()} (this CPU: {', '.join(lib.available_cpu_isas())}"
                                 + (f"; chosen by PDCR_CPU_ISA={forced})" if forced else ")"))
        if not lib.has_cuda_kernels():
            report["CUDA kernels"] = "not built"
        else:
            report["CUDA kernels"] = "built for " + (", ".join(archs) if archs else "(architectures not recorded)")
    else:
        report["CPU kernels"] = "none (the reference runs instead)"
        report["CUDA kernels"] = "none"
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            capability = torch.cuda.get_device_capability(index)
            runs = _covered(capability, archs) if _ops.HAS_CUDA_KERNELS else False
            note = {True: "native kernels", False: "no native kernels for it",
                    None: "native kernels if built for it"}[runs]
            report["devices"].append(f"cuda:{index} {torch.cuda.get_device_name(index)}, "
                                     f"sm_{capability[0]}{capability[1]} ({note})")
    elif torch.version.cuda:
        report["devices"].append("no CUDA device visible to torch")
    return report


def info(file=None) -> dict:
    """Print the environment report (to `file`, default stdout) and return its fields.

    Paste its output into a bug report. From a shell: ``python -m pdcr_ext``.
    """
    report = environment()
    width = max(map(len, report))
    lines = [f"{key:<{width}} : {', '.join(value) if isinstance(value, list) else value}"
             for key, value in report.items()]
    print("\n".join(lines), file=file or sys.stdout)
    return report
