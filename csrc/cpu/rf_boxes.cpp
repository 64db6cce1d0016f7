// rf_boxes.cpp — CPU implementation of pdcr::rf_boxes (eqs. 5-6; H-PDCR patches).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cpu {
namespace {

at::Tensor rf_boxes_cpu(const at::Tensor& positions, at::IntArrayRef size, at::IntArrayRef stride,
                        at::IntArrayRef offset) {
  check_rf_inputs(positions, size, stride);
  TORCH_CHECK(offset.size() == 2, "rf_boxes: offset must give (rows, cols)");
  const at::Tensor pos = positions.contiguous();
  auto out_shape = positions.sizes().vec();
  out_shape.back() = 4;
  at::Tensor boxes = at::empty(out_shape, positions.options());
  const int64_t* p = pos.data_ptr<int64_t>();
  int64_t* out = boxes.data_ptr<int64_t>();
  const int64_t count = pos.numel() / 2;
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      int64_t* o = out + 4 * n;
      math::box_axis(p[2 * n], size[0], stride[0], offset[0], &o[0], &o[2]);
      math::box_axis(p[2 * n + 1], size[1], stride[1], offset[1], &o[1], &o[3]);
    }
  });
  return boxes;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) { m.impl("rf_boxes", &rf_boxes_cpu); }

}  // namespace cpu
}  // namespace pdcr
