// cuda_common.cuh — element types, conversions and warp reductions shared by the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace pdcr {
namespace cuda {

// Accumulation type of an input type: double for double, float for everything else.
template <typename In>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename In>
using acc_t = typename AccOf<In>::type;

// The CUDA type behind an ATen scalar type.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename To>
__device__ __forceinline__ To convert(float x) {
  return static_cast<To>(x);
}
template <>
__device__ __forceinline__ __half convert<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <typename To>
__device__ __forceinline__ To convert(double x) {
  return static_cast<To>(x);
}

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// exp of arguments <= 0 (logits minus their max or LSE): the fast hardware exp for float
// (about 2 ulp there), the accurate one for double.
__device__ __forceinline__ float exp_nonpositive(float x) { return __expf(x); }
__device__ __forceinline__ double exp_nonpositive(double x) { return exp(x); }

// Reductions over `width` consecutive lanes (a power of two dividing 32).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, width);
  return v;
}
template <typename T>
__device__ __forceinline__ T group_max(T v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset, width);
    v = other > v ? other : v;
  }
  return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace pdcr
