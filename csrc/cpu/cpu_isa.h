// cpu_isa.h — run-time choice among the dragsaw kernels compiled for several instruction sets.
#pragma once

#include <string>
#include <vector>

#include "cpu/dragsaw_kernel.h"

namespace pdcr {
namespace cpu {

// The kernels in use: the best the CPU supports, unless PDCR_CPU_ISA or set_active_isa chose.
const KernelTable& active_kernels();
std::string active_isa_name();
std::vector<std::string> available_isa_names();
void set_active_isa(const std::string& name);

}  // namespace cpu
}  // namespace pdcr
