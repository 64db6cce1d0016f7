// rf_boxes.cpp — CPU implementation of pdcr::rf_boxes (eqs. 5-6; H-PDCR patches), 2-D and 3-D.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cpu {
namespace {

at::Tensor rf_boxes_cpu(const at::Tensor& positions, at::IntArrayRef size, at::IntArrayRef stride,
                        at::IntArrayRef offset) {
  check_rf_inputs(positions, size, stride, offset);
  const int64_t D = positions.size(-1);
  const at::Tensor pos = positions.contiguous();
  auto out_shape = positions.sizes().vec();
  out_shape.back() = 2 * D;
  at::Tensor boxes = at::empty(out_shape, positions.options());
  const int64_t* p = pos.data_ptr<int64_t>();
  int64_t* out = boxes.data_ptr<int64_t>();
  const int64_t count = D > 0 ? pos.numel() / D : 0;
  // a box is (lo_0, .., lo_{D-1}, hi_0, .., hi_{D-1}): (y0, x0, y1, x1) or (z0, y0, x0, z1, y1, x1)
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t a = 0; a < D; ++a)
        math::box_axis(p[D * n + a], size[a], stride[a], offset[a], &out[2 * D * n + a],
                       &out[2 * D * n + D + a]);
  });
  return boxes;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) { m.impl("rf_boxes", &rf_boxes_cpu); }

}  // namespace cpu
}  // namespace pdcr
