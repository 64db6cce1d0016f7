// rf_boxes.cu — CUDA implementation of pdcr::rf_boxes (eqs. 5-6; H-PDCR patches).
#include <torch/library.h>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace {

struct AxisGeometry {
  int64_t size[2], stride[2], offset[2];
};

__global__ void rf_boxes_kernel(const int64_t* positions, int64_t count, AxisGeometry g,
                                int64_t* boxes) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= count) return;
  int64_t* o = boxes + 4 * n;
  math::box_axis(positions[2 * n], g.size[0], g.stride[0], g.offset[0], &o[0], &o[2]);
  math::box_axis(positions[2 * n + 1], g.size[1], g.stride[1], g.offset[1], &o[1], &o[3]);
}

at::Tensor rf_boxes_cuda(const at::Tensor& positions, at::IntArrayRef size, at::IntArrayRef stride,
                         at::IntArrayRef offset) {
  check_rf_inputs(positions, size, stride);
  TORCH_CHECK(offset.size() == 2, "rf_boxes: offset must give (rows, cols)");
  const c10::cuda::CUDAGuard guard(positions.device());
  const at::Tensor pos = positions.contiguous();
  auto out_shape = positions.sizes().vec();
  out_shape.back() = 4;
  at::Tensor boxes = at::empty(out_shape, positions.options());
  const int64_t count = pos.numel() / 2;
  if (count == 0) return boxes;
  AxisGeometry g{{size[0], size[1]}, {stride[0], stride[1]}, {offset[0], offset[1]}};
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
