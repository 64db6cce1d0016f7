// dragsaw_cuda.h — the typed entry points of the CUDA dragsaw loss, defined in
// dragsaw_kernels.cuh and instantiated once per feature type in dragsaw_loss_<type>.cu.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "cuda/cuda_api.h"  // backward_variant_name

namespace pdcr {
namespace cuda {

// Patch sizes per launch: the kernels keep each row's state for every size in registers.
constexpr int kMaxP = 8;

namespace detail {

template <typename In>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& rows, const at::Tensor& phi_rows,
                                                const at::Tensor& cols, const at::Tensor& phi_cols,
                                                double tau);

template <typename In>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rows,
                                                 const at::Tensor& phi_rows, const at::Tensor& cols,
                                                 const at::Tensor& phi_cols, const at::Tensor& lse,
                                                 double tau);

}  // namespace detail
}  // namespace cuda
}  // namespace pdcr
