// uafr.cpp — CPU implementation of pdcr::uafr_reweight and its backward (eqs. 13-15).
//
// First the per-pixel statistics (softmax, entropy) over the M maps, then the channels scaled
// along contiguous rows of pixels. The per-pixel math is pdcr_math.h's (uafr_stats, uafr_scale, uafr_logit_grad).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "pdcr_math.h"

namespace pdcr {
namespace cpu {
namespace {

namespace m = ::pdcr::math;

// Pixels per task in the passes that visit every channel of a pixel: long enough that each
// channel's run of pixels is a long contiguous stream.
constexpr int64_t kPixelBlock = 4096;

// U (and the log-sum-exp of the logits) of every pixel: (B, HW) each.
template <typename T, typename A>
void statistics(const T* z, int64_t B, int64_t M, int64_t HW, A* uncertainty, A* lse) {
  at::parallel_for(0, B * HW, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / HW, p = bp % HW;
      A log_sum_exp;
      uncertainty[bp] = m::uafr_stats<A>(z + b * M * HW + p, HW, M, &log_sum_exp);
      if (lse != nullptr) lse[bp] = log_sum_exp;
    }
  });
}

template <typename T, typename A>
void forward_kernel(const T* q, const T* z, int64_t B, int64_t C, int64_t M, int64_t HW, T* out,
                    A* uncertainty) {
  statistics<T, A>(z, B, M, HW, uncertainty, nullptr);
  // Q̂ = Q (2 - U): one contiguous row of pixels per (image, channel)
  at::parallel_for(0, B * C, 1 + 65536 / std::max<int64_t>(HW, 1), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const A* u = uncertainty + (bc / C) * HW;
      const T* src = q + bc * HW;
      T* dst = out + bc * HW;
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) dst[p] = T(A(src[p]) * m::uafr_scale(u[p]));
    }
  });
}

template <typename T, typename A>
void backward_kernel(const T* g, const T* q, const T* z, int64_t B, int64_t C, int64_t M,
                     int64_t HW, T* dq, T* dz) {
  std::vector<A> unc(B * HW), lse(B * HW);
  statistics<T, A>(z, B, M, HW, unc.data(), lse.data());
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock;
  const A log_m = std::log(A(M));
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> d_unc(kPixelBlock);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / blocks, p0 = (w % blocks) * kPixelBlock;
      const int64_t n = std::min(kPixelBlock, HW - p0);
      const A* u = unc.data() + b * HW + p0;
      std::fill(d_unc.begin(), d_unc.begin() + n, A(0));
      // Q̂ = Q (2 - U):  ∂L/∂Q = g (2 - U),  ∂L/∂U = -Σ_c g_c Q_c
      for (int64_t c = 0; c < C; ++c) {
        const int64_t at = (b * C + c) * HW + p0;
        A* du = d_unc.data();
#pragma omp simd
        for (int64_t p = 0; p < n; ++p) {
          const A gv = A(g[at + p]);
          dq[at + p] = T(gv * m::uafr_scale(u[p]));
          du[p] -= gv * A(q[at + p]);
        }
      }
      for (int64_t mm = 0; mm < M; ++mm) {
        const int64_t at = (b * M + mm) * HW + p0;
        for (int64_t p = 0; p < n; ++p)
          dz[at + p] = T(m::uafr_logit_grad(d_unc[p], A(z[at + p]), lse[b * HW + p0 + p], u[p], log_m));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> uafr_reweight_cpu(const at::Tensor& features,
                                                     const at::Tensor& logits) {
  check_uafr_inputs(features, logits);
  const at::Tensor q = features.contiguous(), z = logits.contiguous();
  const int64_t B = q.size(0), C = q.size(1), M = z.size(1), HW = uafr_pixels(q);
  at::Tensor out = at::empty_like(q);
  at::Tensor uncertainty = at::empty(uafr_map_shape(q), q.options().dtype(uafr_stat_dtype(q)));
  if (q.numel() == 0 && uncertainty.numel() == 0) return {out, uncertainty};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "uafr_reweight_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, A>(q.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), B, C, M, HW,
                                out.data_ptr<scalar_t>(), uncertainty.data_ptr<A>());
  });
  return {out, uncertainty};
}

std::tuple<at::Tensor, at::Tensor> uafr_reweight_backward_cpu(const at::Tensor& grad,
                                                              const at::Tensor& features,
                                                              const at::Tensor& logits) {
  check_uafr_inputs(features, logits);
  TORCH_CHECK(grad.sizes() == features.sizes(), "uafr_reweight_backward: grad must have the shape of features ",
              features.sizes(), ", got ", grad.sizes());
  const at::Tensor g = grad.to(features.scalar_type()).contiguous();
  const at::Tensor q = features.contiguous(), z = logits.contiguous();
  const int64_t B = q.size(0), C = q.size(1), M = z.size(1), HW = uafr_pixels(q);
  at::Tensor dq = at::empty_like(q), dz = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "uafr_reweight_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, A>(g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                 B, C, M, HW, dq.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>());
  });
  return {dq, dz};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CPU, m) {
  m.impl("uafr_reweight", &uafr_reweight_cpu);
  m.impl("uafr_reweight_backward", &uafr_reweight_backward_cpu);
}

}  // namespace cpu
}  // namespace pdcr
