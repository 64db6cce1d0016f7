// foreground_ratios.cu — CUDA implementation of pdcr::foreground_ratios (eq. 4).
//
// Integral image of the one-hot labels in two passes (column sums, then a warp scan along each
// row), then one thread per box reads O(M) corners (pdcr_math.h: box_count). Out-of-range labels
// and inverted boxes raise an error after the kernels (one flag read back per call).
#include <torch/library.h>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace {

enum ErrorFlag : int { kBadLabel = 1, kBadBox = 2 };

// Column pass: I[b][m][y+1][x+1] = number of class-m pixels in column x, rows [0, y].
// Also writes the zero first row. Threads run along x, so loads are coalesced.
template <typename L>
__global__ void column_counts_kernel(const L* labels, int64_t H, int64_t W, int64_t M,
                                     int32_t* integral, int* error, int64_t* bad_label) {
  const int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t m = blockIdx.y, b = blockIdx.z;
  if (x >= W) return;
  const L* lab = labels + b * H * W;
  int32_t* I = integral + (b * M + m) * (H + 1) * (W + 1);
  I[x + 1] = 0;
  if (x == 0) I[0] = 0;
  int32_t count = 0;
  for (int64_t y = 0; y < H; ++y) {
    const int64_t v = static_cast<int64_t>(lab[y * W + x]);
    if (m == 0 && (v < 0 || v >= M) && atomicOr(error, kBadLabel) == 0) *bad_label = v;
    count += (v == m);
    I[(y + 1) * (W + 1) + x + 1] = count;
  }
}

// Row pass: one warp per row of the integral image, an inclusive scan over x in chunks of 32.
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

__global__ void box_ratios_kernel(const int32_t* integral, const int64_t* boxes, int64_t B,
                                  int64_t N, int64_t H, int64_t W, int64_t M, bool inside_area,
                                  float* ratios, int* error) {
  const int64_t bn = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bn >= B * N) return;
  const int64_t b = bn / N;
  const int64_t* box = boxes + 4 * bn;
  const int64_t y0 = box[0], x0 = box[1], y1 = box[2], x1 = box[3];
  if (y1 < y0 || x1 < x0) {
    atomicOr(error, kBadBox);
    return;
  }
  math::box_ratios(integral + b * M * (H + 1) * (W + 1), (H + 1) * (W + 1), H, W, M, y0, x0, y1, x1,
                   inside_area, ratios + bn * M);
}

at::Tensor foreground_ratios_cuda(const at::Tensor& labels, const at::Tensor& boxes,
                                  int64_t num_classes, bool inside_area) {
  check_ratio_inputs(labels, boxes, num_classes);
  const c10::cuda::CUDAGuard guard(labels.device());
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2), N = boxes.size(1);
  const int64_t M = num_classes;
  at::Tensor ratios = at::zeros({B, N, M}, labels.options().dtype(at::kFloat));
  if (B == 0 || N == 0) return ratios;
  TORCH_CHECK(M <= 65535 && B <= 65535, "foreground_ratios: at most 65535 images and classes on CUDA");
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor bx = boxes.contiguous();
  at::Tensor integral = at::empty({B, M, H + 1, W + 1}, labels.options().dtype(at::kInt));
  at::Tensor error = at::zeros({1}, labels.options().dtype(at::kInt));
  at::Tensor bad_label = at::zeros({1}, labels.options().dtype(at::kLong));
  if (H > 0 && W > 0) {
    const dim3 grid(ceil_div(W, 128), M, B);
    AT_DISPATCH_INTEGRAL_TYPES(lab.scalar_type(), "foreground_ratios_cuda", [&] {
      column_counts_kernel<scalar_t><<<grid, 128, 0, stream>>>(
          lab.data_ptr<scalar_t>(), H, W, M, integral.data_ptr<int32_t>(), error.data_ptr<int>(),
          bad_label.data_ptr<int64_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t rows = B * M * (H + 1);
    row_scan_kernel<<<ceil_div(rows, 8), 256, 0, stream>>>(integral.data_ptr<int32_t>(), rows, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    integral.zero_();
  }
  box_ratios_kernel<<<ceil_div(B * N, 256), 256, 0, stream>>>(
      integral.data_ptr<int32_t>(), bx.data_ptr<int64_t>(), B, N, H, W, M, inside_area,
      ratios.data_ptr<float>(), error.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int flags = error.item<int>();  // the one host sync: errors must not pass silently
  TORCH_CHECK(!(flags & kBadLabel), "foreground_ratios: labels must lie in [0, num_classes=", M,
              "), found ", bad_label.item<int64_t>());
  TORCH_CHECK(!(flags & kBadBox),
              "foreground_ratios: boxes must have y1 >= y0 and x1 >= x0 (inclusive ends)");
  return ratios;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CUDA, m) { m.impl("foreground_ratios", &foreground_ratios_cuda); }

}  // namespace cuda
}  // namespace pdcr
