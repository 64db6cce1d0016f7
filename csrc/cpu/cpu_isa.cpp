// cpu_isa.cpp — picks the dragsaw kernels for this CPU (see cpu_isa.h).
#include "cpu/cpu_isa.h"

#include <cstdlib>

#include <c10/util/Exception.h>

namespace pdcr {
namespace cpu {
namespace {

std::vector<KernelTable> supported_tables() {
  std::vector<KernelTable> tables;  // best first
#if defined(PDCR_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    tables.push_back(kernels_avx512());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    tables.push_back(kernels_avx2());
#endif
  tables.push_back(kernels_baseline());
  return tables;
}

const KernelTable* find_table(const std::string& name) {
  static const std::vector<KernelTable> tables = supported_tables();
  for (const auto& t : tables)
    if (name == t.name) return &t;
  return nullptr;
}

const KernelTable*& active() {
  static const KernelTable* table = [] {
    const char* env = std::getenv("PDCR_CPU_ISA");
    if (env != nullptr && *env != '\0') {
      const KernelTable* chosen = find_table(env);
      TORCH_CHECK(chosen != nullptr, "PDCR_CPU_ISA=", env,
                  " is not available on this CPU/build; available: ",
                  c10::Join(", ", available_isa_names()));
      return chosen;
    }
    return find_table(supported_tables().front().name);
  }();
  return table;
}

}  // namespace

const KernelTable& active_kernels() { return *active(); }

std::string active_isa_name() { return active()->name; }

std::vector<std::string> available_isa_names() {
  std::vector<std::string> names;
  for (const auto& t : supported_tables()) names.emplace_back(t.name);
  return names;
}

void set_active_isa(const std::string& name) {
  const KernelTable* chosen = find_table(name);
  TORCH_CHECK(chosen != nullptr, "set_cpu_isa: '", name, "' is not available; available: ",
              c10::Join(", ", available_isa_names()));
  active() = chosen;
}

}  // namespace cpu
}  // namespace pdcr
