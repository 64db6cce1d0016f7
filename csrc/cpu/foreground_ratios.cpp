// foreground_ratios.cpp — CPU implementation of pdcr::foreground_ratios (eq. 4), 2-D and 3-D.
//
// One integral image (2-D labels) or integral volume (3-D) per (image, class) of the one-hot
// labels, then O(M) per box whatever its size (pdcr_math.h: box_count). With ignore_index, one
// more integral array counts the ignored pixels (needed only for the "inside" area). Labels
// outside [0, num_classes) other than ignore_index are an error, found while building the
// integrals (no extra pass), not a silent miscount.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <optional>

#include "checks.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cpu {
namespace {

namespace m = ::pdcr::math;

// The integral arrays of one call: (B, planes, [D+1,] H+1, W+1) int32, plane p < M counting
// class p and plane M (when present) the ignored pixels.
struct Integrals {
  at::Tensor data;
  int64_t planes;       // M, or M + 1 with the ignored pixels' plane
  int64_t plane_size;   // entries per plane
  int64_t size[3];      // the label map's extent per axis ((z,) y, x)
  int dims;             // 2 or 3
};

// Fills plane `plane` of image b: per slice, running row sums added to the row above (the 2-D
// integral image), and in 3-D the slice's integral added to the previous slice's.
template <typename L>
void fill_plane(const L* labels, const Integrals& g, int64_t plane, int64_t num_classes,
                std::optional<int64_t> ignore_index, int32_t* I, std::atomic<bool>* found_bad,
                std::atomic<int64_t>* bad_value) {
  const int64_t D = g.dims == 3 ? g.size[0] : 1, H = g.size[g.dims - 2], W = g.size[g.dims - 1];
  const int64_t slice = (H + 1) * (W + 1);
  // In 3-D, slice z of the labels fills integral slice z + 1 (slice 0 stays zero).
  const int64_t first = g.dims == 3 ? 1 : 0;
  if (g.dims == 3)
    for (int64_t q = 0; q < slice; ++q) I[q] = 0;
  const bool check = plane == 0;  // one plane looks at every label: it reports bad values
  for (int64_t z = 0; z < D; ++z) {
    int32_t* S = I + (z + first) * slice;
    const int32_t* prev = g.dims == 3 ? S - slice : nullptr;
    const L* lab = labels + z * H * W;
    for (int64_t x = 0; x <= W; ++x) S[x] = prev ? prev[x] : 0;
    for (int64_t y = 0; y < H; ++y) {
      int32_t row_sum = 0;
      int32_t* row = S + (y + 1) * (W + 1);
      const int32_t* above = row - (W + 1);
      row[0] = prev ? prev[(y + 1) * (W + 1)] : 0;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t v = static_cast<int64_t>(lab[y * W + x]);
        const bool ignored = ignore_index.has_value() && v == *ignore_index;
        if (check && !ignored && (v < 0 || v >= num_classes) && !found_bad->exchange(true))
          *bad_value = v;
        row_sum += plane < num_classes ? (v == plane && !ignored) : ignored;
        // 2-D: above + row sum. 3-D: the same within the slice, plus the previous slice's
        // integral at this point minus its contribution already held by `above`.
        row[x + 1] = above[x + 1] + row_sum + (prev ? prev[(y + 1) * (W + 1) + x + 1] - prev[y * (W + 1) + x + 1] : 0);
      }
    }
  }
}

at::Tensor foreground_ratios_cpu(const at::Tensor& labels, const at::Tensor& boxes,
                                 int64_t num_classes, bool inside_area,
                                 std::optional<int64_t> ignore_index) {
  check_ratio_inputs(labels, boxes, num_classes);
  const int dims = static_cast<int>(labels.dim()) - 1;
  const int64_t B = labels.size(0), N = boxes.size(1), M = num_classes;
  at::Tensor ratios = at::zeros({B, N, M}, labels.options().dtype(at::kFloat));
  if (B == 0 || N == 0) return ratios;

  Integrals g;
  g.dims = dims;
  g.plane_size = 1;
  for (int a = 0; a < dims; ++a) {
    g.size[a] = labels.size(a + 1);
    g.plane_size *= g.size[a] + 1;
  }
  // the ignored pixels' plane is needed only to take them out of the "inside" area
  g.planes = M + (ignore_index.has_value() && inside_area ? 1 : 0);
  g.data = at::empty({B, g.planes, g.plane_size}, labels.options().dtype(at::kInt));
  const at::Tensor lab = labels.contiguous();
  const int64_t pixels = lab.numel() / std::max<int64_t>(B, 1);
  std::atomic<bool> found_bad{false};
  std::atomic<int64_t> bad_value{0};
  AT_DISPATCH_INTEGRAL_TYPES(lab.scalar_type(), "foreground_ratios", [&] {
    const scalar_t* data = lab.data_ptr<scalar_t>();
    int32_t* out = g.data.data_ptr<int32_t>();
    at::parallel_for(0, B * g.planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp) {
        const int64_t b = bp / g.planes, plane = bp % g.planes;
        fill_plane<scalar_t>(data + b * pixels, g, plane, M, ignore_index, out + bp * g.plane_size,
                             &found_bad, &bad_value);
      }
    });
  });
  if (ignore_index.has_value()) {
    TORCH_CHECK(!found_bad, "foreground_ratios: labels must lie in [0, num_classes=", M,
                ") or equal ignore_index=", *ignore_index, ", found ", bad_value.load());
  } else {
    TORCH_CHECK(!found_bad, "foreground_ratios: labels must lie in [0, num_classes=", M,
                "), found ", bad_value.load());
  }

  const at::Tensor bx = boxes.contiguous();
  const int64_t* box = bx.data_ptr<int64_t>();
  const int64_t width = 2 * dims;
  // Validate every box before any work, so that an error leaves no partial result behind.
  for (int64_t bn = 0; bn < B * N; ++bn)
    for (int a = 0; a < dims; ++a)
      TORCH_CHECK(box[bn * width + dims + a] >= box[bn * width + a],
                  "foreground_ratios: boxes must have end >= start on every axis (inclusive ends); "
                  "box ", bn % N, " of image ", bn / N, " is ", bx[bn / N][bn % N]);
  const int32_t* I = g.data.data_ptr<int32_t>();
  float* out = ratios.data_ptr<float>();
  const bool with_ignored = g.planes > M;
  at::parallel_for(0, B * N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int32_t* image = I + (bn / N) * g.planes * g.plane_size;
      const int32_t* ignored = with_ignored ? image + M * g.plane_size : nullptr;
      const int64_t* lo = box + bn * width;
      if (dims == 2)
        m::box_ratios<2>(image, g.plane_size, ignored, g.size, M, lo, lo + 2, inside_area, out + bn * M);
      else
        m::box_ratios<3>(image, g.plane_size, ignored, g.size, M, lo, lo + 3, inside_area, out + bn * M);
    }
  });
  return ratios;
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) { m.impl("foreground_ratios", &foreground_ratios_cpu); }

}  // namespace cpu
}  // namespace pdcr
