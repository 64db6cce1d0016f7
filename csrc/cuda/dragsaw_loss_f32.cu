// The CUDA dragsaw kernels for float features (see dragsaw_kernels.cuh).
#include "cuda/dragsaw_kernels.cuh"

namespace pdcr {
namespace cuda {
namespace detail {

template std::tuple<at::Tensor, at::Tensor> forward_impl<float>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              double);
template std::tuple<at::Tensor, at::Tensor> backward_impl<float>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double);

}  // namespace detail
}  // namespace cuda
}  // namespace pdcr
