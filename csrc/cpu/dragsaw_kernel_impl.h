// dragsaw_kernel_impl.h — the fused, streaming dragsaw loss on the CPU (eqs. 8, 3, 9).
//
// Included once per instruction set by dragsaw_kernel_<isa>.cpp, inside that file's target
// pragma, with PDCR_ISA naming the namespace. No include guard on purpose; no includes either:
// everything it needs comes from dragsaw_kernel.h, included before the target pragma.
//
// The loops are written on GCC/Clang vector types of one register, so one source becomes
// AVX-512, AVX2 or SSE/NEON code depending on the target it is compiled for. The per-element math
// is pdcr_math.h's, the same functions the CUDA kernels call.
//
// Algorithm (flash-attention style; DESIGN.md §2):
//   forward  — per row tile, walk the column tiles; one similarity tile S = V̂_rows V̂_colsᵀ serves
//              all P patch sizes; per (row, size) keep Σ_j s·w and an online log-sum-exp of the
//              push logits. Saves only LSE. Never holds more than a tile of the N×K matrix.
//   backward — recompute S per tile, form G_ij = Σ_k ∂ℓ_i(k)/∂s_ij, then
//              ∂L/∂v̂_rows += G V̂_cols and ∂L/∂v̂_cols += Gᵀ V̂_rows.

#ifndef PDCR_ISA
#error "define PDCR_ISA before including dragsaw_kernel_impl.h"
#endif

namespace pdcr {
namespace cpu {
namespace PDCR_ISA {

namespace m = ::pdcr::math;

// Vectors are one register of the instruction set this copy is compiled for
// (PDCR_NATIVE_VEC_BYTES: 64 for AVX-512, 32 for AVX2, 16 for SSE2/NEON). Wider generic vectors
// would be split by the compiler, and the GEMM's register block would spill: with 64-byte vectors
// everywhere the AVX2 kernels ran 20x slower than the AVX-512 ones. Buffers stay padded to
// kVecBytes (64), a multiple of every width.
#ifndef PDCR_NATIVE_VEC_BYTES
#error "define PDCR_NATIVE_VEC_BYTES (the ISA's register width) before including dragsaw_kernel_impl.h"
#endif
constexpr int64_t kNativeVecBytes = PDCR_NATIVE_VEC_BYTES;
static_assert(kVecBytes % kNativeVecBytes == 0, "the padding must be whole registers");

template <typename T>
constexpr int64_t vlanes() {
  return kNativeVecBytes / static_cast<int64_t>(sizeof(T));
}

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kNativeVecBytes)));
  typedef int32_t itype __attribute__((vector_size(kNativeVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kNativeVecBytes)));
};

template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
static inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
static inline void vstore(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
static inline Vec<T> vsplat(T x) {
  return Vec<T>{} + x;
}

// Horizontal sum and maximum by halving (log2(lanes) dependent steps, not lanes).
template <typename T>
static inline T hsum(Vec<T> v) {
  T lane[vlanes<T>()];
  std::memcpy(lane, &v, sizeof(v));
  for (int64_t width = vlanes<T>() / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

template <typename T>
static inline T hmax(Vec<T> v) {
  T lane[vlanes<T>()];
  std::memcpy(lane, &v, sizeof(v));
  for (int64_t width = vlanes<T>() / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lane[l] = m::maxval(lane[l], lane[l + width]);
  return lane[0];
}

// exp on a whole vector. float: Cephes' expf polynomial (about 1 ulp), branch-free so that it
// stays in SIMD registers; inputs are clamped to the range where 2^n is a normal float. Every
// argument in this file is ≤ 0 (logits minus their running max or LSE). double: the C library's
// exp lane by lane — the double path exists for gradcheck, not for speed.
static inline Vec<float> vexp(Vec<float> x) {
  typedef VecOf<float>::itype VI;
  const Vec<float> lo = vsplat(-87.3365448f), hi = vsplat(88.3762626f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec<float> round_magic = vsplat(12582912.0f);  // 1.5·2^23: adding it rounds to integer
  Vec<float> n = (x * 1.44269504088896341f + round_magic) - round_magic;
  Vec<float> r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Vec<float> y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  VI e = (__builtin_convertvector(n, VI) + 127) << 23;
  return y * (Vec<float>)e;  // the int lanes' bits are 2^n as floats
}

static inline Vec<double> vexp(Vec<double> x) {
  for (int64_t l = 0; l < vlanes<double>(); ++l) x[l] = std::exp(x[l]);
  return x;
}

// GEMM register block: NR rows x kGemmVecs vectors of accumulators, plus kGemmVecs loads and a
// broadcast. AVX-512 (32 registers): 4 x 4 = 16 accumulators; 16-register ISAs: 4 x 2 = 8.
constexpr int kGemmVecs = kNativeVecBytes == 64 ? 4 : 2;

// out[R x W] (+)= coef[R x Tn] · mat[Tn x W], with coef(r, t) = coef[r*cs_r + t*cs_t].
// W is a multiple of the native lane count. A register block of NR rows × NV native vectors;
// each step of t loads NV vectors of mat and broadcasts NR coefficients.
template <typename T, int NR, int NV>
static inline void gemm_block(const T* coef, int64_t cs_r, int64_t cs_t, int64_t Tn, const T* mat,
                              int64_t ldm, T* out, int64_t ldo, bool accumulate) {
  constexpr int64_t L = vlanes<T>();
  Vec<T> acc[NR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? vload(out + r * ldo + v * L) : Vec<T>{};
  for (int64_t t = 0; t < Tn; ++t) {
    Vec<T> mv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) mv[v] = vload(mat + t * ldm + v * L);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const Vec<T> c = Vec<T>{} + coef[r * cs_r + t * cs_t];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += c * mv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(out + r * ldo + v * L, acc[r][v]);
}

template <typename T, int NR>
static inline void gemm_rows(const T* coef, int64_t cs_r, int64_t cs_t, int64_t Tn, const T* mat,
                             int64_t ldm, int64_t W, T* out, int64_t ldo, bool accumulate) {
  constexpr int64_t L = vlanes<T>();
  int64_t w = 0;
  for (; w + kGemmVecs * L <= W; w += kGemmVecs * L)
    gemm_block<T, NR, kGemmVecs>(coef, cs_r, cs_t, Tn, mat + w, ldm, out + w, ldo, accumulate);
  for (; w < W; w += L)
    gemm_block<T, NR, 1>(coef, cs_r, cs_t, Tn, mat + w, ldm, out + w, ldo, accumulate);
}

template <typename T>
static void gemm(const T* coef, int64_t cs_r, int64_t cs_t, int64_t R, int64_t Tn, const T* mat,
                 int64_t ldm, int64_t W, T* out, int64_t ldo, bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4)
    gemm_rows<T, 4>(coef + r * cs_r, cs_r, cs_t, Tn, mat, ldm, W, out + r * ldo, ldo, accumulate);
  for (; r < R; ++r)
    gemm_rows<T, 1>(coef + r * cs_r, cs_r, cs_t, Tn, mat, ldm, W, out + r * ldo, ldo, accumulate);
}

template <typename T>
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t n)
      : ptr(static_cast<T*>(::operator new[](static_cast<size_t>(n) * sizeof(T),
                                             std::align_val_t(kVecBytes)))) {}
  ~AlignedBuffer() { ::operator delete[](ptr, std::align_val_t(kVecBytes)); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* ptr;
};

// Similarity tile S[r][j] = v̂_{i0+r} · v̂'_{j0+j} for R rows and Wt (padded) columns.
template <typename T>
static inline void similarity_tile(const DragsawProblem<T>& p, int64_t b, int64_t i0, int64_t R,
                                   int64_t j0, int64_t Wt, T* S) {
  const T* rows = p.rows_hat + (b * p.N + i0) * p.Cp;
  const T* cols_t = p.cols_hat_t + b * p.Cp * p.Kp + j0;
  gemm<T>(rows, p.Cp, 1, R, p.C, cols_t, p.Kp, Wt, S, kColTile, false);
}

// Affinity w_ij(k) (eq. 3) for one row against L columns, from the row's M ratios and the
// columns' class-major ratios.
template <typename T>
static inline Vec<T> affinity_vec(const T* phi_i, const T* phi_cols_t_k, int64_t Kp, int64_t M,
                                  int64_t j, T inv_m) {
  Vec<T> d{};
  for (int64_t c = 0; c < M; ++c) d = m::affinity_term(d, phi_i[c], vload(phi_cols_t_k + c * Kp + j));
  return m::affinity_finish(d, inv_m);
}

template <typename T>
static void forward_rows(const DragsawProblem<T>& p, int64_t b, int64_t i0, int64_t i1, T* loss,
                         T* lse) {
  constexpr int64_t L = vlanes<T>();
  const T inv_m = T(1) / T(p.M);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  AlignedBuffer<T> S(kRowTile * kColTile), x(kColTile);
  AlignedBuffer<T> run_max(kRowTile * p.P), run_sum(kRowTile * p.P), pull(kRowTile * p.P);

  for (int64_t it = i0; it < i1; it += kRowTile) {
    const int64_t R = std::min<int64_t>(kRowTile, i1 - it);
    for (int64_t q = 0; q < R * p.P; ++q) {
      run_max.ptr[q] = neg_inf;
      run_sum.ptr[q] = 0;
      pull.ptr[q] = 0;
    }
    for (int64_t j0 = 0; j0 < p.K; j0 += kColTile) {
      const int64_t Wv = std::min<int64_t>(kColTile, p.K - j0);  // valid columns
      const int64_t Wt = round_up(Wv, L);                           // padded columns
      similarity_tile(p, b, it, R, j0, Wt, S.ptr);
      for (int64_t r = 0; r < R; ++r) {
        const T* s_row = S.ptr + r * kColTile;
        for (int64_t k = 0; k < p.P; ++k) {
          const T* phi_i = p.phi_rows + ((b * p.P + k) * p.N + it + r) * p.M;
          const T* phi_ct = p.phi_cols_t + (b * p.P + k) * p.M * p.Kp + j0;
          // Pass 1: affinity, pull sum and push logits for the tile. Padded columns have s = 0,
          // so they add nothing to the pull sum; their logits are masked below.
          Vec<T> pull_acc{};
          for (int64_t j = 0; j < Wt; j += L) {
            const Vec<T> s = vload(s_row + j);
            const Vec<T> w = affinity_vec(phi_i, phi_ct, p.Kp, p.M, j, inv_m);
            pull_acc += m::pull_term(s, w);
            vstore(x.ptr + j, m::push_logit(s, w, p.inv_tau));
          }
          for (int64_t j = Wv; j < Wt; ++j) x.ptr[j] = neg_inf;
          // Pass 2: the tile's maximum, then the online log-sum-exp update.
          Vec<T> vmax = vsplat(neg_inf);
          for (int64_t j = 0; j < Wt; j += L) vmax = m::maxval(vmax, vload(x.ptr + j));
          const int64_t q = r * p.P + k;
          const T new_max = m::lse_new_max(run_max.ptr[q], hmax<T>(vmax));
          Vec<T> sum_acc{};
          const Vec<T> shift = vsplat(new_max);
          for (int64_t j = 0; j < Wt; j += L) sum_acc += vexp(vload(x.ptr + j) - shift);
          const T rescale = run_max.ptr[q] == neg_inf ? T(0) : std::exp(run_max.ptr[q] - new_max);
          run_sum.ptr[q] = run_sum.ptr[q] * rescale + hsum<T>(sum_acc);
          run_max.ptr[q] = new_max;
          pull.ptr[q] += hsum<T>(pull_acc);
        }
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t k = 0; k < p.P; ++k) {
        const int64_t q = r * p.P + k;
        const int64_t out = (b * p.P + k) * p.N + it + r;
        lse[out] = run_max.ptr[q] + std::log(run_sum.ptr[q]);
        loss[out] = m::row_loss(pull.ptr[q], lse[out], p.inv_tau, T(p.K));
      }
    }
  }
}

template <typename T>
static void backward_rows(const DragsawProblem<T>& p, const T* grad, const T* lse, int64_t b,
                          int64_t i0, int64_t i1, T* d_rows_hat, T* d_cols_hat) {
  constexpr int64_t L = vlanes<T>();
  const T inv_m = T(1) / T(p.M);
  const T num_cols = T(p.K);
  AlignedBuffer<T> S(kRowTile * kColTile), G(kRowTile * kColTile);

  for (int64_t it = i0; it < i1; it += kRowTile) {
    const int64_t R = std::min<int64_t>(kRowTile, i1 - it);
    T* d_rows = d_rows_hat + (b * p.N + it) * p.Cp;
    for (int64_t q = 0; q < R * p.Cp; ++q) d_rows[q] = 0;
    for (int64_t j0 = 0; j0 < p.K; j0 += kColTile) {
      const int64_t Wv = std::min<int64_t>(kColTile, p.K - j0);
      const int64_t Wt = round_up(Wv, L);
      similarity_tile(p, b, it, R, j0, Wt, S.ptr);
      // G_ij = Σ_k g_i(k) ∂ℓ_i(k)/∂s_ij, recomputing w and p from S and the saved LSE.
      for (int64_t r = 0; r < R; ++r) {
        const T* s_row = S.ptr + r * kColTile;
        T* g_row = G.ptr + r * kColTile;
        for (int64_t j = 0; j < Wt; j += L) vstore(g_row + j, Vec<T>{});
        for (int64_t k = 0; k < p.P; ++k) {
          const int64_t row = (b * p.P + k) * p.N + it + r;
          const T g = grad[row];
          if (g == T(0)) continue;  // this row and size do not reach the loss
          const T* phi_i = p.phi_rows + row * p.M;
          const T* phi_ct = p.phi_cols_t + (b * p.P + k) * p.M * p.Kp + j0;
          const Vec<T> row_lse = vsplat(lse[row]);
          for (int64_t j = 0; j < Wt; j += L) {
            const Vec<T> s = vload(s_row + j);
            const Vec<T> w = affinity_vec(phi_i, phi_ct, p.Kp, p.M, j, inv_m);
            const Vec<T> prob = vexp(m::push_logit(s, w, p.inv_tau) - row_lse);
            vstore(g_row + j, vload(g_row + j) + m::pair_grad(w, prob, g, p.inv_tau, num_cols));
          }
        }
      }
      // ∂L/∂v̂_i += Σ_j G_ij v̂'_j   and   ∂L/∂v̂'_j += Σ_i G_ij v̂_i   (valid columns only).
      gemm<T>(G.ptr, kColTile, 1, R, Wv, p.cols_hat + (b * p.K + j0) * p.Cp, p.Cp, p.Cp, d_rows,
              p.Cp, true);
      gemm<T>(G.ptr, 1, kColTile, Wv, R, p.rows_hat + (b * p.N + it) * p.Cp, p.Cp, p.Cp,
              d_cols_hat + j0 * p.Cp, p.Cp, true);
    }
  }
}

// Unit-normalised copy of one vector, padded with zeros to Cp channels (eq. 8); returns ‖v‖.
template <typename T>
static inline T normalize_vector(const T* v, int64_t C, int64_t Cp, T* v_hat) {
  constexpr int64_t L = vlanes<T>();
  Vec<T> sq_acc{};
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    const Vec<T> x = vload(v + c);
    sq_acc += x * x;
  }
  T sq = hsum<T>(sq_acc);
  for (; c < C; ++c) sq += v[c] * v[c];
  const T norm = std::sqrt(sq);
  const T inv = T(1) / m::clamped_norm(norm);
  for (c = 0; c + L <= C; c += L) vstore(v_hat + c, vload(v + c) * inv);
  for (; c < C; ++c) v_hat[c] = v[c] * inv;
  for (; c < Cp; ++c) v_hat[c] = 0;
  return norm;
}

template <typename T>
static void prepare_image(const DragsawProblem<T>& p, const PrepareArgs<T>& a, int64_t b) {
  for (int64_t i = 0; i < p.N; ++i)
    a.row_norm[b * p.N + i] = normalize_vector(a.rows + (b * p.N + i) * p.C, p.C, p.Cp,
                                               a.rows_hat + (b * p.N + i) * p.Cp);
  if (a.cols != nullptr)
    for (int64_t j = 0; j < p.K; ++j)
      a.col_norm[b * p.K + j] = normalize_vector(a.cols + (b * p.K + j) * p.C, p.C, p.Cp,
                                                 a.cols_hat + (b * p.K + j) * p.Cp);
  // (K, Cp) -> (Cp, Kp), zero past K: L columns at a time, so that the L source rows stay in L1
  // while c runs and every store is contiguous.
  constexpr int64_t L = vlanes<T>();
  const T* cols_hat = p.cols_hat + b * p.K * p.Cp;
  T* cols_hat_t = const_cast<T*>(p.cols_hat_t) + b * p.Cp * p.Kp;
  int64_t j0 = 0;
  for (; j0 + L <= p.K; j0 += L) {
    for (int64_t c = 0; c < p.Cp; ++c) {
      T* dst = cols_hat_t + c * p.Kp + j0;
      const T* src = cols_hat + j0 * p.Cp + c;
      for (int64_t l = 0; l < L; ++l) dst[l] = src[l * p.Cp];
    }
  }
  for (int64_t c = 0; c < p.Cp; ++c)
    for (int64_t j = j0; j < p.Kp; ++j)
      cols_hat_t[c * p.Kp + j] = j < p.K ? cols_hat[j * p.Cp + c] : T(0);
  // (P, K, M) -> (P, M, Kp), zero past K.
  for (int64_t k = 0; k < p.P; ++k) {
    for (int64_t cls = 0; cls < p.M; ++cls) {
      T* dst = const_cast<T*>(p.phi_cols_t) + ((b * p.P + k) * p.M + cls) * p.Kp;
      const T* src = a.phi_cols + (b * p.P + k) * p.K * p.M + cls;
      for (int64_t j = 0; j < p.K; ++j) dst[j] = src[j * p.M];
      for (int64_t j = p.K; j < p.Kp; ++j) dst[j] = 0;
    }
  }
}

template <typename T>
static void normalize_backward_range(const T* d_hat, const T* x_hat, const T* norm, int64_t n0,
                                     int64_t n1, int64_t C, int64_t Cp, T* d_x) {
  constexpr int64_t L = vlanes<T>();
  for (int64_t n = n0; n < n1; ++n) {
    const T* g = d_hat + n * Cp;
    const T* v = x_hat + n * Cp;
    Vec<T> dot_acc{};
    for (int64_t c = 0; c < Cp; c += L) dot_acc += vload(g + c) * vload(v + c);  // padding is 0
    const T dot = hsum<T>(dot_acc);
    const T inv_norm = T(1) / m::clamped_norm(norm[n]);
    const bool clamped = norm[n] < T(m::kNormEps);
    T* out = d_x + n * C;
    int64_t c = 0;
    for (; c + L <= C; c += L)
      vstore(out + c, m::normalize_backward(vload(g + c), vload(v + c), dot, inv_norm, clamped));
    for (; c < C; ++c) out[c] = m::normalize_backward(g[c], v[c], dot, inv_norm, clamped);
  }
}

template <typename T>
static constexpr Kernels<T> kernels() {
  return {&prepare_image<T>, &forward_rows<T>, &backward_rows<T>, &normalize_backward_range<T>};
}

}  // namespace PDCR_ISA
}  // namespace cpu
}  // namespace pdcr
