// The CUDA dragsaw kernels for __half features (see dragsaw_kernels.cuh).
#include "cuda/dragsaw_kernels.cuh"

namespace pdcr {
namespace cuda {
namespace detail {

template std::tuple<at::Tensor, at::Tensor> forward_impl<__half>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              double);
template std::tuple<at::Tensor, at::Tensor> backward_impl<__half>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double);

}  // namespace detail
}  // namespace cuda
}  // namespace pdcr
