// cuda_api.h — host functions of the CUDA kernels that the Python module exposes.
#pragma once

#include <string>

namespace pdcr {
namespace cuda {

// Backward variant of the dragsaw loss: "split" (rows kernel + columns kernel, deterministic) or
// "atomic" (one kernel, column gradients added with atomicAdd).
std::string backward_variant_name();
void set_backward_variant(const std::string& name);

}  // namespace cuda
}  // namespace pdcr
