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
// also the backward of float16 features (dragsaw_layout.h: backward_kernel_type)
template std::tuple<at::Tensor, at::Tensor> run_backward_kernels<float>(
    const Problem<float>&, int64_t, const at::Tensor&, const at::Tensor&, const at::TensorOptions&);

}  // namespace detail
}  // namespace cuda
}  // namespace pdcr
