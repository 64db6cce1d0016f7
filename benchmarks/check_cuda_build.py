"""Checks a CUDA build of the extension without a GPU: the library loads and every pdcr op has a
CUDA kernel registered (used by `make cuda-check`)."""

import glob
import sys

import torch

OPS = ["rf_boxes", "foreground_ratios", "dragsaw_loss", "dragsaw_loss_backward", "uafr_reweight",
       "uafr_reweight_backward"]


def main(build_lib: str) -> int:
    libraries = glob.glob(f"{build_lib}/pdcr_ext/_C*.so")
    if not libraries:
        print(f"no built library under {build_lib}/pdcr_ext")
        return 1
    torch.ops.load_library(libraries[0])
    missing = [op for op in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pdcr::{op}", "CUDA")]
    for op in OPS:
        print(f"pdcr::{op:24s} CUDA kernel {'MISSING' if op in missing else 'registered'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/cuda-lib"))
