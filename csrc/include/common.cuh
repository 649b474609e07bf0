// Device-side basics shared by every kernel: dtype conversion, 16-byte vector loads/stores (fp32
// values or packs in the storage dtype) with their runtime eligibility check, index division,
// runtime-dtype scalars, dtype dispatch and the launch check.
// No torch headers here: kernels are raw pointers + sizes + cudaStream_t.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <cstring>
#include <string>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fusednorm.h"

namespace fusednorm {

// Every statistic and every reduction is carried in fp32, whatever the storage dtype.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
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

// VEC elements of T in their storage form: the register cache of a row (a 16-bit row costs half
// the registers of an fp32 copy) and the unit of every vector load/store (one 16-byte access per
// 16 bytes of pack).  Held as 32-bit words: as an array of 16-bit elements the compiler gives
// each element a register of its own.  (A single 16-bit element: VEC == 1 with a 16-bit T.)
template <typename T, int VEC, bool kWords = (VEC * sizeof(T)) % 4 == 0>
struct Pack;
template <typename T, int VEC>
struct alignas((VEC * sizeof(T)) % 16 == 0 ? 16 : 4) Pack<T, VEC, true> {
  uint32_t u[VEC * sizeof(T) / 4];
};
template <typename T>
struct Pack<T, 1, false> {
  T v;
};

template <int VEC, typename T>
__device__ __forceinline__ Pack<T, VEC> ld_pack(const T* __restrict__ p) {
  static_assert(VEC == 1 || (VEC * int(sizeof(T))) % 16 == 0, "vector must be whole 16-byte chunks");
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <int VEC, typename T>
__device__ __forceinline__ void st_pack(T* __restrict__ p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

template <typename To, typename From>
__device__ __forceinline__ To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bitcast between types of one size");
  To t;
  memcpy(&t, &f, sizeof(To));
  return t;
}

template <typename T, int VEC>
__device__ __forceinline__ void unpack(const Pack<T, VEC>& pk, float* out) {
  if constexpr ((VEC * sizeof(T)) % 4 != 0) {
    out[0] = to_float(pk.v);
  } else if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = __uint_as_float(pk.u[i]);
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    // a bf16 is the upper half of the fp32 with the same value: exact, one instruction each
#pragma unroll
    for (int j = 0; j < VEC / 2; ++j) {
      out[2 * j] = __uint_as_float(pk.u[j] << 16);
      out[2 * j + 1] = __uint_as_float(pk.u[j] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC / 2; ++j) {
      const float2 f = __half22float2(bitcast<__half2>(pk.u[j]));
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  }
}

// Rounded to nearest even, element by element (exactly from_float<T>).
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> pack(const float* in) {
  Pack<T, VEC> pk;
  if constexpr ((VEC * sizeof(T)) % 4 != 0) {
    pk.v = from_float<T>(in[0]);
  } else if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) pk.u[i] = __float_as_uint(in[i]);
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
#pragma unroll
    for (int j = 0; j < VEC / 2; ++j) pk.u[j] = bitcast<uint32_t>(__floats2bfloat162_rn(in[2 * j], in[2 * j + 1]));
  } else {
#pragma unroll
    for (int j = 0; j < VEC / 2; ++j) pk.u[j] = bitcast<uint32_t>(__floats2half2_rn(in[2 * j], in[2 * j + 1]));
  }
  return pk;
}

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> zero_pack() {
  const float z[VEC] = {};
  return pack<T, VEC>(z);
}

// A register the compiler must assume changed here (an empty asm that "writes" it): values it
// derived from a cached pack before this point (e.g. the fp32 copy of a bf16 row, converted for
// the first pass) are recomputed after it instead of being kept live across a reduction, so the
// row stays cached at its storage width.  Changes nothing: the emulator skips it.
template <typename T, int VEC>
__device__ __forceinline__ void opaque(Pack<T, VEC>& pk) {
#ifndef FN_EMU
  if constexpr ((VEC * sizeof(T)) % 4 == 0) {
#pragma unroll
    for (int i = 0; i < int(VEC * sizeof(T) / 4); ++i) asm volatile("" : "+r"(pk.u[i]));
  } else {
    unsigned short u = bitcast<unsigned short>(pk.v);
    asm volatile("" : "+h"(u));
    pk.v = bitcast<T>(u);
  }
#endif
}
template <typename P>
__device__ __forceinline__ void opaque_ptr(P*& p) {
#ifndef FN_EMU
  asm volatile("" : "+l"(p));
#endif
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

// Optional per-channel scalar (weight/bias of one channel): p[i], or `fill` when absent.
template <typename P>
__device__ __forceinline__ float value_or(const P* p, int64_t i, float fill) {
  return p != nullptr ? to_float(p[i]) : fill;
}

// Host side: a pointer may take VEC-wide loads when it is 16-byte aligned (nullptr: absent,
// so no constraint).
inline bool aligned16(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0;
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n / d for 0 <= n < 2^31 by a multiply and a shift (the divisor fixed per launch, the magic
// number computed on the host): index arithmetic without an integer division per element.
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(uint32_t(divisor)) {
    while (shift < 31 && (uint32_t(1) << shift) < d) ++shift;
    mul = uint32_t((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, mul) + n) >> shift; }
};

// Scalars of a runtime dtype (running statistics: any float dtype, read and written once per
// channel, so a switch costs nothing and saves an instantiation per buffer dtype).
__device__ __forceinline__ float load_any(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat16: return to_float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16: return to_float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::kFloat64: return float(static_cast<const double*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Stores v computed in fp32 (fp64 buffers: the fp32 value, as the fp32 computation gives it).
__device__ __forceinline__ void store_any(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kFloat16: static_cast<__half*>(p)[i] = from_float<__half>(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = from_float<__nv_bfloat16>(v); break;
    case DType::kFloat64: static_cast<double*>(p)[i] = double(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

inline size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// f(std::integral_constant<int, V>{}) with V = kVec16<T> (16-byte vectors) when `vec`, else V = 1:
// the one place a launcher turns its runtime alignment check into a template argument.
template <typename T, class F>
void with_vec(bool vec, F&& f) {
  if (vec) f(std::integral_constant<int, kVec16<T>>{});
  else f(std::integral_constant<int, 1>{});
}

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
