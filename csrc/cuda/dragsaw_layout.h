// dragsaw_layout.h — shared-memory layout of the CUDA dragsaw kernels, and which tile and
// backward kernel fit a device. Plain C++ (no CUDA headers): the kernels use it on the device,
// the launchers on the host, and the Python module exposes it in every build (CPU-only too), so
// that CPU tests pin pdcr_ext/_cuda_layout.py (the Python mirror that routes calls) to this code.
//
// A block keeps whole padded feature vectors in shared memory (a tile of rows and one of columns,
// the backward also the T x Cp gradient accumulators); only the tile height T can shrink, so the
// channel count C decides what fits.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define PDCR_LAYOUT_HD __host__ __device__ inline
#else
#define PDCR_LAYOUT_HD inline
#endif

namespace pdcr {
namespace cuda {

constexpr int kFeatureAlign = 16;  // feature widths are padded to a multiple of this
constexpr int kTileSizes[3] = {64, 32, 16};  // tile heights, largest first

// The three kernels, by the number of T x Cp float accumulators they keep.
enum class DragsawKernel : int {
  kForward = 0,         // no gradient tile, no accumulators
  kBackwardSplit = 1,   // rows kernel and columns kernel: one accumulator each
  kBackwardAtomic = 2,  // one rows kernel: the rows' and a columns' partial accumulator
};

// Bytes per element of a kernel's tiles: features (the kernel's input type), the accumulation type
// (S, ratios, gradient accumulators) and the gradient tile G.
struct TileBytes {
  int feature, acc, grad;
};

enum class FeatureType { kFloat64, kFloat32, kFloat16, kBFloat16 };

// Tile element sizes of the kernels instantiated for feature type t: features and G in t, S, the
// ratios and the accumulators in float (double for float64).
PDCR_LAYOUT_HD constexpr TileBytes tile_bytes(FeatureType t) {
  return t == FeatureType::kFloat64   ? TileBytes{8, 8, 8}
         : t == FeatureType::kFloat32 ? TileBytes{4, 4, 4}
                                      : TileBytes{2, 4, 2};
}

// The feature type whose kernels run the backward of type t. float16's backward runs the
// float32 kernels on float copies of its normalised vectors, so that G is stored in float32:
// G_ij = g_i Σ_k (K p_ij (1 - w_ij) - w_ij) / τ spans g_i / τ (the upstream gradient: about 5e-9
// per row with reduction="mean" at N = K = 4096, B = 4) to K g_i / τ (above float16's 65504 for
// reduction="sum" at large K and small τ), beyond float16's range at both ends. bfloat16 has
// float32's exponent range, so its G stays bfloat16 for the bf16 tensor cores. Every type
// accumulates G in float32 registers before storing it.
PDCR_LAYOUT_HD constexpr FeatureType backward_kernel_type(FeatureType t) {
  return t == FeatureType::kFloat16 ? FeatureType::kFloat32 : t;
}

// The tile sizes of kernel k run for features of type t.
PDCR_LAYOUT_HD constexpr TileBytes kernel_tile_bytes(FeatureType t, DragsawKernel k) {
  return tile_bytes(k == DragsawKernel::kForward ? t : backward_kernel_type(t));
}

PDCR_LAYOUT_HD constexpr int pad_elems(int bytes) {
  return 16 / bytes;  // 16 bytes per row: keeps wmma strides legal, spreads banks
}

PDCR_LAYOUT_HD constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }

PDCR_LAYOUT_HD constexpr int64_t padded_channels(int64_t C) {
  return (C + kFeatureAlign - 1) / kFeatureAlign * kFeatureAlign;
}

// Byte offsets of one block's tiles for square tiles of T rows and T columns.
struct Layout {
  int T, Cp, P, M;
  int ld_feat, ld_s, ld_g, ld_acc;
  size_t rows, cols, s, g, acc, acc2, phi_rows, phi_cols, total;

  PDCR_LAYOUT_HD Layout(int tile, int Cp_, int P_, int M_, DragsawKernel kernel, TileBytes b)
      : T(tile), Cp(Cp_), P(P_), M(M_) {
    const int accumulators = static_cast<int>(kernel);
    ld_feat = Cp + pad_elems(b.feature);
    ld_s = T + pad_elems(b.acc);
    ld_g = T + pad_elems(b.grad);
    ld_acc = Cp + pad_elems(b.acc);
    size_t at = 0;
    rows = at;
    at = align128(at + size_t(T) * ld_feat * b.feature);
    cols = at;
    at = align128(at + size_t(T) * ld_feat * b.feature);
    s = at;
    at = align128(at + size_t(T) * ld_s * b.acc);
    g = at;
    at = align128(at + (accumulators > 0 ? size_t(T) * ld_g * b.grad : 0));
    acc = at;
    at = align128(at + (accumulators > 0 ? size_t(T) * ld_acc * b.acc : 0));
    acc2 = at;
    at = align128(at + (accumulators > 1 ? size_t(T) * ld_acc * b.acc : 0));
    phi_rows = at;
    at = align128(at + size_t(T) * P * M * b.acc);
    phi_cols = at;
    at = align128(at + size_t(P) * M * T * b.acc);
    total = at;
  }
};

// The largest tile height whose layout fits `limit` bytes (the device's opt-in shared memory per
// block), or 0 when even 16 rows do not fit.
inline int choose_tile(int64_t limit, int Cp, int P, int M, DragsawKernel kernel, TileBytes b) {
  for (int tile : kTileSizes)
    if (int64_t(Layout(tile, Cp, P, M, kernel, b).total) <= limit) return tile;
  return 0;
}

// The backward that runs: the atomic kernel when preferred and it fits, else the split kernels
// (they need one accumulator less, so they fit wherever the atomic one does, and more). tile 0:
// no backward fits (the Python wrapper routes such calls elsewhere before the forward).
struct BackwardPlan {
  DragsawKernel kernel;
  int tile;
};

inline BackwardPlan plan_backward(int64_t limit, int Cp, int P, int M, TileBytes b,
                                  bool prefer_atomic) {
  if (prefer_atomic) {
    const int tile = choose_tile(limit, Cp, P, M, DragsawKernel::kBackwardAtomic, b);
    if (tile > 0) return {DragsawKernel::kBackwardAtomic, tile};
  }
  return {DragsawKernel::kBackwardSplit, choose_tile(limit, Cp, P, M, DragsawKernel::kBackwardSplit, b)};
}

}  // namespace cuda
}  // namespace pdcr
