"""Checks a CUDA build of the extension without a GPU: the library loads, every pdcr op has a
CUDA kernel registered, and the library records the architectures it was built for (used by
`make cuda-check`: check_cuda_build.py BUILD_LIB "TORCH_CUDA_ARCH_LIST")."""

import glob
import importlib.util
import sys

import torch

OPS = ["rf_boxes", "foreground_ratios", "dragsaw_loss", "dragsaw_loss_backward", "uafr_reweight",
       "uafr_reweight_backward"]


def recorded_archs(library: str) -> str:
    """What the environment report shows as the build's CUDA architectures."""
    spec = importlib.util.spec_from_file_location("pdcr_ext._C", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cuda_arch_list()


def main(build_lib: str, arch_list: str = "") -> int:
    libraries = glob.glob(f"{build_lib}/pdcr_ext/_C*.so")
    if not libraries:
        print(f"no built library under {build_lib}/pdcr_ext")
        return 1
    torch.ops.load_library(libraries[0])
    missing = [op for op in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pdcr::{op}", "CUDA")]
    for op in OPS:
        print(f"pdcr::{op:24s} CUDA kernel {'MISSING' if op in missing else 'registered'}")
    recorded = recorded_archs(libraries[0])
    expected = ",".join(arch_list.replace(";", " ").split())
    print(f"CUDA architectures recorded: {recorded or '(none)'}")
    wrong = bool(expected) and recorded != expected
    if wrong:
        print(f"expected {expected}")
    return 1 if missing or wrong else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]) if len(sys.argv) > 1 else main("build/cuda-lib"))
