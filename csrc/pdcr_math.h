// pdcr_math.h — the per-element math of PDCR, written once.
//
// Every function here is an inline template usable from host C++ (scalars, or GCC vector types
// in the CPU kernels' SIMD loops) and from CUDA device code (scalars). The CPU and CUDA kernels
// call these and nothing else for the math, so the CPU tests against the pure-PyTorch reference
// cover what the GPU computes. Equation numbers are those of Liu et al., "Contrastive and
// Selective Hidden Embeddings for Medical Image Segmentation".
//
// No torch headers here: the CPU kernels that include this file are compiled several times with
// different instruction-set targets, and must not pull in shared inline code from libtorch.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PDCR_HD __host__ __device__ __forceinline__
#else
// static: each translation unit keeps its own copy (the CPU kernels are compiled once per
// instruction set, and must not share out-of-line copies); always_inline: the copy is inlined
// into the caller's instruction set, and GCC vector arguments never cross an ABI boundary.
#define PDCR_HD static inline __attribute__((always_inline))
#endif

namespace pdcr {
namespace math {

using std::exp;  // float and double overloads, on the host and on the device
using std::log;

// Smallest norm used when normalising a feature vector (eq. 8): v̂ = v / max(‖v‖, kNormEps).
// Same value as torch.nn.functional.normalize(eps=1e-8) in the reference.
constexpr double kNormEps = 1e-8;

// |x| written with a comparison so that it also works lane-wise on GCC vector types.
template <typename T>
PDCR_HD T absval(T x) {
  return x < 0 ? -x : x;
}

template <typename T>
PDCR_HD T maxval(T a, T b) {
  return a > b ? a : b;
}

// ---------------------------------------------------------------------------------------------
// Geometry (eqs. 5-7)

// One axis of a box: a feature position x with receptive field (size, jump, offset) covers the
// image pixels [x*jump + offset, x*jump + offset + size - 1] (eqs. 5 and 6, inclusive ends).
// A square patch of side s centred on pixel c (H-PDCR) is the same with jump 1 and offset
// -(s-1)/2 (rounded down), so one function serves both.
PDCR_HD void box_axis(int64_t x, int64_t size, int64_t jump, int64_t offset, int64_t* lo,
                      int64_t* hi) {
  *lo = x * jump + offset;
  *hi = *lo + size - 1;
}

// ---------------------------------------------------------------------------------------------
// Foreground ratios (eq. 4) from an integral image (2-D) or integral volume (3-D).
//
// A box has D = 2 or 3 axes, in the order (z,) y, x; lo[a] and hi[a] are its inclusive ends on
// axis a, and it may extend past the image. size[a] is the image's extent on axis a. The integral
// array has size[a] + 1 entries per axis, row-major, and integral[p] counts the pixels of one
// class strictly before p on every axis, so a box's count is an inclusion-exclusion over its 2^D
// corners: O(1) whatever the box size. Pixels outside the image belong to no class, so the box is
// clipped first.

// Clips a box to the image: the clipped ends (clo, chi) and the number of pixels inside, 0 when
// the box lies entirely outside the image (or is inverted).
template <int D>
PDCR_HD int64_t clip_box(const int64_t* size, const int64_t* lo, const int64_t* hi, int64_t* clo,
                         int64_t* chi) {
  int64_t area = 1;
  for (int a = 0; a < D; ++a) {
    clo[a] = lo[a] < 0 ? 0 : lo[a];
    chi[a] = hi[a] > size[a] - 1 ? size[a] - 1 : hi[a];
    if (chi[a] < clo[a]) return 0;
    area *= chi[a] - clo[a] + 1;
  }
  return area;
}

// The box's count of one class. The integral arrays may hold 32-bit entries (each entry is at
// most the image's pixel count, checked < 2^31 by the ops), but the corner sum is taken in 64
// bits: its partial sums reach 2^(D-1) times an entry, which wraps a 32-bit sum above 2^30 voxels.
template <int D, typename I>
PDCR_HD int64_t box_count(const I* integral, const int64_t* size, const int64_t* lo,
                          const int64_t* hi) {
  int64_t clo[D], chi[D];
  if (clip_box<D>(size, lo, hi, clo, chi) == 0) return 0;
  int64_t stride[D];
  int64_t s = 1;
  for (int a = D - 1; a >= 0; --a) {
    stride[a] = s;
    s *= size[a] + 1;
  }
  int64_t count = 0;
  for (int corner = 0; corner < (1 << D); ++corner) {
    int64_t index = 0;
    int low_ends = 0;
    for (int a = 0; a < D; ++a) {
      const bool high = (corner >> a) & 1;
      index += (high ? chi[a] + 1 : clo[a]) * stride[a];
      low_ends += !high;
    }
    const int64_t value = static_cast<int64_t>(integral[index]);
    count += (low_ends % 2 == 0) ? value : -value;
  }
  return count;
}

// eq. 4: ratio = count / area. area is the full box area (the paper's r², "box") or the area of
// the box's part inside the image ("inside"). An empty area (a box entirely outside the image
// with the "inside" convention) gives ratio 0 for every class, never 0/0.
template <typename T>
PDCR_HD T foreground_ratio(int64_t count, int64_t area) {
  return area > 0 ? T(count) / T(area) : T(0);
}

// All M ratios of one box from M integral arrays plane_stride apart. With ignored != nullptr, it
// is the integral array of the ignored pixels (ignore_index): they belong to no class, like
// pixels outside the image, and the "inside" area leaves them out too.
template <int D, typename T, typename I>
PDCR_HD void box_ratios(const I* integrals, int64_t plane_stride, const I* ignored,
                        const int64_t* size, int64_t M, const int64_t* lo, const int64_t* hi,
                        bool inside_area, T* out) {
  int64_t area = 1;
  if (inside_area) {
    int64_t clo[D], chi[D];
    area = clip_box<D>(size, lo, hi, clo, chi);
    if (ignored != nullptr) area -= box_count<D>(ignored, size, lo, hi);
  } else {
    for (int a = 0; a < D; ++a) area *= hi[a] - lo[a] + 1;
  }
  for (int64_t m = 0; m < M; ++m)
    out[m] = foreground_ratio<T>(box_count<D>(integrals + m * plane_stride, size, lo, hi), area);
}

// ---------------------------------------------------------------------------------------------
// Affinity (eq. 3), accumulated one class at a time:
//   w_ij = 1 - (1/M) Σ_m |φ_i^m - φ_j^m|
// affinity_term adds one class's |φ_i^m - φ_j^m|; affinity_finish turns the sum into w.
template <typename T, typename S>
PDCR_HD T affinity_term(T acc, S phi_i, T phi_j) {
  return acc + absval(phi_j - phi_i);
}

template <typename T, typename S>
PDCR_HD T affinity_finish(T abs_diff_sum, S inv_num_classes) {
  return 1 - abs_diff_sum * inv_num_classes;
}

// ---------------------------------------------------------------------------------------------
// The dragsaw loss (eq. 9 per patch size; eq. 12 sums it over sizes, layers and layer pairs).
//
// For row i, column j and patch size k, with s_ij the cosine similarity (eq. 8) and w_ij(k) the
// affinity:
//   pull logit   s_ij w_ij / τ          (numerator of eq. 9)
//   push logit   s_in (1 - w_in) / τ    (denominator of eq. 9)
//   ℓ_i(k) = Σ_j -log( exp(s_ij w_ij/τ) / Σ_n exp(s_in (1-w_in)/τ) )
//          = -(1/τ) Σ_j s_ij w_ij + K · LSE_n( s_in (1 - w_in)/τ )
// so a row needs only the running sum Σ_j s_ij w_ij and an online log-sum-exp of the push logits.
template <typename T>
PDCR_HD T pull_term(T s, T w) {
  return s * w;
}

template <typename T, typename S>
PDCR_HD T push_logit(T s, T w, S inv_tau) {
  return s * (1 - w) * inv_tau;
}

// Online log-sum-exp: the state (running max m, running sum l of exp(x - m)) absorbs a block of
// logits with maximum block_max as  m' = max(m, block_max),  l' = l·exp(m - m') + Σ exp(x - m'),
// and finally LSE = m + log(l). The exps are the caller's (SIMD on the CPU, fast-math on the GPU);
// this is the one place the new running maximum is chosen.
template <typename T>
PDCR_HD T lse_new_max(T running_max, T block_max) {
  return maxval(running_max, block_max);
}

// ℓ_i(k) from the row's running pull sum and LSE (eq. 9 rewritten above).
template <typename T, typename S>
PDCR_HD T row_loss(T pull_sum, T lse, S inv_tau, S num_cols) {
  return -pull_sum * inv_tau + num_cols * lse;
}

// Gradient of the loss with respect to one similarity s_ij, for one patch size k:
//   ∂ℓ_i(k)/∂s_ij = ( -w_ij + K · p_ij · (1 - w_ij) ) / τ,   p_ij = exp(push_ij - LSE_i(k))
// times the upstream gradient g_i(k) of that row's loss. Summed over k by the caller: G_ij.
template <typename T, typename S>
PDCR_HD T pair_grad(T w, T p, S g, S inv_tau, S num_cols) {
  return g * inv_tau * (num_cols * p * (1 - w) - w);
}

// ---------------------------------------------------------------------------------------------
// Cosine normalisation (eq. 8) of one vector: v̂ = v / max(‖v‖, eps); clamped_norm is the divisor.
template <typename T>
PDCR_HD T clamped_norm(T norm) {
  return norm > T(kNormEps) ? norm : T(kNormEps);
}

// Backward of v̂ = v / max(‖v‖, eps) for one component, with inv_norm = 1 / max(‖v‖, eps):
//   ‖v‖ >= eps:  ∂L/∂v = (∂L/∂v̂ - v̂ (v̂ · ∂L/∂v̂)) / ‖v‖
//   otherwise:   ∂L/∂v = ∂L/∂v̂ / eps          (the clamp is constant there)
// norm_clamped says which case holds; vhat_dot_g is v̂ · ∂L/∂v̂.
template <typename T, typename S>
PDCR_HD T normalize_backward(T g, T vhat, S vhat_dot_g, S inv_norm, bool norm_clamped) {
  return norm_clamped ? g * inv_norm : (g - vhat * vhat_dot_g) * inv_norm;
}

// ---------------------------------------------------------------------------------------------
// UAFR (eqs. 13-15): per pixel, the softmax A of the M predicted maps (eq. 13), its normalised
// Shannon entropy U = -Σ_m a_m log a_m / log M (eq. 14; the log base cancels) and the re-weighting
// Q̂ = Q · (1 + (1 - U)) (eq. 15).
//
// uafr_stats reads the M logits z_m (stride apart, any type convertible to T) and returns U; the
// log-sum-exp of the logits is returned through *lse so that log a_m = z_m - lse stays finite when
// a_m underflows to 0.
template <typename T, typename In>
PDCR_HD T uafr_stats(const In* z, int64_t stride, int64_t M, T* lse) {
  T zmax = T(z[0]);
  for (int64_t m = 1; m < M; ++m) zmax = maxval(zmax, T(z[m * stride]));
  // With d_m = zmax - z_m >= 0 and e_m = exp(-d_m): a_m = e_m / Σe and -log a_m = d_m + log Σe,
  // so H = -Σ a_m log a_m = log Σe + Σ e_m d_m / Σe: M exps and one log, every term >= 0.
  T sum = 0, weighted = 0;
  for (int64_t m = 0; m < M; ++m) {
    const T d = zmax - T(z[m * stride]);
    const T e = exp(-d);
    sum += e;
    weighted += e * d;
  }
  const T log_sum = log(sum);
  *lse = zmax + log_sum;
  return (log_sum + weighted / sum) / log(T(M));
}

// The factor Q̂ / Q of eq. 15.
template <typename T>
PDCR_HD T uafr_scale(T uncertainty) {
  return 2 - uncertainty;
}

// Backward of U with respect to one logit, given ∂L/∂U:
//   ∂U/∂z_m = -a_m (log a_m + H) / log M,  H = U log M  (softmax and entropy combined).
template <typename T>
PDCR_HD T uafr_logit_grad(T d_uncertainty, T z_m, T lse, T uncertainty, T log_num_maps) {
  const T log_a = z_m - lse;
  return -d_uncertainty * exp(log_a) * (log_a + uncertainty * log_num_maps) / log_num_maps;
}

}  // namespace math
}  // namespace pdcr
