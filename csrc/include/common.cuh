// Device-side basics shared by every kernel: accumulation type, dtype conversion, 16-byte
// vector loads/stores with their runtime eligibility check, dtype dispatch and the launch check.
// No torch headers here: kernels are raw pointers + sizes + cudaStream_t.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fusednorm.h"

namespace fusednorm {

// Every statistic and every reduction is carried in fp32, whatever the storage dtype.
template <typename T> struct AccType { using type = float; };
using acc_t = float;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Round an fp32 value to T and back: what a value stored as T and read again looks like.
template <typename T> __device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// Vector width giving 16-byte accesses of the storage type.
template <typename T> constexpr int kVec16 = 16 / int(sizeof(T));

template <typename T, int N> struct alignas(16) Pack16 { T v[N]; };

// Load VEC consecutive elements as fp32.  VEC == 1: scalar.  VEC > 1: `p` is 16-byte aligned and
// VEC * sizeof(T) is a multiple of 16 (guaranteed by the caller's can_vectorize check), so the
// load is one or two 16-byte transactions.
template <int VEC, typename T>
__device__ __forceinline__ void load_f32(const T* __restrict__ p, float* out) {
  if constexpr (VEC == 1) {
    out[0] = to_float(p[0]);
  } else {
    constexpr int kPer = kVec16<T>;
    static_assert((VEC * int(sizeof(T))) % 16 == 0, "vector must be whole 16-byte chunks");
#pragma unroll
    for (int c = 0; c < VEC / kPer; ++c) {
      const Pack16<T, kPer> pk = reinterpret_cast<const Pack16<T, kPer>*>(p)[c];
#pragma unroll
      for (int i = 0; i < kPer; ++i) out[c * kPer + i] = to_float(pk.v[i]);
    }
  }
}

template <int VEC, typename T>
__device__ __forceinline__ void store_f32(T* __restrict__ p, const float* in) {
  if constexpr (VEC == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    constexpr int kPer = kVec16<T>;
    static_assert((VEC * int(sizeof(T))) % 16 == 0, "vector must be whole 16-byte chunks");
#pragma unroll
    for (int c = 0; c < VEC / kPer; ++c) {
      Pack16<T, kPer> pk;
#pragma unroll
      for (int i = 0; i < kPer; ++i) pk.v[i] = from_float<T>(in[c * kPer + i]);
      reinterpret_cast<Pack16<T, kPer>*>(p)[c] = pk;
    }
  }
}

// Optional per-column parameter (weight/bias): load base[col .. col+VEC), or `fill` when absent.
template <int VEC, typename T>
__device__ __forceinline__ void load_f32_or(const T* __restrict__ base, int64_t col, float* out,
                                            float fill) {
  if (base != nullptr) {
    load_f32<VEC>(base + col, out);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = fill;
  }
}

// Host side: a pointer may take VEC-wide loads when it is 16-byte aligned (nullptr: absent,
// so no constraint).
inline bool aligned16(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0;
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Number of SMs of the current device (launch heuristics and workspace sizing both use it,
// so they agree as long as the device does not change between the two calls).
inline int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();  // clear the sticky-free error so the next launch check is ours
    return 108;
  }
  return sms;
}

// After every launch: report the kernel by name.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fusednorm: CUDA kernel ") + kernel +
                             " failed to launch: " + cudaGetErrorString(err));
  }
}

// Grid-size limit used by launchers: grid-stride loops cover anything beyond it.
constexpr int64_t kMaxGrid = 2147483647LL;

}  // namespace fusednorm

#define FN_LAUNCH_CHECK(name) ::fusednorm::check_launch(name)

// Every launch site: FN_LAUNCH((kernel<...>), grid, block, smem, stream, args...), the kernel in
// parentheses.  Under nvcc it is exactly kernel<<<grid, block, smem, stream>>>(args...); the CPU
// emulator (csrc/emu/cuda_emu.h, included first) defines its own FN_LAUNCH.
#ifndef FN_LAUNCH
#define FN_UNPAREN_(...) __VA_ARGS__
#define FN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  FN_UNPAREN_ kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

// Dispatch on the storage dtype: binds `T` to float / __half / __nv_bfloat16.
#define FN_DISPATCH_ONE(dtype, T, ...)                                              \
  switch (dtype) {                                                                  \
    case ::fusednorm::DType::kFloat32: { using T = float; __VA_ARGS__; break; }       \
    case ::fusednorm::DType::kFloat16: { using T = __half; __VA_ARGS__; break; }      \
    case ::fusednorm::DType::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    default: throw std::invalid_argument("fusednorm: unsupported dtype");           \
  }

// Dispatch on (x dtype, weight dtype) where the weight is either x's dtype or float32: binds
// `T` (x, outputs) and `W` (weight, bias, weight gradients).
#define FN_DISPATCH_XW(xdt, wdt, where, T, W, ...)                                        \
  do {                                                                                    \
    if ((wdt) != (xdt) && (wdt) != ::fusednorm::DType::kFloat32) {                        \
      throw std::invalid_argument(std::string(where) + ": weight dtype " +               \
                                  ::fusednorm::dtype_name(wdt) + " must be x's dtype (" + \
                                  ::fusednorm::dtype_name(xdt) + ") or float32");         \
    }                                                                                     \
    FN_DISPATCH_ONE(xdt, T, if ((wdt) == (xdt)) { using W = T; __VA_ARGS__; }             \
                               else { using W = float; __VA_ARGS__; })                    \
  } while (0)
