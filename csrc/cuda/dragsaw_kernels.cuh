// dragsaw_kernels.cuh — the CUDA kernels of the dragsaw loss and their launchers, templated on
// the feature type. Included once per type by dragsaw_loss_<type>.cu (so that the types compile
// in parallel); dragsaw_loss.cu dispatches and registers. The algorithm is described in
// dragsaw_loss.cu.
#pragma once

#include <mma.h>
#include <torch/library.h>

#include <type_traits>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "cuda/dragsaw_cuda.h"
#include "cuda/dragsaw_layout.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace detail {

namespace m = ::pdcr::math;
namespace wmma = nvcuda::wmma;

constexpr int kThreadsPerRow = 4;  // threads sharing one row of a tile (a shuffle group)

// ---------------------------------------------------------------------------------------------
// Matrix products on shared memory: C[Mt x Nt] (+)= A[Mt x Kt] · B[Kt x Nt].
// A is row-major (A[r*lda + k]) or column-major (A[k*lda + r]); B likewise (B[k*ldb + c] or
// B[c*ldb + k]). Warps take 16x16 output tiles in turn.

template <typename In>
struct TensorCoreK;  // k-extent of one mma step
template <>
struct TensorCoreK<float> {
  static constexpr int value = 8;
};
template <>
struct TensorCoreK<__half> {
  static constexpr int value = 16;
};
template <>
struct TensorCoreK<__nv_bfloat16> {
  static constexpr int value = 16;
};

template <bool kRowMajor>
using wmma_layout = typename std::conditional<kRowMajor, wmma::row_major, wmma::col_major>::type;

template <typename In, bool kARow, bool kBRow>
struct MmaStep {  // bf16 / fp16: one product per step
  template <typename Frag>
  __device__ static void run(Frag& acc, const In* a, int lda, const In* b, int ldb) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma_layout<kARow>> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma_layout<kBRow>> fb;
    wmma::load_matrix_sync(fa, a, lda);
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
};

// hi = tf32(x), lo = tf32(x - hi) for every element of a loaded fragment (3xTF32).
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int e = 0; e < hi.num_elements; ++e) {
    const float x = hi.x[e];
    hi.x[e] = wmma::__float_to_tf32(x);
    lo.x[e] = wmma::__float_to_tf32(x - hi.x[e]);
  }
}

template <bool kARow, bool kBRow>
struct MmaStep<float, kARow, kBRow> {  // float32: 3xTF32, small products first
  template <typename Frag>
  __device__ static void run(Frag& acc, const float* a, int lda, const float* b, int ldb) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma_layout<kARow>> a_hi, a_lo;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma_layout<kBRow>> b_hi, b_lo;
    wmma::load_matrix_sync(a_hi, a, lda);
    wmma::load_matrix_sync(b_hi, b, ldb);
    split_tf32(a_hi, a_lo);
    split_tf32(b_hi, b_lo);
    wmma::mma_sync(acc, a_lo, b_hi, acc);
    wmma::mma_sync(acc, a_hi, b_lo, acc);
    wmma::mma_sync(acc, a_hi, b_hi, acc);
  }
};

template <typename In, bool kARow, bool kBRow>
__device__ void gemm_tensor_cores(int Mt, int Nt, int Kt, const In* A, int lda, const In* B,
                                  int ldb, float* C, int ldc, bool accumulate) {
  constexpr int kK = TensorCoreK<In>::value;
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int tiles_n = Nt / 16;
  for (int t = warp; t < (Mt / 16) * tiles_n; t += warps) {
    const int tm = t / tiles_n, tn = t % tiles_n;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc;
    float* c = C + tm * 16 * ldc + tn * 16;
    if (accumulate)
      wmma::load_matrix_sync(acc, c, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < Kt; k += kK) {
      const In* a = kARow ? A + tm * 16 * lda + k : A + k * lda + tm * 16;
      const In* b = kBRow ? B + k * ldb + tn * 16 : B + tn * 16 * ldb + k;
      MmaStep<In, kARow, kBRow>::run(acc, a, lda, b, ldb);
    }
    wmma::store_matrix_sync(c, acc, ldc, wmma::mem_row_major);
  }
}

template <typename T, bool kARow, bool kBRow>
__device__ void gemm_cuda_cores(int Mt, int Nt, int Kt, const T* A, int lda, const T* B, int ldb,
                                T* C, int ldc, bool accumulate) {
  for (int idx = threadIdx.x; idx < Mt * Nt; idx += blockDim.x) {
    const int r = idx / Nt, c = idx % Nt;
    T acc = accumulate ? C[r * ldc + c] : T(0);
    for (int k = 0; k < Kt; ++k)
      acc += (kARow ? A[r * lda + k] : A[k * lda + r]) * (kBRow ? B[k * ldb + c] : B[c * ldb + k]);
    C[r * ldc + c] = acc;
  }
}

template <typename In, bool kARow, bool kBRow>
__device__ __forceinline__ void gemm(int Mt, int Nt, int Kt, const In* A, int lda, const In* B,
                                     int ldb, acc_t<In>* C, int ldc, bool accumulate) {
  if constexpr (std::is_same<In, double>::value)
    gemm_cuda_cores<double, kARow, kBRow>(Mt, Nt, Kt, A, lda, B, ldb, C, ldc, accumulate);
  else
    gemm_tensor_cores<In, kARow, kBRow>(Mt, Nt, Kt, A, lda, B, ldb, C, ldc, accumulate);
}

// ---------------------------------------------------------------------------------------------
// Shared-memory layout of one block: dragsaw_layout.h (square tiles of T rows and T columns).

template <typename In>
struct FeatureTypeOf;
template <>
struct FeatureTypeOf<double> {
  static constexpr FeatureType value = FeatureType::kFloat64;
};
template <>
struct FeatureTypeOf<float> {
  static constexpr FeatureType value = FeatureType::kFloat32;
};
template <>
struct FeatureTypeOf<__half> {
  static constexpr FeatureType value = FeatureType::kFloat16;
};
template <>
struct FeatureTypeOf<__nv_bfloat16> {
  static constexpr FeatureType value = FeatureType::kBFloat16;
};

// The element sizes the layout assumes for the kernels of type In; G is stored as In.
template <typename In>
__host__ __device__ constexpr TileBytes tile_bytes_of() {
  constexpr TileBytes b = tile_bytes(FeatureTypeOf<In>::value);
  static_assert(b.feature == sizeof(In) && b.grad == sizeof(In) && b.acc == sizeof(acc_t<In>),
                "dragsaw_layout.h's tile sizes differ from the kernels' types");
  return b;
}

template <typename In>
__host__ __device__ inline Layout layout_of(int tile, int Cp, int P, int M, DragsawKernel kernel) {
  return Layout(tile, Cp, P, M, kernel, tile_bytes_of<In>());
}

// Typed pointers into one block's shared memory, as laid out by Layout.
template <typename In>
struct Tiles {
  using Acc = acc_t<In>;
  In *rows, *cols, *G;
  Acc *S, *acc, *acc2, *phi_rows, *phi_cols;
  __device__ Tiles(unsigned char* smem, const Layout& L)
      : rows(reinterpret_cast<In*>(smem + L.rows)),
        cols(reinterpret_cast<In*>(smem + L.cols)),
        G(reinterpret_cast<In*>(smem + L.g)),
        S(reinterpret_cast<Acc*>(smem + L.s)),
        acc(reinterpret_cast<Acc*>(smem + L.acc)),
        acc2(reinterpret_cast<Acc*>(smem + L.acc2)),
        phi_rows(reinterpret_cast<Acc*>(smem + L.phi_rows)),
        phi_cols(reinterpret_cast<Acc*>(smem + L.phi_cols)) {}
};

template <typename In>
struct Problem {
  using Acc = acc_t<In>;
  int64_t N, K;
  int C, Cp, P, M;
  const In* rows_hat;    // (B, N, Cp)
  const In* cols_hat;    // (B, K, Cp)
  const Acc* phi_rows;   // (B, P, N, M)
  const Acc* phi_cols;   // (B, P, K, M)
  Acc inv_tau;
};

// Copies T feature vectors starting at n0 into a tile (row stride ld), zero rows past `limit`.
// 16-byte chunks, four in flight per thread: Cp is a multiple of kFeatureAlign, so every row of
// the source and of the tile starts 16-byte aligned.
template <typename In>
__device__ void load_features(In* dst, int ld, const In* src, int64_t n0, int64_t limit, int T,
                              int Cp) {
  constexpr int kVec = 16 / int(sizeof(In));
  constexpr int kInFlight = 4;
  const int chunks_per_row = Cp / kVec, total = T * chunks_per_row;
  for (int base = threadIdx.x; base < total; base += kInFlight * blockDim.x) {
    uint4 chunk[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int idx = base + u * blockDim.x;
      const int r = idx / chunks_per_row, c = idx - r * chunks_per_row;
      chunk[u] = (idx < total && n0 + r < limit)
                     ? *reinterpret_cast<const uint4*>(src + (n0 + r) * Cp + c * kVec)
                     : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int idx = base + u * blockDim.x;
      const int r = idx / chunks_per_row, c = idx - r * chunks_per_row;
      if (idx < total) *reinterpret_cast<uint4*>(dst + r * ld + c * kVec) = chunk[u];
    }
  }
}

// Ratios of rows [n0, n0+T) as [r][k][m], or of columns as [k][m][j] (j contiguous).
template <typename Acc>
__device__ void load_phi_rows(Acc* dst, const Acc* src, int64_t b, int64_t n0, int64_t N, int T,
                              int P, int M) {
  for (int idx = threadIdx.x; idx < T * P * M; idx += blockDim.x) {
    const int r = idx / (P * M), k = (idx / M) % P, c = idx % M;
    dst[idx] = (n0 + r < N) ? src[((b * P + k) * N + n0 + r) * M + c] : Acc(0);
  }
}
template <typename Acc>
__device__ void load_phi_cols(Acc* dst, const Acc* src, int64_t b, int64_t j0, int64_t K, int T,
                              int P, int M) {
  for (int idx = threadIdx.x; idx < P * M * T; idx += blockDim.x) {
    const int k = idx / (M * T), c = (idx / T) % M, j = idx % T;
    dst[idx] = (j0 + j < K) ? src[((b * P + k) * K + j0 + j) * M + c] : Acc(0);
  }
}

// Affinities w_ij(k) (eq. 3) of tile row r with the thread's kCols columns
// j = lane + kThreadsPerRow * q, for one patch size k. Each class's row ratio is read once.
template <typename Acc, int kCols>
__device__ __forceinline__ void tile_affinities(const Acc* phi_rows_s, const Acc* phi_cols_s, int r,
                                                int lane, int k, int T, int P, int M, Acc inv_m,
                                                Acc (&w)[kCols]) {
#pragma unroll
  for (int q = 0; q < kCols; ++q) w[q] = 0;
  const Acc* phi_i = phi_rows_s + (r * P + k) * M;
  const Acc* phi_j = phi_cols_s + k * M * T + lane;
  for (int c = 0; c < M; ++c) {
    const Acc a = phi_i[c];
#pragma unroll
    for (int q = 0; q < kCols; ++q) w[q] = m::affinity_term(w[q], a, phi_j[c * T + kThreadsPerRow * q]);
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q) w[q] = m::affinity_finish(w[q], inv_m);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename In, int T>
__global__ void __launch_bounds__(T * kThreadsPerRow)
    dragsaw_forward_kernel(Problem<In> p, acc_t<In>* loss, acc_t<In>* lse) {
  using Acc = acc_t<In>;
  constexpr int kCols = T / kThreadsPerRow;  // columns of a tile per thread
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L = layout_of<In>(T, p.Cp, p.P, p.M, DragsawKernel::kForward);
  const Tiles<In> t(smem, L);
  In *rows_s = t.rows, *cols_s = t.cols;
  Acc *S = t.S, *phi_rows_s = t.phi_rows, *phi_cols_s = t.phi_cols;

  const int64_t b = blockIdx.y, i0 = int64_t(blockIdx.x) * T;
  const int r = threadIdx.x / kThreadsPerRow, lane_in_row = threadIdx.x % kThreadsPerRow;
  const Acc inv_m = Acc(1) / Acc(p.M);
  const Acc neg_inf = -INFINITY;

  load_features(rows_s, L.ld_feat, p.rows_hat + b * p.N * p.Cp, i0, p.N, T, p.Cp);
  load_phi_rows(phi_rows_s, p.phi_rows, b, i0, p.N, T, p.P, p.M);

  Acc run_max[kMaxP], run_sum[kMaxP], pull[kMaxP];
#pragma unroll
  for (int k = 0; k < kMaxP; ++k) {
    run_max[k] = neg_inf;
    run_sum[k] = 0;
    pull[k] = 0;
  }

  for (int64_t j0 = 0; j0 < p.K; j0 += T) {
    __syncthreads();  // the previous tile's readers are done
    load_features(cols_s, L.ld_feat, p.cols_hat + b * p.K * p.Cp, j0, p.K, T, p.Cp);
    load_phi_cols(phi_cols_s, p.phi_cols, b, j0, p.K, T, p.P, p.M);
    __syncthreads();
    gemm<In, true, false>(T, T, p.Cp, rows_s, L.ld_feat, cols_s, L.ld_feat, S, L.ld_s, false);
    __syncthreads();
    const int64_t valid = p.K - j0 < T ? p.K - j0 : T;
    Acc s[kCols];  // this thread's similarities, read once for every patch size
#pragma unroll
    for (int q = 0; q < kCols; ++q) s[q] = S[r * L.ld_s + lane_in_row + kThreadsPerRow * q];
#pragma unroll
    for (int k = 0; k < kMaxP; ++k) {
      if (k < p.P) {
        Acc x[kCols];
        tile_affinities(phi_rows_s, phi_cols_s, r, lane_in_row, k, T, p.P, p.M, inv_m, x);
        Acc local_max = neg_inf, local_pull = 0;
#pragma unroll
        for (int q = 0; q < kCols; ++q) {
          const int j = lane_in_row + kThreadsPerRow * q;
          const Acc w = x[q];
          local_pull += m::pull_term(s[q], w);  // padded columns have s = 0
          x[q] = j < valid ? m::push_logit(s[q], w, p.inv_tau) : neg_inf;
          local_max = x[q] > local_max ? x[q] : local_max;
        }
        const Acc new_max = m::lse_new_max(run_max[k], group_max(local_max, kThreadsPerRow));
        Acc local_sum = 0;
#pragma unroll
        for (int q = 0; q < kCols; ++q) local_sum += exp_nonpositive(x[q] - new_max);
        const Acc rescale = run_max[k] == neg_inf ? Acc(0) : exp_nonpositive(run_max[k] - new_max);
        run_sum[k] = run_sum[k] * rescale + group_sum(local_sum, kThreadsPerRow);
        run_max[k] = new_max;
        pull[k] += group_sum(local_pull, kThreadsPerRow);
      }
    }
  }
  if (lane_in_row == 0 && i0 + r < p.N) {
#pragma unroll
    for (int k = 0; k < kMaxP; ++k) {
      if (k < p.P) {
        const int64_t out = (b * p.P + k) * p.N + i0 + r;
        const Acc row_lse = run_max[k] + log(run_sum[k]);
        lse[out] = row_lse;
        loss[out] = m::row_loss(pull[k], row_lse, p.inv_tau, Acc(p.K));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

// G tile (eq. 9's gradient with respect to s, summed over patch sizes) from the S tile,
// accumulated in float32 (float64 for double) and written to shared memory in the kernel's type
// (the A operand of the next products; float16 features run the float32 kernels, so that their G
// is float32: dragsaw_layout.h, backward_kernel_type). Rows past N and columns past K get 0.
template <typename In, int T>
__device__ void gradient_tile(const Problem<In>& p, const acc_t<In>* S, int ld_s,
                              const acc_t<In>* phi_rows_s, const acc_t<In>* phi_cols_s,
                              const acc_t<In>* g_row, const acc_t<In>* lse_row, bool row_valid,
                              int64_t valid_cols, In* G, int ld_g) {
  using Acc = acc_t<In>;
  constexpr int kCols = T / kThreadsPerRow;
  const int r = threadIdx.x / kThreadsPerRow, lane_in_row = threadIdx.x % kThreadsPerRow;
  const Acc inv_m = Acc(1) / Acc(p.M), num_cols = Acc(p.K);
  Acc s[kCols], grad[kCols], w[kCols];
#pragma unroll
  for (int q = 0; q < kCols; ++q) {
    s[q] = S[r * ld_s + lane_in_row + kThreadsPerRow * q];
    grad[q] = 0;
  }
#pragma unroll
  for (int k = 0; k < kMaxP; ++k) {
    if (k < p.P) {
      tile_affinities(phi_rows_s, phi_cols_s, r, lane_in_row, k, T, p.P, p.M, inv_m, w);
#pragma unroll
      for (int q = 0; q < kCols; ++q) {
        const Acc prob = exp_nonpositive(m::push_logit(s[q], w[q], p.inv_tau) - lse_row[k]);
        grad[q] += m::pair_grad(w[q], prob, g_row[k], p.inv_tau, num_cols);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q) {
    const int j = lane_in_row + kThreadsPerRow * q;
    G[r * ld_g + j] = convert<In>(row_valid && j < valid_cols ? grad[q] : Acc(0));
  }
}

template <typename Acc>
__device__ void load_row_scalars(const Acc* grad, const Acc* lse, int64_t b, int64_t row, int64_t N,
                                 int P, Acc* g_row, Acc* lse_row) {
#pragma unroll
  for (int k = 0; k < kMaxP; ++k) {
    const bool ok = k < P && row < N;
    g_row[k] = ok ? grad[(b * P + k) * N + row] : Acc(0);
    lse_row[k] = ok ? lse[(b * P + k) * N + row] : Acc(0);
  }
}

// One block per (image, row tile): ∂L/∂v̂ of its rows; with kAtomicCols also adds the columns'
// share to d_cols_hat with atomicAdd.
template <typename In, int T, bool kAtomicCols>
__global__ void __launch_bounds__(T * kThreadsPerRow)
    dragsaw_backward_rows_kernel(Problem<In> p, const acc_t<In>* grad, const acc_t<In>* lse,
                                 acc_t<In>* d_rows_hat, acc_t<In>* d_cols_hat) {
  using Acc = acc_t<In>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L = layout_of<In>(T, p.Cp, p.P, p.M,
                                 kAtomicCols ? DragsawKernel::kBackwardAtomic : DragsawKernel::kBackwardSplit);
  const Tiles<In> t(smem, L);
  In *rows_s = t.rows, *cols_s = t.cols, *G = t.G;
  Acc *S = t.S, *d_rows_s = t.acc, *d_cols_s = t.acc2, *phi_rows_s = t.phi_rows,
      *phi_cols_s = t.phi_cols;

  const int64_t b = blockIdx.y, i0 = int64_t(blockIdx.x) * T;
  const int r = threadIdx.x / kThreadsPerRow;
  Acc g_row[kMaxP], lse_row[kMaxP];
  load_row_scalars(grad, lse, b, i0 + r, p.N, p.P, g_row, lse_row);
  load_features(rows_s, L.ld_feat, p.rows_hat + b * p.N * p.Cp, i0, p.N, T, p.Cp);
  load_phi_rows(phi_rows_s, p.phi_rows, b, i0, p.N, T, p.P, p.M);
  for (int idx = threadIdx.x; idx < T * L.ld_acc; idx += blockDim.x) d_rows_s[idx] = 0;

  for (int64_t j0 = 0; j0 < p.K; j0 += T) {
    __syncthreads();
    load_features(cols_s, L.ld_feat, p.cols_hat + b * p.K * p.Cp, j0, p.K, T, p.Cp);
    load_phi_cols(phi_cols_s, p.phi_cols, b, j0, p.K, T, p.P, p.M);
    __syncthreads();
    gemm<In, true, false>(T, T, p.Cp, rows_s, L.ld_feat, cols_s, L.ld_feat, S, L.ld_s, false);
    __syncthreads();
    const int64_t valid_cols = p.K - j0 < T ? p.K - j0 : T;
    gradient_tile<In, T>(p, S, L.ld_s, phi_rows_s, phi_cols_s, g_row, lse_row, i0 + r < p.N,
                         valid_cols, G, L.ld_g);
    __syncthreads();
    // ∂L/∂v̂_i += Σ_j G_ij v̂'_j
    gemm<In, true, true>(T, p.Cp, T, G, L.ld_g, cols_s, L.ld_feat, d_rows_s, L.ld_acc, true);
    if (kAtomicCols) {
      // ∂L/∂v̂'_j += Σ_i G_ij v̂_i, this row tile's share
      gemm<In, false, true>(T, p.Cp, T, G, L.ld_g, rows_s, L.ld_feat, d_cols_s, L.ld_acc, false);
      __syncthreads();
      for (int idx = threadIdx.x; idx < T * p.Cp; idx += blockDim.x) {
        const int j = idx / p.Cp, c = idx % p.Cp;
        if (j0 + j < p.K) atomicAdd(d_cols_hat + (b * p.K + j0 + j) * p.Cp + c, d_cols_s[j * L.ld_acc + c]);
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < T * p.Cp; idx += blockDim.x) {
    const int rr = idx / p.Cp, c = idx % p.Cp;
    if (i0 + rr < p.N) d_rows_hat[(b * p.N + i0 + rr) * p.Cp + c] = d_rows_s[rr * L.ld_acc + c];
  }
}

// One block per (image, column tile): ∂L/∂v̂' of its columns, streaming the row tiles.
template <typename In, int T>
__global__ void __launch_bounds__(T * kThreadsPerRow)
    dragsaw_backward_cols_kernel(Problem<In> p, const acc_t<In>* grad, const acc_t<In>* lse,
                                 acc_t<In>* d_cols_hat) {
  using Acc = acc_t<In>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L = layout_of<In>(T, p.Cp, p.P, p.M, DragsawKernel::kBackwardSplit);
  const Tiles<In> t(smem, L);
  In *rows_s = t.rows, *cols_s = t.cols, *G = t.G;
  Acc *S = t.S, *d_cols_s = t.acc, *phi_rows_s = t.phi_rows, *phi_cols_s = t.phi_cols;

  const int64_t b = blockIdx.y, j0 = int64_t(blockIdx.x) * T;
  const int r = threadIdx.x / kThreadsPerRow;
  load_features(cols_s, L.ld_feat, p.cols_hat + b * p.K * p.Cp, j0, p.K, T, p.Cp);
  load_phi_cols(phi_cols_s, p.phi_cols, b, j0, p.K, T, p.P, p.M);
  for (int idx = threadIdx.x; idx < T * L.ld_acc; idx += blockDim.x) d_cols_s[idx] = 0;
  const int64_t valid_cols = p.K - j0 < T ? p.K - j0 : T;

  for (int64_t i0 = 0; i0 < p.N; i0 += T) {
    __syncthreads();
    load_features(rows_s, L.ld_feat, p.rows_hat + b * p.N * p.Cp, i0, p.N, T, p.Cp);
    load_phi_rows(phi_rows_s, p.phi_rows, b, i0, p.N, T, p.P, p.M);
    Acc g_row[kMaxP], lse_row[kMaxP];
    load_row_scalars(grad, lse, b, i0 + r, p.N, p.P, g_row, lse_row);
    __syncthreads();
    gemm<In, true, false>(T, T, p.Cp, rows_s, L.ld_feat, cols_s, L.ld_feat, S, L.ld_s, false);
    __syncthreads();
    gradient_tile<In, T>(p, S, L.ld_s, phi_rows_s, phi_cols_s, g_row, lse_row, i0 + r < p.N,
                         valid_cols, G, L.ld_g);
    __syncthreads();
    // ∂L/∂v̂'_j += Σ_i G_ij v̂_i  (Gᵀ read as a column-major A)
    gemm<In, false, true>(T, p.Cp, T, G, L.ld_g, rows_s, L.ld_feat, d_cols_s, L.ld_acc, true);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < T * p.Cp; idx += blockDim.x) {
    const int j = idx / p.Cp, c = idx % p.Cp;
    if (j0 + j < p.K) d_cols_hat[(b * p.K + j0 + j) * p.Cp + c] = d_cols_s[j * L.ld_acc + c];
  }
}

// ---------------------------------------------------------------------------------------------
// Normalisation (eq. 8) and its backward: one warp per vector.

template <typename In>
__global__ void normalize_kernel(const In* x, int64_t count, int C, int Cp, In* x_hat,
                                 acc_t<In>* norm) {
  using Acc = acc_t<In>;
  const int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= count) return;
  Acc sq = 0;
  for (int c = lane; c < C; c += 32) {
    const Acc v = to_acc(x[n * C + c]);
    sq += v * v;
  }
  sq = group_sum(sq, 32);
  const Acc nrm = sqrt(sq);
  const Acc inv = Acc(1) / m::clamped_norm(nrm);
  for (int c = lane; c < Cp; c += 32)
    x_hat[n * Cp + c] = c < C ? convert<In>(to_acc(x[n * C + c]) * inv) : convert<In>(Acc(0));
  if (lane == 0) norm[n] = nrm;
}

template <typename In>
__global__ void normalize_backward_kernel(const acc_t<In>* d_hat, const In* x, const acc_t<In>* norm,
                                          int64_t count, int C, int Cp, In* d_x) {
  using Acc = acc_t<In>;
  const int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= count) return;
  const Acc inv_norm = Acc(1) / m::clamped_norm(norm[n]);
  const bool clamped = norm[n] < Acc(m::kNormEps);
  Acc dot = 0;
  for (int c = lane; c < C; c += 32) dot += d_hat[n * Cp + c] * to_acc(x[n * C + c]) * inv_norm;
  dot = group_sum(dot, 32);
  for (int c = lane; c < C; c += 32) {
    const Acc vhat = to_acc(x[n * C + c]) * inv_norm;
    d_x[n * C + c] = convert<In>(m::normalize_backward(d_hat[n * Cp + c], vhat, dot, inv_norm, clamped));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side

// Opt-in shared memory per block of the current device (cached per device).
inline int max_shared_memory() {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices || cached[device] == 0) {
    int bytes = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (device >= kMaxDevices) return bytes;
    cached[device] = bytes;
  }
  return cached[device];
}

// Lets `kKernel` use up to the device's opt-in shared memory (once per kernel and device).
template <auto kKernel>
void allow_shared_memory() {
  static uint64_t done = 0;  // one bit per device
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit != 0 && (done & bit)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      max_shared_memory()));
  done |= bit;
}

// The forward's tile: the largest of 64, 32, 16 rows whose shared memory fits. The Python wrapper
// (pdcr_ext/_cuda_route.py) sends a call here only when a backward fits too (the forward needs
// less); the check guards direct calls of torch.ops.pdcr.dragsaw_loss.
template <typename In>
int forward_tile(int Cp, int P, int M) {
  const int tile = choose_tile(max_shared_memory(), Cp, P, M, DragsawKernel::kForward, tile_bytes_of<In>());
  TORCH_CHECK(tile > 0, "dragsaw_loss: C=", Cp, " channels (padded) do not fit the CUDA kernel's "
              "shared memory even with 16-row tiles; call pdcr_ext.dragsaw_loss, which routes "
              "such widths to an exact path");
  return tile;
}

template <typename In>
struct Prepared {
  Problem<In> problem;
  at::Tensor rows, cols, rows_hat, cols_hat, row_norm, col_norm, phi_rows, phi_cols;
};

template <typename In>
Prepared<In> prepare(const at::Tensor& rows, const at::Tensor& phi_rows, const at::Tensor& cols,
                     const at::Tensor& phi_cols, double tau) {
  using Acc = acc_t<In>;
  const auto acc_dtype = std::is_same<Acc, double>::value ? at::kDouble : at::kFloat;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = rows.size(0), N = rows.size(1), K = cols.size(1);
  const int C = int(rows.size(2)), Cp = int(padded_channels(C));
  const bool single_layer = cols.is_same(rows);
  Prepared<In> out;
  out.rows = rows.contiguous();
  out.cols = single_layer ? out.rows : cols.contiguous();
  out.phi_rows = phi_rows.to(acc_dtype).contiguous();
  out.phi_cols = phi_cols.to(acc_dtype).contiguous();
  out.rows_hat = at::empty({B, N, Cp}, rows.options());
  out.row_norm = at::empty({B, N}, rows.options().dtype(acc_dtype));
  auto normalize = [&](const at::Tensor& x, at::Tensor& x_hat, at::Tensor& norm, int64_t count) {
    if (count == 0) return;
    normalize_kernel<In><<<ceil_div(count, 8), 256, 0, stream>>>(
        reinterpret_cast<const In*>(x.data_ptr()), count, C, Cp, reinterpret_cast<In*>(x_hat.data_ptr()),
        norm.template data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  normalize(out.rows, out.rows_hat, out.row_norm, B * N);
  if (single_layer) {
    out.cols_hat = out.rows_hat;
    out.col_norm = out.row_norm;
  } else {
    out.cols_hat = at::empty({B, K, Cp}, rows.options());
    out.col_norm = at::empty({B, K}, rows.options().dtype(acc_dtype));
    normalize(out.cols, out.cols_hat, out.col_norm, B * K);
  }
  Problem<In>& p = out.problem;
  p.N = N;
  p.K = K;
  p.C = C;
  p.Cp = Cp;
  p.P = int(phi_rows.size(1));
  p.M = int(phi_rows.size(3));
  p.rows_hat = reinterpret_cast<const In*>(out.rows_hat.data_ptr());
  p.cols_hat = reinterpret_cast<const In*>(out.cols_hat.data_ptr());
  p.phi_rows = out.phi_rows.template data_ptr<Acc>();
  p.phi_cols = out.phi_cols.template data_ptr<Acc>();
  p.inv_tau = Acc(1.0 / tau);
  return out;
}

template <typename In, int T>
void launch_forward(const Problem<In>& p, int64_t B, acc_t<In>* loss, acc_t<In>* lse) {
  const Layout L = layout_of<In>(T, p.Cp, p.P, p.M, DragsawKernel::kForward);
  auto kernel = dragsaw_forward_kernel<In, T>;
  allow_shared_memory<dragsaw_forward_kernel<In, T>>();
  const dim3 grid(unsigned(ceil_div(p.N, T)), unsigned(B));
  kernel<<<grid, T * kThreadsPerRow, L.total, at::cuda::getCurrentCUDAStream()>>>(p, loss, lse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename In, int T>
void launch_backward(const Problem<In>& p, int64_t B, const acc_t<In>* grad, const acc_t<In>* lse,
                     acc_t<In>* d_rows_hat, acc_t<In>* d_cols_hat, bool atomic) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (atomic) {
    const Layout L = layout_of<In>(T, p.Cp, p.P, p.M, DragsawKernel::kBackwardAtomic);
    auto kernel = dragsaw_backward_rows_kernel<In, T, true>;
    allow_shared_memory<dragsaw_backward_rows_kernel<In, T, true>>();
    kernel<<<dim3(unsigned(ceil_div(p.N, T)), unsigned(B)), T * kThreadsPerRow, L.total, stream>>>(
        p, grad, lse, d_rows_hat, d_cols_hat);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const Layout L = layout_of<In>(T, p.Cp, p.P, p.M, DragsawKernel::kBackwardSplit);
  auto rows_kernel = dragsaw_backward_rows_kernel<In, T, false>;
  allow_shared_memory<dragsaw_backward_rows_kernel<In, T, false>>();
  rows_kernel<<<dim3(unsigned(ceil_div(p.N, T)), unsigned(B)), T * kThreadsPerRow, L.total, stream>>>(
      p, grad, lse, d_rows_hat, d_cols_hat);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto cols_kernel = dragsaw_backward_cols_kernel<In, T>;
  allow_shared_memory<dragsaw_backward_cols_kernel<In, T>>();
  cols_kernel<<<dim3(unsigned(ceil_div(p.K, T)), unsigned(B)), T * kThreadsPerRow, L.total, stream>>>(
      p, grad, lse, d_cols_hat);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The backward kernels for feature type In: d_rows_hat (B, N, Cp) and d_cols_hat (B, K, Cp) in the
// accumulation type. The atomic kernel when it is the chosen variant (PDCR_CUDA_BACKWARD /
// set_cuda_backward, not under torch.use_deterministic_algorithms) and fits the device's shared
// memory, else the split kernels (dragsaw_layout.h: plan_backward). Returns the gradients of the
// normalised vectors.
template <typename In>
std::tuple<at::Tensor, at::Tensor> run_backward_kernels(const Problem<In>& p, int64_t B,
                                                        const at::Tensor& grad_acc,
                                                        const at::Tensor& lse_acc,
                                                        const at::TensorOptions& acc_options) {
  using Acc = acc_t<In>;
  const bool prefer_atomic =
      backward_variant_name() == "atomic" && !at::globalContext().deterministicAlgorithms();
  const BackwardPlan plan = plan_backward(max_shared_memory(), p.Cp, p.P, p.M, tile_bytes_of<In>(),
                                          prefer_atomic);
  TORCH_CHECK(plan.tile > 0, "dragsaw_loss_backward: C=", p.Cp, " channels (padded) do not fit "
              "the CUDA backward kernels' shared memory; call pdcr_ext.dragsaw_loss, which routes "
              "such widths to an exact path before the forward");
  const bool atomic = plan.kernel == DragsawKernel::kBackwardAtomic;
  at::Tensor d_rows_hat = at::empty({B, p.N, p.Cp}, acc_options);
  // atomics add into it: zeros; the split columns kernel writes every entry
  at::Tensor d_cols_hat = atomic ? at::zeros({B, p.K, p.Cp}, acc_options) : at::empty({B, p.K, p.Cp}, acc_options);
  const Acc* g = grad_acc.template data_ptr<Acc>();
  const Acc* l = lse_acc.template data_ptr<Acc>();
  Acc* dr = d_rows_hat.template data_ptr<Acc>();
  Acc* dc = d_cols_hat.template data_ptr<Acc>();
  switch (plan.tile) {
    case 64: launch_backward<In, 64>(p, B, g, l, dr, dc, atomic); break;
    case 32: launch_backward<In, 32>(p, B, g, l, dr, dc, atomic); break;
    default: launch_backward<In, 16>(p, B, g, l, dr, dc, atomic); break;
  }
  return {d_rows_hat, d_cols_hat};
}

// dragsaw_loss_f32.cu instantiates the float32 backward kernels; the float16 backward runs them.
extern template std::tuple<at::Tensor, at::Tensor> run_backward_kernels<float>(
    const Problem<float>&, int64_t, const at::Tensor&, const at::Tensor&, const at::TensorOptions&);

template <typename In>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& rows, const at::Tensor& phi_rows,
                                                const at::Tensor& cols, const at::Tensor& phi_cols,
                                                double tau) {
  using Acc = acc_t<In>;
  const auto acc_dtype = std::is_same<Acc, double>::value ? at::kDouble : at::kFloat;
  const int64_t B = rows.size(0), N = rows.size(1), P = phi_rows.size(1), K = cols.size(1);
  at::Tensor loss = at::empty({B, P, N}, rows.options().dtype(acc_dtype));
  at::Tensor lse = at::empty({B, P, N}, rows.options().dtype(acc_dtype));
  if (loss.numel() == 0) return {loss.to(dragsaw_output_dtype(rows)), lse};
  if (K == 0) {
    loss.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    return {loss.to(dragsaw_output_dtype(rows)), lse};
  }
  const Prepared<In> prep = prepare<In>(rows, phi_rows, cols, phi_cols, tau);
  const Problem<In>& p = prep.problem;
  switch (forward_tile<In>(p.Cp, p.P, p.M)) {
    case 64: launch_forward<In, 64>(p, B, loss.template data_ptr<Acc>(), lse.template data_ptr<Acc>()); break;
    case 32: launch_forward<In, 32>(p, B, loss.template data_ptr<Acc>(), lse.template data_ptr<Acc>()); break;
    default: launch_forward<In, 16>(p, B, loss.template data_ptr<Acc>(), lse.template data_ptr<Acc>()); break;
  }
  return {loss.to(dragsaw_output_dtype(rows)), lse};
}

template <typename In>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rows,
                                                 const at::Tensor& phi_rows, const at::Tensor& cols,
                                                 const at::Tensor& phi_cols, const at::Tensor& lse,
                                                 double tau) {
  using Acc = acc_t<In>;
  const auto acc_dtype = std::is_same<Acc, double>::value ? at::kDouble : at::kFloat;
  const int64_t B = rows.size(0), N = rows.size(1), K = cols.size(1);
  const int C = int(rows.size(2));
  if (B == 0 || N == 0 || K == 0) return {at::zeros_like(rows), at::zeros_like(cols)};
  // normalised exactly as in the forward (in the input type), so that S matches the saved LSE
  const Prepared<In> prep = prepare<In>(rows, phi_rows, cols, phi_cols, tau);
  const Problem<In>& p = prep.problem;
  const at::Tensor grad_acc = grad.to(acc_dtype).contiguous();
  const at::Tensor lse_acc = lse.to(acc_dtype).contiguous();
  const auto acc_options = rows.options().dtype(acc_dtype);
  at::Tensor d_rows_hat, d_cols_hat;
  if constexpr (backward_kernel_type(FeatureTypeOf<In>::value) == FeatureType::kFloat32 &&
                !std::is_same<In, float>::value) {
    // float16: G in float32 (dragsaw_layout.h: backward_kernel_type), by running the float32
    // kernels on float copies of the float16 normalised vectors (exact: every float16 is a
    // float32); their products are 3xTF32. The kernels are bound by the per-pair elementwise work,
    // not by the products (README, GPU section), so this costs the float16 backward little.
    const at::Tensor rows_hat = prep.rows_hat.to(at::kFloat);
    const at::Tensor cols_hat = prep.cols_hat.is_same(prep.rows_hat) ? rows_hat : prep.cols_hat.to(at::kFloat);
    Problem<float> q;
    q.N = p.N;
    q.K = p.K;
    q.C = p.C;
    q.Cp = p.Cp;
    q.P = p.P;
    q.M = p.M;
    q.rows_hat = rows_hat.data_ptr<float>();
    q.cols_hat = cols_hat.data_ptr<float>();
    q.phi_rows = p.phi_rows;
    q.phi_cols = p.phi_cols;
    q.inv_tau = p.inv_tau;
    std::tie(d_rows_hat, d_cols_hat) = run_backward_kernels<float>(q, B, grad_acc, lse_acc, acc_options);
  } else {
    std::tie(d_rows_hat, d_cols_hat) = run_backward_kernels<In>(p, B, grad_acc, lse_acc, acc_options);
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor grad_rows = at::empty({B, N, C}, rows.options());
  at::Tensor grad_cols = at::empty({B, K, C}, cols.options());
  normalize_backward_kernel<In><<<ceil_div(B * N, 8), 256, 0, stream>>>(
      d_rows_hat.template data_ptr<Acc>(), reinterpret_cast<const In*>(prep.rows.data_ptr()),
      prep.row_norm.template data_ptr<Acc>(), B * N, C, p.Cp, reinterpret_cast<In*>(grad_rows.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  normalize_backward_kernel<In><<<ceil_div(B * K, 8), 256, 0, stream>>>(
      d_cols_hat.template data_ptr<Acc>(), reinterpret_cast<const In*>(prep.cols.data_ptr()),
      prep.col_norm.template data_ptr<Acc>(), B * K, C, p.Cp, reinterpret_cast<In*>(grad_cols.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_rows, grad_cols};
}

}  // namespace detail

}  // namespace cuda
}  // namespace pdcr
