// The CUDA dragsaw kernels for __nv_bfloat16 features (see dragsaw_kernels.cuh).
#include "cuda/dragsaw_kernels.cuh"

namespace pdcr {
namespace cuda {
namespace detail {

template std::tuple<at::Tensor, at::Tensor> forward_impl<__nv_bfloat16>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              double);
template std::tuple<at::Tensor, at::Tensor> backward_impl<__nv_bfloat16>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double);

}  // namespace detail
}  // namespace cuda
}  // namespace pdcr
