// cuda_api.h — host functions of the CUDA kernels that the Python module exposes.
#pragma once

#include <string>

namespace pdcr {
namespace cuda {

// Backward variant of the dragsaw loss: "atomic" (default: one kernel, column gradients added with
// atomicAdd) or "split" (rows kernel + columns kernel, deterministic; also used whenever
// torch.use_deterministic_algorithms(True) is on).
std::string backward_variant_name();
void set_backward_variant(const std::string& name);

}  // namespace cuda
}  // namespace pdcr
