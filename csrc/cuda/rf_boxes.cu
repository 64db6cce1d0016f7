// rf_boxes.cu — CUDA implementation of pdcr::rf_boxes (eqs. 5-6; H-PDCR patches), 2-D and 3-D.
#include <torch/library.h>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace {

struct AxisGeometry {
  int64_t size[3], stride[3], offset[3];
  int64_t dims;
};

// A box is (lo_0, .., lo_{D-1}, hi_0, .., hi_{D-1}), as on the CPU.
__global__ void rf_boxes_kernel(const int64_t* positions, int64_t count, AxisGeometry g,
                                int64_t* boxes) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= count) return;
  const int64_t D = g.dims;
  for (int64_t a = 0; a < D; ++a)
    math::box_axis(positions[D * n + a], g.size[a], g.stride[a], g.offset[a], &boxes[2 * D * n + a],
                   &boxes[2 * D * n + D + a]);
}

at::Tensor rf_boxes_cuda(const at::Tensor& positions, at::IntArrayRef size, at::IntArrayRef stride,
                         at::IntArrayRef offset) {
  check_rf_inputs(positions, size, stride, offset);
  const c10::cuda::CUDAGuard guard(positions.device());
  const int64_t D = positions.size(-1);
  const at::Tensor pos = positions.contiguous();
  auto out_shape = positions.sizes().vec();
  out_shape.back() = 2 * D;
  at::Tensor boxes = at::empty(out_shape, positions.options());
  const int64_t count = pos.numel() / D;
  if (count == 0) return boxes;
  AxisGeometry g{};
  g.dims = D;
  for (int64_t a = 0; a < D; ++a) {
    g.size[a] = size[a];
    g.stride[a] = stride[a];
    g.offset[a] = offset[a];
  }
  const int threads = 256;
  rf_boxes_kernel<<<ceil_div(count, threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      pos.data_ptr<int64_t>(), count, g, boxes.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return boxes;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CUDA, m) { m.impl("rf_boxes", &rf_boxes_cuda); }

}  // namespace cuda
}  // namespace pdcr
