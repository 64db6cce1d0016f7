// The dragsaw kernels compiled for the baseline instruction set (whatever the compiler
// targets by default: SSE2 on x86-64, NEON on aarch64). dragsaw_loss.cpp picks at run time the
// best table the CPU supports. All code is in dragsaw_kernel_impl.h.
#include "cpu/dragsaw_kernel.h"

#define PDCR_NATIVE_VEC_BYTES 16  // register width of this instruction set
#define PDCR_ISA baseline
#include "cpu/dragsaw_kernel_impl.h"

namespace pdcr {
namespace cpu {

KernelTable kernels_baseline() {
  return {"baseline", baseline::kernels<float>(), baseline::kernels<double>()};
}

}  // namespace cpu
}  // namespace pdcr

