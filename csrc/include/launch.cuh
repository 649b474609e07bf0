// Host-side launch helpers shared by every pattern: SMs and resident CTAs per SM (asked once per
// device and kernel, then cached: a launch costs no occupancy query), the persistent grid they
// give, and the opt-in for more than 48 KB of dynamic shared memory.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "common.cuh"

namespace fusednorm {

constexpr int kMaxDevices = 64;

inline int current_device() {
  int d = 0;
  if (cudaGetDevice(&d) != cudaSuccess) {
    (void)cudaGetLastError();
    d = 0;
  }
  return d < 0 || d >= kMaxDevices ? 0 : d;
}

// Resident CTAs per SM of kKernel at `threads` threads and `smem` dynamic bytes, at least 1.
// Opts the kernel in to `smem` first when it is above the 48 KB default (needed before the
// launch too, and also once per device).
template <auto kKernel>
int resident_ctas(int threads, size_t smem) {
  // per device: (smem << 8) | ctas of the last query, 0 = not asked yet
  static std::atomic<long long> cache[kMaxDevices];
  std::atomic<long long>& slot = cache[current_device()];
  const long long hit = slot.load(std::memory_order_relaxed);
  if (hit != 0 && (hit >> 8) == (long long)smem) return int(hit & 0xff);
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
    (void)cudaGetLastError();  // the launch then reports it, naming the kernel
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, threads, smem) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 1;
  }
  n = std::min(std::max(n, 1), 255);
  slot.store(((long long)smem << 8) | n, std::memory_order_relaxed);
  return n;
}

// Number of SMs of the current device, cached per device.
inline int sm_count_cached() {
  static std::atomic<int> cache[kMaxDevices];
  std::atomic<int>& slot = cache[current_device()];
  int n = slot.load(std::memory_order_relaxed);
  if (n == 0) {
    n = sm_count();
    slot.store(n, std::memory_order_relaxed);
  }
  return n;
}

// A persistent grid: every CTA resident at once (SMs x resident CTAs, at most `per_sm_cap` of
// them per SM when > 0), never more than there are tiles of work.
template <auto kKernel>
unsigned persistent_grid(int threads, size_t smem, int64_t tiles, int per_sm_cap = 0) {
  int per_sm = resident_ctas<kKernel>(threads, smem);
  if (per_sm_cap > 0) per_sm = std::min(per_sm, per_sm_cap);
  const int64_t g = std::min<int64_t>(tiles, int64_t(sm_count_cached()) * per_sm);
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(g, kMaxGrid)));
}

}  // namespace fusednorm
