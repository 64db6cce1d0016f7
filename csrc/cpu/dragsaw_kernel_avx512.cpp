// The dragsaw kernels compiled for the avx512 instruction set. dragsaw_loss.cpp picks at run time the
// best table the CPU supports. All code is in dragsaw_kernel_impl.h.
#include "cpu/dragsaw_kernel.h"
#if !defined(PDCR_HAVE_X86_KERNELS)
#error "x86 only"
#endif
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
#define PDCR_NATIVE_VEC_BYTES 64  // register width of this instruction set
#define PDCR_ISA avx512
#include "cpu/dragsaw_kernel_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace pdcr {
namespace cpu {

KernelTable kernels_avx512() {
  return {"avx512", avx512::kernels<float>(), avx512::kernels<double>()};
}

}  // namespace cpu
}  // namespace pdcr
