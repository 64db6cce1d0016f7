// dragsaw_loss.cu — CUDA implementation of pdcr::dragsaw_loss and its backward (eqs. 3, 8, 9).
//
// Flash-attention style, as the CPU kernels (DESIGN.md §2):
//   forward        one block per (image, row tile); column tiles of the normalised features are
//                  staged in shared memory; S = V̂_rows V̂_colsᵀ on tensor cores; every patch size
//                  reads the one S tile; per (row, size) a running Σ s·w and an online
//                  log-sum-exp, 4 threads per row reducing with warp shuffles. Saves only LSE.
//   backward rows  one block per (image, row tile): recompute S, G_ij = Σ_k ∂ℓ_i(k)/∂s_ij, and
//                  ∂L/∂v̂_rows += G V̂_cols, accumulated in shared memory.
//   backward       "atomic" (the default): the rows kernel also adds Gᵀ V̂_rows to the columns
//                  with atomicAdd. "split": a second kernel, one block per (image, column tile),
//                  recomputes S and G from the column side for ∂L/∂v̂_cols += Gᵀ V̂_rows: no
//                  atomics, deterministic, used under torch.use_deterministic_algorithms(True).
//                  Measured on an H200 the atomic backward is 1.3-1.4x faster (benchmarks/results).
//
// Matrix products: bf16/fp16 inputs on bf16/fp16 tensor cores with fp32 accumulation; float32
// inputs on TF32 tensor cores with the 3xTF32 split (a = a_hi + a_lo, three products), which keeps
// float32 accuracy; float64 (for gradcheck) on CUDA cores. The fp16 backward runs the float32
// kernels on float copies of the fp16 normalised vectors, so that G never leaves float32's range
// (dragsaw_layout.h). The per-element math is pdcr_math.h's; the shared-memory layout and the
// choice of tile and backward variant are dragsaw_layout.h's.
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "checks.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_common.cuh"
#include "cuda/dragsaw_cuda.h"

namespace pdcr {
namespace cuda {

// Backward variant for the column gradients (see above): "atomic" unless PDCR_CUDA_BACKWARD or
// set_backward_variant (cuda_api.h) chose "split".
namespace {
enum class BackwardVariant { kSplit, kAtomic };
BackwardVariant& backward_variant() {
  static BackwardVariant variant = [] {
    const char* env = std::getenv("PDCR_CUDA_BACKWARD");
    return (env != nullptr && std::strcmp(env, "split") == 0) ? BackwardVariant::kSplit
                                                                : BackwardVariant::kAtomic;
  }();
  return variant;
}
}  // namespace

std::string backward_variant_name() {
  return backward_variant() == BackwardVariant::kAtomic ? "atomic" : "split";
}

void set_backward_variant(const std::string& name) {
  TORCH_CHECK(name == "split" || name == "atomic",
              "set_cuda_backward: expected 'split' or 'atomic', got '", name, "'");
  backward_variant() = name == "atomic" ? BackwardVariant::kAtomic : BackwardVariant::kSplit;
}

namespace {

void check_cuda_limits(const at::Tensor& rows, const at::Tensor& phi_rows) {
  TORCH_CHECK(phi_rows.size(1) <= kMaxP, "dragsaw_loss: the CUDA kernels take at most ", kMaxP,
              " patch sizes (P) per call, got ", phi_rows.size(1), "; split the patch series");
  TORCH_CHECK(rows.size(0) <= 65535, "dragsaw_loss: at most 65535 images per call on CUDA");
}

#define PDCR_DISPATCH_FEATURE_TYPES(dtype, ...)                                      \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dragsaw_loss_cuda", [&] { \
    using In = typename DeviceType<scalar_t>::type;                                   \
    __VA_ARGS__                                                                       \
  })

std::tuple<at::Tensor, at::Tensor> dragsaw_loss_cuda(const at::Tensor& rows,
                                                     const at::Tensor& phi_rows,
                                                     const at::Tensor& cols,
                                                     const at::Tensor& phi_cols, double tau) {
  check_dragsaw_inputs(rows, phi_rows, cols, phi_cols, tau);
  check_cuda_limits(rows, phi_rows);
  const c10::cuda::CUDAGuard guard(rows.device());
  std::tuple<at::Tensor, at::Tensor> out;
  PDCR_DISPATCH_FEATURE_TYPES(rows.scalar_type(),
                              out = detail::forward_impl<In>(rows, phi_rows, cols, phi_cols, tau););
  return out;
}

std::tuple<at::Tensor, at::Tensor> dragsaw_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rows, const at::Tensor& phi_rows,
    const at::Tensor& cols, const at::Tensor& phi_cols, const at::Tensor& lse, double tau) {
  check_dragsaw_inputs(rows, phi_rows, cols, phi_cols, tau);
  check_dragsaw_backward_inputs(grad, rows, phi_rows, lse);
  check_cuda_limits(rows, phi_rows);
  const c10::cuda::CUDAGuard guard(rows.device());
  std::tuple<at::Tensor, at::Tensor> out;
  PDCR_DISPATCH_FEATURE_TYPES(
      rows.scalar_type(), out = detail::backward_impl<In>(grad, rows, phi_rows, cols, phi_cols, lse, tau););
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CUDA, m) {
  m.impl("dragsaw_loss", &dragsaw_loss_cuda);
  m.impl("dragsaw_loss_backward", &dragsaw_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace pdcr
