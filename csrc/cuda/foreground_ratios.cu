// foreground_ratios.cu — CUDA implementation of pdcr::foreground_ratios (eq. 4), 2-D and 3-D.
//
// Integral arrays of the one-hot labels in two passes (column sums, then a warp scan along each
// row), plus a third pass along depth for volumes; then one thread per box reads O(M) corners
// (pdcr_math.h: box_count, box_ratios — the CPU kernel's math). With ignore_index, one more
// plane counts the ignored pixels (for the "inside" area).
//
// No host synchronisation: labels are not validated here (reading an error flag back would stall
// the stream and break CUDA-graph capture). Labels outside [0, num_classes) other than
// ignore_index count for no class, and inverted boxes give ratio 0; the Python wrapper
// (pdcr_ext.foreground_ratios, PDCRLoss) checks the labels before calling this op.
#include <torch/library.h>

#include <optional>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace {

// Layout of one call's integral arrays: (B, planes, slices, H+1, W+1) int32 with slices = 1 for
// 2-D labels and D+1 for 3-D ones (slice 0 zero, slice z+1 holding depth z).
struct Layout {
  int64_t depth, H, W;  // depth = 1 for 2-D labels
  int64_t planes;       // M, or M + 1 with the ignored pixels' plane
  int64_t slices;       // 1 (2-D) or depth + 1 (3-D)
  int64_t num_classes;
  __host__ __device__ int64_t plane_size() const { return slices * (H + 1) * (W + 1); }
};

// Column pass: for one (image b, plane p, depth z) and column x, the running count down the rows:
// C[y+1][x+1] = number of plane-p pixels in column x, rows [0, y] of depth z. Also writes the
// zero first row. Threads run along x, so loads are coalesced.
template <typename L>
__global__ void column_counts_kernel(const L* labels, Layout g, bool has_ignore, int64_t ignore,
                                     int32_t* integral) {
  const int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t b = blockIdx.z / g.depth, z = blockIdx.z % g.depth;
  if (x >= g.W) return;
  const L* lab = labels + (b * g.depth + z) * g.H * g.W;
  const int64_t first = g.slices > 1 ? 1 : 0;
  int32_t* I = integral + (b * g.planes + p) * g.plane_size() + (z + first) * (g.H + 1) * (g.W + 1);
  I[x + 1] = 0;
  if (x == 0) I[0] = 0;
  int32_t count = 0;
  for (int64_t y = 0; y < g.H; ++y) {
    const int64_t v = static_cast<int64_t>(lab[y * g.W + x]);
    const bool ignored = has_ignore && v == ignore;
    count += p < g.num_classes ? (v == p && !ignored) : ignored;
    I[(y + 1) * (g.W + 1) + x + 1] = count;
    if (x == 0) I[(y + 1) * (g.W + 1)] = 0;
  }
  if (first && z == 0) {  // 3-D: slice 0 of the integral volume is zero
    int32_t* zero = integral + (b * g.planes + p) * g.plane_size();
    for (int64_t y = 0; y <= g.H; ++y) {
      zero[y * (g.W + 1) + x + 1] = 0;
      if (x == 0) zero[y * (g.W + 1)] = 0;
    }
  }
}

// Row pass: one warp per row of the integral arrays, an inclusive scan over x in chunks of 32.
__global__ void row_scan_kernel(int32_t* integral, int64_t rows, int64_t W) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  int32_t* r = integral + row * (W + 1);
  if (lane == 0) r[0] = 0;
  int32_t carry = 0;
  for (int64_t x0 = 1; x0 <= W; x0 += 32) {
    const int64_t x = x0 + lane;
    int32_t v = x <= W ? r[x] : 0;
    for (int offset = 1; offset < 32; offset *= 2) {
      const int32_t up = __shfl_up_sync(0xffffffffu, v, offset);
      if (lane >= offset) v += up;
    }
    v += carry;
    if (x <= W) r[x] = v;
    carry = __shfl_sync(0xffffffffu, v, 31);
  }
}

// Depth pass (3-D only): for one (image, plane) and one point (y, x) of a slice, the running sum
// over slices 1..D (slice 0, zero, was written by the column pass).
__global__ void depth_scan_kernel(int32_t* integral, Layout g, int64_t arrays) {
  const int64_t slice = (g.H + 1) * (g.W + 1);
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (q >= arrays * slice) return;
  int32_t* I = integral + (q / slice) * g.plane_size() + q % slice;
  int32_t sum = 0;
  for (int64_t z = 1; z < g.slices; ++z) {
    sum += I[z * slice];
    I[z * slice] = sum;
  }
}

template <int D>
__global__ void box_ratios_kernel(const int32_t* integral, const int64_t* boxes, int64_t B,
                                  int64_t N, Layout g, bool inside_area, float* ratios) {
  const int64_t bn = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bn >= B * N) return;
  const int64_t size[3] = {D == 3 ? g.depth : g.H, D == 3 ? g.H : g.W, g.W};
  const int32_t* image = integral + (bn / N) * g.planes * g.plane_size();
  const int32_t* ignored = g.planes > g.num_classes ? image + g.num_classes * g.plane_size() : nullptr;
  const int64_t* lo = boxes + 2 * D * bn;
  math::box_ratios<D>(image, g.plane_size(), ignored, size, g.num_classes, lo, lo + D, inside_area,
                      ratios + bn * g.num_classes);
}

at::Tensor foreground_ratios_cuda(const at::Tensor& labels, const at::Tensor& boxes,
                                  int64_t num_classes, bool inside_area,
                                  std::optional<int64_t> ignore_index) {
  check_ratio_inputs(labels, boxes, num_classes);
  const c10::cuda::CUDAGuard guard(labels.device());
  const bool volume = labels.dim() == 4;
  const int64_t B = labels.size(0), N = boxes.size(1), M = num_classes;
  Layout g;
  g.depth = volume ? labels.size(1) : 1;
  g.H = labels.size(volume ? 2 : 1);
  g.W = labels.size(volume ? 3 : 2);
  g.planes = M + (ignore_index.has_value() && inside_area ? 1 : 0);
  g.slices = volume ? g.depth + 1 : 1;
  g.num_classes = M;
  at::Tensor ratios = at::zeros({B, N, M}, labels.options().dtype(at::kFloat));
  if (B == 0 || N == 0) return ratios;
  TORCH_CHECK(g.planes <= 65535, "foreground_ratios: at most 65534 classes on CUDA");
  TORCH_CHECK(B * g.depth <= 65535, "foreground_ratios: at most 65535 images x slices per call on CUDA, got ",
              B, " x ", g.depth);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor bx = boxes.contiguous();
  at::Tensor integral = at::empty({B, g.planes, g.plane_size()}, labels.options().dtype(at::kInt));
  if (g.H > 0 && g.W > 0 && g.depth > 0) {
    const dim3 grid(ceil_div(g.W, 128), g.planes, B * g.depth);
    AT_DISPATCH_INTEGRAL_TYPES(lab.scalar_type(), "foreground_ratios_cuda", [&] {
      column_counts_kernel<scalar_t><<<grid, 128, 0, stream>>>(
          lab.data_ptr<scalar_t>(), g, ignore_index.has_value(), ignore_index.value_or(0),
          integral.data_ptr<int32_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t rows = B * g.planes * g.slices * (g.H + 1);  // slice 0 included: zero, stays zero
    row_scan_kernel<<<ceil_div(rows, 8), 256, 0, stream>>>(integral.data_ptr<int32_t>(), rows, g.W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (volume) {
      const int64_t points = B * g.planes * (g.H + 1) * (g.W + 1);
      depth_scan_kernel<<<ceil_div(points, 256), 256, 0, stream>>>(integral.data_ptr<int32_t>(), g,
                                                                   B * g.planes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  } else {
    integral.zero_();
  }
  const int64_t blocks = ceil_div(B * N, 256);
  if (volume)
    box_ratios_kernel<3><<<blocks, 256, 0, stream>>>(integral.data_ptr<int32_t>(),
                                                      bx.data_ptr<int64_t>(), B, N, g, inside_area,
                                                      ratios.data_ptr<float>());
  else
    box_ratios_kernel<2><<<blocks, 256, 0, stream>>>(integral.data_ptr<int32_t>(),
                                                      bx.data_ptr<int64_t>(), B, N, g, inside_area,
                                                      ratios.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ratios;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CUDA, m) { m.impl("foreground_ratios", &foreground_ratios_cuda); }

}  // namespace cuda
}  // namespace pdcr
