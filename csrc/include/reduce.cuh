// Sums across threads.  Statistics are sums of fp32 values (two passes over a register-cached
// row, or sums of x - K with K a shift taken from the data), so every cross-thread step is an
// addition in a fixed order: results are bit-for-bit reproducible run to run (no atomics).
#pragma once

#include "common.cuh"

namespace fusednorm {

// Butterfly all-reduce of K sums inside a full warp.  Every lane ends with bitwise the same
// values: at each step lanes i and i^m add the same two numbers, and fp addition commutes.
template <int K>
__device__ __forceinline__ void warp_sum(float (&v)[K]) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], m);
  }
}

__device__ __forceinline__ int linear_tid() {
  return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

// All-reduce of K sums over the whole block (its size a multiple of 32).  `smem` holds 32 * K
// floats.  Each thread adds the warps' sums in warp order.  Ends with a barrier, so it may be
// called again at once.
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K], float* smem) {
  const int tid = linear_tid();
  const int lane = tid & 31, warp = tid >> 5;
  const int nwarps = int(blockDim.x * blockDim.y * blockDim.z) >> 5;
  warp_sum(v);
  if (nwarps == 1) return;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) smem[warp * K + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float s = 0.f;
    for (int w = 0; w < nwarps; ++w) s += smem[w * K + k];
    v[k] = s;
  }
  __syncthreads();
}

// Warp-per-item kernels (a warp per channel or group, items in thread order): this thread's item
// and its lane in the warp.
__device__ __forceinline__ int64_t warp_item() { return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; }
__device__ __forceinline__ int warp_lane() { return int(threadIdx.x) & 31; }

// Sums of the n pairs (p[2j], p[2j+1]) (partials of one item): lane-strided, then across the
// warp; every lane ends with the totals.
__device__ __forceinline__ void warp_sum_pairs(const float* __restrict__ p, int64_t n, int lane, float (&s)[2]) {
  s[0] = 0.f;
  s[1] = 0.f;
  for (int64_t j = lane; j < n; j += 32) {
    s[0] += p[2 * j];
    s[1] += p[2 * j + 1];
  }
  warp_sum(s);
}

// Mean and variance of a set from its shifted sums s1 = sum(x - K), s2 = sum((x - K)^2) over
// n = 1 / inv_n values, K one of the values: the terms stay O(variance) however large the mean
// (offset data), where E[x^2] - E[x]^2 would cancel.  Rounding can take the variance just
// below 0: clamped (a NaN stays NaN).
struct MeanVar {
  float mean, var;
};
__device__ __forceinline__ MeanVar shifted_mean_var(float k, float s1, float s2, float inv_n) {
  const float d = s1 * inv_n;
  float var = s2 * inv_n - d * d;
  var = var < 0.f ? 0.f : var;
  return MeanVar{k + d, var};
}

}  // namespace fusednorm
