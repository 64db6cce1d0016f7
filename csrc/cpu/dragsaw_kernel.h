// dragsaw_kernel.h — interface between the CPU op (dragsaw_loss.cpp, which owns tensors, threads
// and checks) and the SIMD kernels (dragsaw_kernel_impl.h, compiled once per instruction set).
//
// Plain C++ only: no torch headers, so that the per-instruction-set copies share no inline code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "pdcr_math.h"

namespace pdcr {
namespace cpu {

// Padding unit, in bytes: feature widths and column tiles are padded to a multiple of it (one
// AVX-512 register, two AVX2 registers, four SSE or NEON registers), so every kernel copy can walk
// them in whole registers of its own width.
constexpr int64_t kVecBytes = 64;

template <typename T>
constexpr int64_t lanes() {
  return kVecBytes / static_cast<int64_t>(sizeof(T));
}

inline int64_t round_up(int64_t x, int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// Rows per tile and columns per tile. A tile's similarities (kRowTile x kColTile) and gradient
// coefficients stay in L1/L2; every patch size reuses the one similarity tile.
constexpr int64_t kRowTile = 16;
constexpr int64_t kColTile = 256;

// One problem, already prepared by the op: unit-normalised, zero-padded feature copies in the
// accumulation type T (float or double) and ratio copies laid out for the inner loops.
template <typename T>
struct DragsawProblem {
  int64_t B, N, K;  // images, rows, columns
  int64_t C, Cp;    // feature width, padded to a multiple of lanes<T>()
  int64_t Kp;       // columns padded to a multiple of lanes<T>()
  int64_t P, M;     // patch sizes, classes
  const T* rows_hat;    // (B, N, Cp)  v̂ of the rows
  const T* cols_hat;    // (B, K, Cp)  v̂' of the columns
  const T* cols_hat_t;  // (B, Cp, Kp) the same, transposed (similarity tiles broadcast rows)
  const T* phi_rows;    // (B, P, N, M)
  const T* phi_cols_t;  // (B, P, M, Kp) column ratios, class-major so the inner loop runs on j
  T inv_tau;
};

// Inputs and outputs of the preparation of one image (see prepare_image).
template <typename T>
struct PrepareArgs {
  const T* rows;      // (B, N, C) features, contiguous
  const T* cols;      // (B, K, C), or nullptr when the columns are the rows (single layer)
  const T* phi_cols;  // (B, P, K, M)
  T* rows_hat;        // (B, N, Cp) out
  T* row_norm;        // (B, N) out: ‖v‖
  T* cols_hat;        // (B, K, Cp) out (unused when cols is nullptr)
  T* col_norm;        // (B, K) out
};

// Fills rows_hat/row_norm, cols_hat/col_norm, cols_hat_t and phi_cols_t of image b.
template <typename T>
using PrepareFn = void (*)(const DragsawProblem<T>&, const PrepareArgs<T>&, int64_t b);

// Forward over rows [i0, i1) of image b: per-row loss ℓ_i(k) and LSE_i(k), each (B, P, N).
template <typename T>
using ForwardFn = void (*)(const DragsawProblem<T>&, int64_t b, int64_t i0, int64_t i1, T* loss,
                           T* lse);

// Backward over rows [i0, i1) of image b, given the upstream gradient (B, P, N) and the forward's
// LSE (B, P, N). Writes ∂L/∂v̂ for those rows into d_rows_hat (B, N, Cp) and adds the columns'
// ∂L/∂v̂' into d_cols_hat (K, Cp), a buffer owned by the caller's thread for image b.
template <typename T>
using BackwardFn = void (*)(const DragsawProblem<T>&, const T* grad, const T* lse, int64_t b,
                            int64_t i0, int64_t i1, T* d_rows_hat, T* d_cols_hat);

// ∂L/∂v (count, C) of vectors [n0, n1) from ∂L/∂v̂ (count, Cp), v̂ (count, Cp) and ‖v‖.
template <typename T>
using NormalizeBackwardFn = void (*)(const T* d_hat, const T* x_hat, const T* norm, int64_t n0,
                                     int64_t n1, int64_t C, int64_t Cp, T* d_x);

template <typename T>
struct Kernels {
  PrepareFn<T> prepare;
  ForwardFn<T> forward;
  BackwardFn<T> backward;
  NormalizeBackwardFn<T> normalize_backward;
};

struct KernelTable {
  const char* name;
  Kernels<float> f32;
  Kernels<double> f64;
};

// One table per instruction set this build compiled (defined in dragsaw_kernel_<isa>.cpp).
KernelTable kernels_baseline();
#if defined(PDCR_HAVE_X86_KERNELS)
KernelTable kernels_avx2();
KernelTable kernels_avx512();
#endif

}  // namespace cpu
}  // namespace pdcr
