// Reductions shared by the kernels: Welford update, Chan merge, fp32 pair sums, and their
// warp-shuffle + shared-memory block all-reduce.  Everything runs in a fixed order, so results
// are bit-for-bit reproducible run to run (no atomics anywhere).
#pragma once

#include "common.cuh"

namespace fusednorm {

// Running statistics of a set of values: count, mean and M2 = sum((v - mean)^2).
// Variance = m2 / n.  Counts are fp32 (exact up to 2^24; beyond that the relative weight error
// of ~6e-8 is harmless); cancellation-safe unlike E[x^2] - E[x]^2.
struct Welford {
  float mean;
  float m2;
  float n;
};

__device__ __forceinline__ Welford welford_init() { return Welford{0.f, 0.f, 0.f}; }

__device__ __forceinline__ void welford_update(Welford& w, float v) {
  w.n += 1.f;
  const float d = v - w.mean;
  w.mean += d / w.n;
  w.m2 += d * (v - w.mean);
}

// Chan et al.: merge two disjoint sets.
__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  const float d = b.mean - a.mean;
  const float fb = b.n / n;
  return Welford{a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb, n};
}

__device__ __forceinline__ Welford shfl_xor(const Welford& w, int lane_mask) {
  return Welford{__shfl_xor_sync(0xffffffffu, w.mean, lane_mask),
                 __shfl_xor_sync(0xffffffffu, w.m2, lane_mask),
                 __shfl_xor_sync(0xffffffffu, w.n, lane_mask)};
}

__device__ __forceinline__ Welford shfl_idx(const Welford& w, int src) {
  return Welford{__shfl_sync(0xffffffffu, w.mean, src), __shfl_sync(0xffffffffu, w.m2, src),
                 __shfl_sync(0xffffffffu, w.n, src)};
}

// Two fp32 sums carried together (backward passes: e.g. sum(dy) and sum(dy * xhat)).
struct Sum2 {
  float a;
  float b;
};

__device__ __forceinline__ Sum2 sum2_init() { return Sum2{0.f, 0.f}; }
__device__ __forceinline__ Sum2 merge(const Sum2& x, const Sum2& y) { return Sum2{x.a + y.a, x.b + y.b}; }
__device__ __forceinline__ Sum2 shfl_xor(const Sum2& s, int lane_mask) {
  return Sum2{__shfl_xor_sync(0xffffffffu, s.a, lane_mask),
              __shfl_xor_sync(0xffffffffu, s.b, lane_mask)};
}
__device__ __forceinline__ Sum2 shfl_idx(const Sum2& s, int src) {
  return Sum2{__shfl_sync(0xffffffffu, s.a, src), __shfl_sync(0xffffffffu, s.b, src)};
}

// Butterfly all-reduce inside a full warp.  The Chan merge is not bitwise commutative, so the
// lanes may differ in the last bit: lane 0's result is broadcast so every lane uses the same value.
template <typename Acc>
__device__ __forceinline__ Acc warp_allreduce(Acc v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = merge(v, shfl_xor(v, m));
  return shfl_idx(v, 0);
}

// All-reduce over the whole block (blockDim.x a multiple of 32, at most 1024; 1-D blocks).
// `smem` holds 32 Acc.  Every thread returns the block's merge.  Ends with a barrier so the
// caller may call it again right away.
template <typename Acc>
__device__ __forceinline__ Acc block_allreduce(Acc v, Acc* smem) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_allreduce(v);
  if (nwarps == 1) return v;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    Acc w = lane < nwarps ? smem[lane] : Acc{};
    // Lanes past nwarps hold zero-initialised Acc: an identity for both Welford (n = 0) and Sum2.
    w = warp_allreduce(w);
    if (lane == 0) smem[0] = w;
  }
  __syncthreads();
  const Acc r = smem[0];
  __syncthreads();
  return r;
}

}  // namespace fusednorm
