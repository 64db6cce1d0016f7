// foreground_ratios.cpp — CPU implementation of pdcr::foreground_ratios (eq. 4).
//
// One integral image per (image, class) of the one-hot labels, then O(M) per box whatever its
// size (pdcr_math.h: box_count). Labels outside [0, num_classes) are an error, not a silent
// miscount.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "checks.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cpu {
namespace {

namespace m = ::pdcr::math;

// integral (B, M, H+1, W+1) int32 counts; returns the first out-of-range label seen, if any.
template <typename L>
bool build_integral(const at::Tensor& labels, int64_t M, at::Tensor& integral, int64_t* bad) {
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  const auto lab = labels.accessor<L, 3>();
  int32_t* out = integral.data_ptr<int32_t>();
  std::atomic<bool> found_bad{false};
  std::atomic<int64_t> bad_value{0};
  at::parallel_for(0, B * M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, cls = bm % M;
      int32_t* I = out + bm * (H + 1) * (W + 1);
      for (int64_t x = 0; x <= W; ++x) I[x] = 0;
      for (int64_t y = 0; y < H; ++y) {
        int32_t row_sum = 0;
        I[(y + 1) * (W + 1)] = 0;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t v = static_cast<int64_t>(lab[b][y][x]);
          if (cls == 0 && (v < 0 || v >= M) && !found_bad.exchange(true)) bad_value = v;
          row_sum += (v == cls);
          I[(y + 1) * (W + 1) + x + 1] = I[y * (W + 1) + x + 1] + row_sum;
        }
      }
    }
  });
  *bad = bad_value;
  return found_bad;
}

at::Tensor foreground_ratios_cpu(const at::Tensor& labels, const at::Tensor& boxes,
                                 int64_t num_classes, bool inside_area) {
  check_ratio_inputs(labels, boxes, num_classes);
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2), N = boxes.size(1);
  const int64_t M = num_classes;
  at::Tensor ratios = at::zeros({B, N, M}, labels.options().dtype(at::kFloat));
  if (B == 0 || N == 0) return ratios;
  at::Tensor integral = at::empty({B, M, H + 1, W + 1}, labels.options().dtype(at::kInt));
  int64_t bad = 0;
  bool found_bad = false;
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "foreground_ratios", [&] {
    found_bad = build_integral<scalar_t>(labels, M, integral, &bad);
  });
  TORCH_CHECK(!found_bad, "foreground_ratios: labels must lie in [0, num_classes=", M,
              "), found ", bad);
  const auto box = boxes.accessor<int64_t, 3>();
  const int32_t* I = integral.data_ptr<int32_t>();
  float* out = ratios.data_ptr<float>();
  // Validate every box before any work, so that an error leaves no partial result behind.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      TORCH_CHECK(box[b][n][2] >= box[b][n][0] && box[b][n][3] >= box[b][n][1],
                  "foreground_ratios: boxes must have y1 >= y0 and x1 >= x0 (inclusive ends); "
                  "box ", n, " of image ", b, " is (", box[b][n][0], ", ", box[b][n][1], ", ",
                  box[b][n][2], ", ", box[b][n][3], ")");
  at::parallel_for(0, B * N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      m::box_ratios(I + b * M * (H + 1) * (W + 1), (H + 1) * (W + 1), H, W, M, box[b][n][0],
                    box[b][n][1], box[b][n][2], box[b][n][3], inside_area, out + bn * M);
    }
  });
  return ratios;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) { m.impl("foreground_ratios", &foreground_ratios_cpu); }

}  // namespace cpu
}  // namespace pdcr
