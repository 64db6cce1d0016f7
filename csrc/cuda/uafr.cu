// uafr.cu — CUDA implementation of pdcr::uafr_reweight and its backward (eqs. 13-15).
//
// One thread per pixel: the statistics of its M logits (pdcr_math.h: uafr_stats), then every
// feature channel of that pixel; consecutive threads take consecutive pixels, so every load and
// store is coalesced. The backward recomputes the statistics instead of saving them.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "pdcr_math.h"

namespace pdcr {
namespace cuda {
namespace {

namespace m = ::pdcr::math;

template <typename T, typename A>
__global__ void uafr_forward_kernel(const T* q, const T* z, int64_t B, int64_t C, int64_t M,
                                    int64_t HW, T* out, A* uncertainty) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * HW) return;
  const int64_t b = idx / HW, p = idx % HW;
  A lse;
  const A u = m::uafr_stats(z + b * M * HW + p, HW, M, &lse);
  uncertainty[idx] = u;
  const A scale = m::uafr_scale(u);
  for (int64_t c = 0; c < C; ++c) {
    const int64_t at = (b * C + c) * HW + p;
    out[at] = T(A(q[at]) * scale);
  }
}

template <typename T, typename A>
__global__ void uafr_backward_kernel(const T* g, const T* q, const T* z, int64_t B, int64_t C,
                                     int64_t M, int64_t HW, T* dq, T* dz) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * HW) return;
  const int64_t b = idx / HW, p = idx % HW;
  A lse;
  const A u = m::uafr_stats(z + b * M * HW + p, HW, M, &lse);
  const A log_m = log(A(M));
  const A scale = m::uafr_scale(u);
  A d_unc = 0;  // ∂L/∂U = -Σ_c g_c Q_c
  for (int64_t c = 0; c < C; ++c) {
    const int64_t at = (b * C + c) * HW + p;
    const A gv = A(g[at]);
    dq[at] = T(gv * scale);
    d_unc -= gv * A(q[at]);
  }
  for (int64_t mm = 0; mm < M; ++mm) {
    const int64_t at = (b * M + mm) * HW + p;
    dz[at] = T(m::uafr_logit_grad(d_unc, A(z[at]), lse, u, log_m));
  }
}

std::tuple<at::Tensor, at::Tensor> uafr_reweight_cuda(const at::Tensor& features,
                                                      const at::Tensor& logits) {
  check_uafr_inputs(features, logits);
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor q = features.contiguous(), z = logits.contiguous();
  const int64_t B = q.size(0), C = q.size(1), M = z.size(1), HW = uafr_pixels(q);
  at::Tensor out = at::empty_like(q);
  at::Tensor uncertainty = at::empty(uafr_map_shape(q), q.options().dtype(uafr_stat_dtype(q)));
  if (B * HW == 0) return {out, uncertainty};
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "uafr_reweight_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    uafr_forward_kernel<scalar_t, A><<<ceil_div(B * HW, threads), threads, 0,
                                       at::cuda::getCurrentCUDAStream()>>>(
        q.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), B, C, M, HW, out.data_ptr<scalar_t>(),
        uncertainty.data_ptr<A>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, uncertainty};
}

std::tuple<at::Tensor, at::Tensor> uafr_reweight_backward_cuda(const at::Tensor& grad,
                                                               const at::Tensor& features,
                                                               const at::Tensor& logits) {
  check_uafr_inputs(features, logits);
  TORCH_CHECK(grad.sizes() == features.sizes(), "uafr_reweight_backward: grad must have the shape of features ",
              features.sizes(), ", got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor g = grad.to(features.scalar_type()).contiguous();
  const at::Tensor q = features.contiguous(), z = logits.contiguous();
  const int64_t B = q.size(0), C = q.size(1), M = z.size(1), HW = uafr_pixels(q);
  at::Tensor dq = at::empty_like(q), dz = at::empty_like(z);
  if (B * HW == 0) return {dq, dz};
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "uafr_reweight_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    uafr_backward_kernel<scalar_t, A><<<ceil_div(B * HW, threads), threads, 0,
                                        at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), B, C, M, HW,
        dq.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dz};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdcr, CUDA, m) {
  m.impl("uafr_reweight", &uafr_reweight_cuda);
  m.impl("uafr_reweight_backward", &uafr_reweight_backward_cuda);
}

}  // namespace cuda
}  // namespace pdcr
