// ops.cpp — the schemas of the pdcr operators and the Python module that loads them.
//
// Kernels are registered per backend (cpu/*.cpp, cuda/*.cu); autograd formulas and fake (meta)
// kernels are registered from Python (pdcr_ext/_ops.py) with torch.library, so that the ops work
// under torch.compile and pass torch.library.opcheck.
#include <torch/extension.h>

#include "cpu/cpu_isa.h"
#include "cuda/dragsaw_layout.h"  // plain C++: exposed in every build (see below)
#if defined(PDCR_WITH_CUDA)
#include "cuda/cuda_api.h"
#endif

// The CUDA architectures of this build: setup.py passes TORCH_CUDA_ARCH_LIST as comma-separated
// tokens (-DPDCR_CUDA_ARCHS=8.0,9.0+PTX); # turns them back into the string "8.0,9.0+PTX".
#define PDCR_STRINGIFY(...) #__VA_ARGS__
#define PDCR_STRING(...) PDCR_STRINGIFY(__VA_ARGS__)

namespace {

namespace pc = ::pdcr::cuda;

pc::FeatureType feature_type(const std::string& dtype) {
  if (dtype == "float64") return pc::FeatureType::kFloat64;
  if (dtype == "float32") return pc::FeatureType::kFloat32;
  if (dtype == "float16") return pc::FeatureType::kFloat16;
  if (dtype == "bfloat16") return pc::FeatureType::kBFloat16;
  TORCH_CHECK(false, "dtype must be 'float64', 'float32', 'float16' or 'bfloat16', got '", dtype, "'");
  return pc::FeatureType::kFloat32;
}

pc::DragsawKernel kernel_kind(const std::string& kernel) {
  if (kernel == "forward") return pc::DragsawKernel::kForward;
  if (kernel == "split") return pc::DragsawKernel::kBackwardSplit;
  if (kernel == "atomic") return pc::DragsawKernel::kBackwardAtomic;
  TORCH_CHECK(false, "kernel must be 'forward', 'split' or 'atomic', got '", kernel, "'");
  return pc::DragsawKernel::kForward;
}

// Shared memory (bytes) of one block of a CUDA dragsaw kernel (dragsaw_layout.h).
int64_t cuda_dragsaw_shared_memory(const std::string& dtype, const std::string& kernel, int64_t tile,
                                   int64_t channels, int64_t P, int64_t M) {
  const pc::DragsawKernel k = kernel_kind(kernel);
  const pc::Layout layout(int(tile), int(pc::padded_channels(channels)), int(P), int(M), k,
                          pc::kernel_tile_bytes(feature_type(dtype), k));
  return int64_t(layout.total);
}

// (forward tile, backward kernel, backward tile) that the CUDA code chooses for a device with
// `limit` bytes of opt-in shared memory per block; tile 0: does not fit.
std::tuple<int64_t, std::string, int64_t> cuda_dragsaw_plan(const std::string& dtype, int64_t channels,
                                                            int64_t P, int64_t M, int64_t limit,
                                                            bool prefer_atomic) {
  const pc::FeatureType t = feature_type(dtype);
  const int Cp = int(pc::padded_channels(channels));
  const int forward = pc::choose_tile(limit, Cp, int(P), int(M), pc::DragsawKernel::kForward,
                                      pc::kernel_tile_bytes(t, pc::DragsawKernel::kForward));
  const pc::BackwardPlan plan = pc::plan_backward(
      limit, Cp, int(P), int(M), pc::kernel_tile_bytes(t, pc::DragsawKernel::kBackwardSplit), prefer_atomic);
  const bool atomic = plan.kernel == pc::DragsawKernel::kBackwardAtomic;
  return {forward, plan.tile == 0 ? "none" : (atomic ? "atomic" : "split"), plan.tile};
}

}  // namespace

TORCH_LIBRARY(pdcr, m) {
  // Receptive-field boxes (eqs. 5-7) or square patches (H-PDCR) of feature positions, 2-D or 3-D.
  // positions (..., 2) int64 as (row, col) -> (..., 4) int64 as (y0, x0, y1, x1), inclusive;
  // positions (..., 3) as (depth, row, col) -> (..., 6) as (z0, y0, x0, z1, y1, x1).
  m.def("rf_boxes(Tensor positions, int[] size, int[] stride, int[] offset) -> Tensor");
  // Foreground ratios (eq. 4) from an integral image (volume) of the one-hot labels.
  // labels (B, H, W) or (B, D, H, W) int, boxes (B, N, 4) or (B, N, 6) int64
  // -> (B, N, num_classes) float32. Pixels labelled ignore_index belong to no class (like pixels
  // outside the image); with inside_area they are also left out of the area. The CPU kernel
  // raises on labels outside [0, num_classes) other than ignore_index (found while it builds the
  // integrals); the CUDA kernel does not check (that would cost a host synchronisation): there,
  // such labels count for no class, and the Python wrapper checks before calling it.
  m.def(
      "foreground_ratios(Tensor labels, Tensor boxes, int num_classes, bool inside_area, "
      "int? ignore_index=None) -> Tensor");
  // Fused dragsaw loss (eqs. 3, 8, 9): per-row losses (B, P, N) and the per-row log-sum-exp of
  // the push logits (B, P, N), which is all the backward needs.
  m.def(
      "dragsaw_loss(Tensor rows, Tensor phi_rows, Tensor cols, Tensor phi_cols, float tau) "
      "-> (Tensor, Tensor)");
  // Its backward: gradients for rows (B, N, C) and cols (B, K, C).
  m.def(
      "dragsaw_loss_backward(Tensor grad, Tensor rows, Tensor phi_rows, Tensor cols, "
      "Tensor phi_cols, Tensor lse, float tau) -> (Tensor, Tensor)");
  // UAFR (eqs. 13-15), fused: softmax over the M maps, normalised entropy U, Q * (2 - U).
  // features (B, C, *S), logits (B, M, *S), S = (H, W) or (D, H, W) or any other spatial shape
  // -> (re-weighted features, U (B, *S)).
  m.def("uafr_reweight(Tensor features, Tensor logits) -> (Tensor, Tensor)");
  m.def("uafr_reweight_backward(Tensor grad, Tensor features, Tensor logits) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "pdcr_ext native operators (registered under torch.ops.pdcr)";
  module.def("cpu_isa", &pdcr::cpu::active_isa_name,
             "Instruction set of the CPU dragsaw kernels in use: avx512, avx2 or baseline.");
  module.def("available_cpu_isas", &pdcr::cpu::available_isa_names,
             "Instruction sets this build has kernels for and this CPU supports.");
  module.def("set_cpu_isa", &pdcr::cpu::set_active_isa, pybind11::arg("name"),
             "Select the CPU dragsaw kernels (for tests and benchmarks); raises if unsupported.");
#if defined(PDCR_WITH_CUDA) && defined(PDCR_CUDA_ARCHS)
  module.def("cuda_arch_list", []() { return std::string(PDCR_STRING(PDCR_CUDA_ARCHS)); },
             "CUDA architectures this build targets (TORCH_CUDA_ARCH_LIST at build time).");
#else
  module.def("cuda_arch_list", []() { return std::string(); },
             "CUDA architectures this build targets; empty: none (or not recorded).");
#endif

  module.def("cuda_dragsaw_shared_memory", &cuda_dragsaw_shared_memory, pybind11::arg("dtype"),
             pybind11::arg("kernel"), pybind11::arg("tile"), pybind11::arg("channels"),
             pybind11::arg("P"), pybind11::arg("M"),
             "Shared memory (bytes) of one block of a CUDA dragsaw kernel ('forward', 'split', "
             "'atomic'): the layout the kernels use (csrc/cuda/dragsaw_layout.h), in every build.");
  module.def("cuda_dragsaw_plan", &cuda_dragsaw_plan, pybind11::arg("dtype"), pybind11::arg("channels"),
             pybind11::arg("P"), pybind11::arg("M"), pybind11::arg("limit"),
             pybind11::arg("prefer_atomic"),
             "(forward tile, backward kernel, backward tile) the CUDA code picks for `limit` bytes "
             "of opt-in shared memory per block; tile 0 / 'none': does not fit.");
#if defined(PDCR_WITH_CUDA)
  module.def("has_cuda_kernels", []() { return true; });
  module.def("cuda_backward", &pdcr::cuda::backward_variant_name,
             "Backward variant of the CUDA dragsaw loss: 'split' (no atomics) or 'atomic'.");
  module.def("set_cuda_backward", &pdcr::cuda::set_backward_variant, pybind11::arg("name"),
             "Select the CUDA dragsaw backward variant: 'split' or 'atomic'.");
#else
  module.def("has_cuda_kernels", []() { return false; });
#endif
}
