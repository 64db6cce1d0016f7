// checks.h — argument checks shared by the CPU and CUDA implementations of every op.
//
// The Python wrappers check the same things first and raise ValueError; these TORCH_CHECKs guard
// direct calls of torch.ops.pdcr.* and name the offending argument the same way.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <cmath>

namespace pdcr {

inline bool is_supported_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

inline void check_same_device(const char* op, const char* name_a, const at::Tensor& a,
                              const char* name_b, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// rows (B, N, C), phi_rows (B, P, N, M), cols (B, K, C), phi_cols (B, P, K, M), tau > 0.
inline void check_dragsaw_inputs(const at::Tensor& rows, const at::Tensor& phi_rows,
                                 const at::Tensor& cols, const at::Tensor& phi_cols, double tau) {
  constexpr const char* op = "dragsaw_loss";
  TORCH_CHECK(rows.dim() == 3, op, ": rows must have shape (B, N, C), got ", rows.sizes());
  TORCH_CHECK(cols.dim() == 3, op, ": cols must have shape (B, K, C), got ", cols.sizes());
  TORCH_CHECK(phi_rows.dim() == 4, op, ": phi_rows must have shape (B, P, N, M), got ",
              phi_rows.sizes());
  TORCH_CHECK(phi_cols.dim() == 4, op, ": phi_cols must have shape (B, P, K, M), got ",
              phi_cols.sizes());
  TORCH_CHECK(is_supported_float(rows), op,
              ": rows must be float16, bfloat16, float32 or float64, got ", rows.scalar_type());
  TORCH_CHECK(cols.scalar_type() == rows.scalar_type(), op, ": cols dtype ", cols.scalar_type(),
              " differs from rows dtype ", rows.scalar_type());
  TORCH_CHECK(is_supported_float(phi_rows), op, ": phi_rows must be floating, got ",
              phi_rows.scalar_type());
  TORCH_CHECK(is_supported_float(phi_cols), op, ": phi_cols must be floating, got ",
              phi_cols.scalar_type());
  check_same_device(op, "rows", rows, "cols", cols);
  check_same_device(op, "rows", rows, "phi_rows", phi_rows);
  check_same_device(op, "rows", rows, "phi_cols", phi_cols);
  const int64_t B = rows.size(0), N = rows.size(1), C = rows.size(2);
  TORCH_CHECK(cols.size(0) == B, op, ": cols batch ", cols.size(0), " != rows batch ", B);
  TORCH_CHECK(cols.size(2) == C, op, ": cols width ", cols.size(2), " != rows width ", C);
  TORCH_CHECK(phi_rows.size(0) == B && phi_rows.size(2) == N, op,
              ": phi_rows must have shape (B=", B, ", P, N=", N, ", M), got ", phi_rows.sizes());
  TORCH_CHECK(phi_cols.size(0) == B && phi_cols.size(2) == cols.size(1), op,
              ": phi_cols must have shape (B=", B, ", P, K=", cols.size(1), ", M), got ",
              phi_cols.sizes());
  TORCH_CHECK(phi_cols.size(1) == phi_rows.size(1), op, ": phi_cols has P=", phi_cols.size(1),
              " patch sizes, phi_rows has P=", phi_rows.size(1));
  TORCH_CHECK(phi_cols.size(3) == phi_rows.size(3), op, ": phi_cols has M=", phi_cols.size(3),
              " classes, phi_rows has M=", phi_rows.size(3));
  TORCH_CHECK(phi_rows.size(1) >= 1, op, ": phi_rows needs at least one patch size (P >= 1)");
  TORCH_CHECK(phi_rows.size(3) >= 1, op, ": phi_rows needs at least one class (M >= 1)");
  TORCH_CHECK(C >= 1, op, ": rows need at least one channel (C >= 1)");
  TORCH_CHECK(std::isfinite(tau) && tau > 0, op, ": tau must be finite and > 0, got ", tau);
}

inline void check_dragsaw_backward_inputs(const at::Tensor& grad, const at::Tensor& rows,
                                          const at::Tensor& phi_rows, const at::Tensor& lse) {
  constexpr const char* op = "dragsaw_loss_backward";
  const auto expected = std::vector<int64_t>{rows.size(0), phi_rows.size(1), rows.size(1)};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), op, ": grad must have shape (B, P, N) = ",
              at::IntArrayRef(expected), ", got ", grad.sizes());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(expected), op, ": lse must have shape (B, P, N) = ",
              at::IntArrayRef(expected), ", got ", lse.sizes());
  TORCH_CHECK(is_supported_float(grad), op, ": grad must be floating, got ", grad.scalar_type());
  check_same_device(op, "grad", grad, "rows", rows);
  check_same_device(op, "lse", lse, "rows", rows);
}

// The loss's dtype: float32 for half-precision features (accumulated in float32), else theirs.
inline at::ScalarType dragsaw_output_dtype(const at::Tensor& rows) {
  const auto s = rows.scalar_type();
  return (s == at::kHalf || s == at::kBFloat16) ? at::kFloat : s;
}

// labels (B, H, W) or (B, D, H, W) integer; boxes (B, N, 4) or (B, N, 6) int64, matching;
// num_classes >= 1.
inline void check_ratio_inputs(const at::Tensor& labels, const at::Tensor& boxes,
                               int64_t num_classes) {
  constexpr const char* op = "foreground_ratios";
  TORCH_CHECK(labels.dim() == 3 || labels.dim() == 4, op,
              ": labels must have shape (B, H, W) or (B, D, H, W), got ", labels.sizes());
  // the integer types the kernels dispatch (AT_DISPATCH_INTEGRAL_TYPES): not uint16/32/64
  const auto label_type = labels.scalar_type();
  TORCH_CHECK(label_type == at::kByte || label_type == at::kChar || label_type == at::kShort ||
                  label_type == at::kInt || label_type == at::kLong,
              op, ": labels must be uint8, int8, int16, int32 or int64, got ", label_type);
  const int64_t dims = labels.dim() - 1;
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 2 * dims, op, ": boxes must have shape (B, N, ",
              2 * dims, ") for ", dims, "-D labels, got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong, op, ": boxes must be int64, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.size(0) == labels.size(0), op, ": boxes batch ", boxes.size(0),
              " != labels batch ", labels.size(0));
  TORCH_CHECK(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  int64_t entries = 1;
  for (int64_t a = 1; a <= dims; ++a) entries *= labels.size(a) + 1;
  TORCH_CHECK(entries < (int64_t(1) << 31), op, ": labels of ", labels.sizes().slice(1),
              " pixels are too large for 32-bit counts");
  check_same_device(op, "labels", labels, "boxes", boxes);
}

// positions (..., D) with D = 2 (row, col) or 3 (depth, row, col); size, stride, offset: D each.
inline void check_rf_inputs(const at::Tensor& positions, at::IntArrayRef size,
                            at::IntArrayRef stride, at::IntArrayRef offset) {
  constexpr const char* op = "rf_boxes";
  TORCH_CHECK(positions.dim() >= 1 && (positions.size(-1) == 2 || positions.size(-1) == 3), op,
              ": positions must have shape (..., 2) as (row, col) or (..., 3) as (depth, row, col), "
              "got ", positions.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kLong, op, ": positions must be int64, got ",
              positions.scalar_type());
  const int64_t dims = positions.size(-1);
  TORCH_CHECK(int64_t(size.size()) == dims && int64_t(stride.size()) == dims &&
                  int64_t(offset.size()) == dims,
              op, ": size, stride and offset must each give one value per axis (", dims, ")");
  for (int64_t a = 0; a < dims; ++a) {
    TORCH_CHECK(size[a] >= 1, op, ": size must be >= 1, got ", size);
    TORCH_CHECK(stride[a] >= 1, op, ": stride must be >= 1, got ", stride);
  }
}

// features (B, C, *S) and logits (B, M, *S), M >= 2, same dtype and device; S any number of
// spatial dimensions (H, W) or (D, H, W): every pixel is independent.
inline void check_uafr_inputs(const at::Tensor& features, const at::Tensor& logits) {
  constexpr const char* op = "uafr_reweight";
  TORCH_CHECK(features.dim() >= 3, op, ": features must have shape (B, C, *spatial), got ",
              features.sizes());
  TORCH_CHECK(logits.dim() == features.dim(), op, ": logits must have shape (B, M, *spatial) like "
              "features ", features.sizes(), ", got ", logits.sizes());
  TORCH_CHECK(is_supported_float(features), op,
              ": features must be float16, bfloat16, float32 or float64, got ", features.scalar_type());
  TORCH_CHECK(logits.scalar_type() == features.scalar_type(), op, ": logits dtype ",
              logits.scalar_type(), " differs from features dtype ", features.scalar_type());
  TORCH_CHECK(logits.size(0) == features.size(0) && logits.sizes().slice(2) == features.sizes().slice(2),
              op, ": logits must have shape (B=", features.size(0), ", M, ", features.sizes().slice(2),
              "), got ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 2, op, ": logits need at least 2 maps (M >= 2) for a normalised "
              "entropy, got M=", logits.size(1));
  check_same_device(op, "features", features, "logits", logits);
}

// Pixels per image of a (B, C, *S) tensor, and the shape (B, *S) of its uncertainty map.
inline int64_t uafr_pixels(const at::Tensor& features) {
  int64_t pixels = 1;
  for (int64_t d = 2; d < features.dim(); ++d) pixels *= features.size(d);
  return pixels;
}

inline std::vector<int64_t> uafr_map_shape(const at::Tensor& features) {
  std::vector<int64_t> shape{features.size(0)};
  for (int64_t d = 2; d < features.dim(); ++d) shape.push_back(features.size(d));
  return shape;
}

// The uncertainty map's dtype: float32 for half-precision features, else theirs.
inline at::ScalarType uafr_stat_dtype(const at::Tensor& features) {
  return dragsaw_output_dtype(features);
}

}  // namespace pdcr
