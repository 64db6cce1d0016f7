"""Build pdcr_ext._C, the native core of pdcr_ext.

C++ sources (csrc/ops.cpp, csrc/cpu/*.cpp) are always built. CUDA sources (csrc/cuda/*.cu) are
built when torch has CUDA and nvcc is found, or when FORCE_CUDA=1; PDCR_SKIP_CUDA=1 turns them off.
TORCH_CUDA_ARCH_LIST chooses the GPU targets (default: 8.0, 8.6, 9.0 and PTX); the list is recorded
in the library (`python -m pdcr_ext` reports it). MAX_JOBS limits the parallel compile jobs.
"""

import glob
import os
import platform
import re

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _flag("PDCR_SKIP_CUDA"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    import torch

    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(with_cuda: bool) -> list:
    cpu = sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if not X86:  # the AVX2 / AVX-512 copies of the kernels exist only for x86-64
        cpu = [s for s in cpu if not s.endswith(("_avx2.cpp", "_avx512.cpp"))]
    sources = [os.path.join(CSRC, "ops.cpp")] + cpu
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return sources


def _arch_list_flag() -> list:
    """TORCH_CUDA_ARCH_LIST as a C++ macro for the environment report: "8.0;9.0+PTX" ->
    -DPDCR_CUDA_ARCHS=8.0,9.0+PTX (commas: the value passes through a shell; ops.cpp turns the
    tokens back into a string). For the C++ compiler only: nvcc would split -D at the commas."""
    archs = ",".join(os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split())
    return [f"-DPDCR_CUDA_ARCHS={archs}"] if re.fullmatch(r"[0-9A-Za-z.+]+(,[0-9A-Za-z.+]+)*", archs) else []


def _extension():
    with_cuda = _want_cuda()
    cxx = ["-O3", "-ffp-contract=fast", "-Wno-psabi"]
    link = []
    if platform.system() == "Linux":
        # at::parallel_for is inline: without OpenMP in this build it would run serially. Compile
        # with OpenMP but do not link an OpenMP runtime: the GOMP symbols resolve to the one torch
        # already loaded (some torch wheels bundle libgomp under another name, and two OpenMP
        # runtimes in one process is a known source of crashes).
        cxx.append("-fopenmp")
    macros = []
    if X86:
        macros.append(("PDCR_HAVE_X86_KERNELS", None))
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;9.0+PTX")  # bf16 tensor cores need 8.0+
        macros.append(("PDCR_WITH_CUDA", None))
        cxx += _arch_list_flag()
        # no --use_fast_math: the kernels pick their fast intrinsics (__expf) where the accuracy
        # allows, and keep exact division, sqrt and log elsewhere
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "pdcr_ext._C",
            _sources(True),
            include_dirs=[os.path.join(ROOT, CSRC)],
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension(
        "pdcr_ext._C",
        _sources(False),
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
