// Self-test kernels for the emulator, written as CUDA device code and launched the way the
// project's launchers do (FN_LAUNCH + FN_LAUNCH_CHECK).  Some are correct and exercise a piece
// of CUDA semantics whose result tests/test_cuda_emu.py checks against a model; the others
// carry a deliberate bug the emulator or the test harness must catch.  Dispatched by name from
// fn_emu_selftest (capi.cpp); `out` is an fn_emu_alloc buffer sized by the caller.
#include <cassert>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.cuh"

namespace fn_selftest {

// CUDA's vector types: sizes and alignments as in vector_types.h (16-byte loads rely on them).
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4");
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2");
static_assert(sizeof(float3) == 12 && alignof(float3) == 4, "float3");
static_assert(sizeof(int4) == 16 && alignof(int4) == 16 && alignof(uint4) == 16, "int4");
static_assert(sizeof(double2) == 16 && alignof(double2) == 16, "double2");
static_assert(sizeof(short2) == 4 && alignof(short2) == 4 && alignof(uchar4) == 4, "short2/uchar4");
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && alignof(__half2) == 4, "half");
static_assert(std::is_trivially_copyable<__half>::value && std::is_trivial<__nv_bfloat16>::value, "half pod");

// ------------------------------------------------------------------ shared memory / barriers
template <bool kSync>
__global__ void smem_exchange(float* out) {
  __shared__ float s[1024];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = float(t + 1);
  if (kSync) __syncthreads();  // kSync == false: the bug, another thread's value is read early
  out[t] = s[(t + 1) % n];
}

__global__ void smem_last_writer(float* out) {
  __shared__ float s;
  s = float(threadIdx.x);  // bug: every thread writes the same word, no order between them
  __syncthreads();
  out[threadIdx.x] = s;
}

__global__ void uninit_smem(float* out) {
  __shared__ float s[256];
  if (threadIdx.x % 2 == 0) s[threadIdx.x] = 1.f;  // bug: odd entries never written
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void exit_then_barrier(float* out) {
  if (threadIdx.x >= 32) return;  // bug: the rest of the block still meets at a barrier
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void barrier_two_sites(float* out) {
  if (threadIdx.x & 1) {
    __syncthreads();  // bug: odd and even threads wait at different barriers
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void barrier_vs_shuffle(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x == 0) {
    __syncthreads();  // bug: lane 0 waits at the barrier, the other lanes in a shuffle with it
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Two rounds of a two-level block sum through s[]: without the trailing barrier a warp that
// runs ahead overwrites s[] for round 1 while another warp still reads round 0 (the bug the
// "greedy warps" schedules exist for).
template <bool kTrailing>
__global__ void smem_reuse(float* out) {
  __shared__ float s[32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, nw = blockDim.x >> 5;
  for (int r = 0; r < 2; ++r) {
    float v = float(t + 100 * r);
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    if (lane == 0) s[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int k = 0; k < nw; ++k) total += s[k];
    out[r * blockDim.x + t] = total;
    if (kTrailing) __syncthreads();
  }
}

__global__ void sync_count(int* out) {
  const int t = threadIdx.x;
  const int c = __syncthreads_count(t % 3 == 0);
  const int a = __syncthreads_and(t < 1000);
  const int o = __syncthreads_or(t == 5);
  const int z = __syncthreads_and(t != 7);
  out[t * 4 + 0] = c;
  out[t * 4 + 1] = a;
  out[t * 4 + 2] = o;
  out[t * 4 + 3] = z;
}

// ------------------------------------------------------------------------------ warps
// Every variant of shuffle, each in its own slot of out: out[v * blockDim.x + t].
__global__ void shuffles(int* out) {
  const int t = threadIdx.x, n = blockDim.x;
  const int lane = t & 31;
  const int v = 1000 * (t / 32) + lane;
  int k = 0;
  out[k++ * n + t] = __shfl_sync(0xffffffffu, v, 5);
  out[k++ * n + t] = __shfl_sync(0xffffffffu, v, 37);            // src mod 32
  out[k++ * n + t] = __shfl_sync(0xffffffffu, v, 3, 16);
  out[k++ * n + t] = __shfl_sync(0xffffffffu, v, lane ^ 7, 8);   // per-lane source
  out[k++ * n + t] = __shfl_up_sync(0xffffffffu, v, 1);
  out[k++ * n + t] = __shfl_up_sync(0xffffffffu, v, 3, 8);
  out[k++ * n + t] = __shfl_down_sync(0xffffffffu, v, 2);
  out[k++ * n + t] = __shfl_down_sync(0xffffffffu, v, 5, 16);
  out[k++ * n + t] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[k++ * n + t] = __shfl_xor_sync(0xffffffffu, v, 16);
  out[k++ * n + t] = __shfl_xor_sync(0xffffffffu, v, 8, 8);      // later group: own value
  out[k++ * n + t] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  out[k++ * n + t] = __any_sync(0xffffffffu, lane == 31);
  out[k++ * n + t] = __all_sync(0xffffffffu, lane < 31);
  out[k++ * n + t] = __reduce_add_sync(0xffffffffu, unsigned(v));
  out[k++ * n + t] = __reduce_min_sync(0xffffffffu, 5 - lane);
  out[k++ * n + t] = __reduce_max_sync(0xffffffffu, unsigned(lane * 3));
  out[k++ * n + t] = int(__match_any_sync(0xffffffffu, lane % 4));
  // two half-warp groups with different masks at the same time
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[k++ * n + t] = __shfl_sync(half, v, lane < 16 ? 15 : 16);
  out[k++ * n + t] = int(__ballot_sync(half, lane & 1));
  out[k++ * n + t] = int(__activemask());
  const double d = __shfl_xor_sync(0xffffffffu, double(v) + 0.5, 2);
  out[k++ * n + t] = int(d * 2.0);
  __syncwarp();
}

__global__ void shfl_exited_lane(float* out) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;  // bug: the full mask still names lanes 16..31
  out[lane] = __shfl_xor_sync(0xffffffffu, float(lane), 16);
}

__global__ void shfl_outside_mask(float* out) {
  const int lane = threadIdx.x & 31;
  const unsigned m = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[lane] = __shfl_sync(m, float(lane), 20);  // bug: lanes 0..15 read lane 20, outside their mask
}

__global__ void shfl_partial_warp(float* out) {
  // bug: blockDim 48, the second warp has 16 lanes but the full mask names 32
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

__global__ void warp_race(float* out) {
  // bug: warp-synchronous reduction in shared memory with no __syncwarp between steps
  __shared__ float s[32];
  const int lane = threadIdx.x;
  s[lane] = float(lane + 1);
  for (int off = 16; off > 0; off >>= 1)
    if (lane < off) s[lane] += s[lane + off];
  if (lane == 0) out[0] = s[0];
}

// ------------------------------------------------------------------------- global memory
__global__ void write_all(float* out, long long n, long long skip, long long extra) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    if (i != skip) out[i] = float(i);  // skip >= 0: the bug of a missing write
  if (blockIdx.x == 0 && threadIdx.x == 0 && extra != 0) out[n - 1 + extra] = -1.f;  // bug: out of bounds
}

__global__ void read_far(float* out, long long n, long long at) {
  if (threadIdx.x == 0) out[0] = out[at];  // bug: at is far outside the buffer
  (void)n;
}

__global__ void null_deref(float* out) {
  const float* volatile p = nullptr;
  out[threadIdx.x] = p[threadIdx.x];  // bug
}

__global__ void atomics(int* out, float* fout) {
  // out[0] add, out[1] inc wrap at 7, out[2] CAS-built max, out[3] exch, out[4] min, out[5] sub
  atomicAdd(&out[0], 2);
  atomicInc(reinterpret_cast<unsigned*>(&out[1]), 7u);
  int cur = out[2];
  for (;;) {
    const int want = cur > int(threadIdx.x) ? cur : int(threadIdx.x);
    const int seen = atomicCAS(&out[2], cur, want);
    if (seen == cur) break;
    cur = seen;
  }
  atomicExch(&out[3], 42);
  atomicMin(&out[4], -int(threadIdx.x));
  atomicSub(&out[5], 1);
  atomicAdd(&fout[0], 0.5f);
}

__global__ void misaligned_atomic(int* out) {
  atomicAdd(reinterpret_cast<int*>(reinterpret_cast<char*>(out) + 2), 1);  // bug
}

// Sum of many magnitudes into one float with atomics: the order (block schedule) changes the
// rounding.  A deterministic kernel must not do this; the determinism check must notice.
__global__ void atomic_float_sum(float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = (i % 7 == 0) ? 1.0e7f : 0.1f * float(i % 13) + 1e-3f * float(i);
  atomicAdd(out, v);
}

// The last block to finish (atomic ticket) reduces the per-block partials in a fixed order.
__global__ void last_block_reduce(const float* x, long long n, float* partial, unsigned* ticket, float* out) {
  __shared__ float s[256];
  __shared__ bool last;
  float acc = 0.f;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    acc += x[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) s[threadIdx.x] += s[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = s[0];
    __threadfence();
    last = atomicInc(ticket, gridDim.x) == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    float t = 0.f;
    for (unsigned b = 0; b < gridDim.x; ++b) t += partial[b];
    out[0] = t;
    *ticket = 0;
  }
}

// Every block waits for all others (a grid barrier out of global atomics): needs all blocks
// resident (Config::resident_blocks >= gridDim.x); one at a time it can never finish.
__global__ void grid_barrier(float* out, unsigned* counter) {
  if (threadIdx.x == 0) {
    atomicAdd(counter, 1u);
    while (atomicAdd(counter, 0u) < gridDim.x) __nanosleep(100);
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = float(atomicAdd(counter, 0u));
}

__global__ void spin_plain(float* out) {
  volatile float* p = out;
  while (p[0] == 0.f) {
  }  // bug: waits on a plain load for something that never happens
}

// -------------------------------------------------------------------------------- misc
__global__ void indices(int* out) {
  const int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nt = blockDim.x * blockDim.y * blockDim.z;
  out[bx * nt + tx] = (int(blockIdx.x) << 24) | (int(blockIdx.y) << 20) | (int(blockIdx.z) << 16) |
                      (int(threadIdx.x) << 8) | (int(threadIdx.y) << 4) | int(threadIdx.z);
}

template <int kWhich>
__global__ void dyn_smem(float* out, int words, int extra) {
  extern __shared__ float dyn_a[];
  extern __shared__ __align__(16) float dyn_b[];  // the same memory as dyn_a (as on a GPU)
  for (int i = threadIdx.x; i < words; i += blockDim.x) dyn_a[i] = float(i) * 2.f;
  __syncthreads();
  for (int i = threadIdx.x; i < words; i += blockDim.x) out[i] = dyn_b[i];
  if (extra && threadIdx.x == 0) dyn_a[words + extra - 1] = 0.f;  // bug when extra > 0
  (void)kWhich;
}

__global__ void trap_kernel(float*) { __trap(); }
__global__ void assert_kernel(float* out) { assert(out == nullptr); }
__global__ void throw_kernel(float*) { throw std::runtime_error("thrown in device code"); }

__device__ int recurse(int depth) {
  volatile char buf[4096];
  buf[0] = char(depth);
  return depth > 0 ? recurse(depth - 1) + buf[0] : 0;
}
__global__ void stack_overflow(float* out) { out[0] = float(recurse(1 << 20)); }

__global__ void math(float* out, const float* in, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = in[i];
    out[0 * n + i] = rsqrtf(v);
    out[1 * n + i] = __expf(v * 1e-3f);
    out[2 * n + i] = __fdividef(1.f, v);
    out[3 * n + i] = __saturatef(v * 1e-3f - 0.5f);
    out[4 * n + i] = __frcp_rn(v);
    out[5 * n + i] = __half2float(__float2half_rn(v));
    out[6 * n + i] = __bfloat162float(__float2bfloat16_rn(v));
  }
}

}  // namespace fn_selftest

namespace {
using namespace fn_selftest;
float* F(void* p) { return static_cast<float*>(p); }
int* I(void* p) { return static_cast<int*>(p); }
}  // namespace

extern "C" int fn_emu_selftest_impl(const char* name_c, void* out, long long n, long long arg) {
  const std::string name(name_c);
  const unsigned un = unsigned(n);
  if (name == "smem_sync") {
    FN_LAUNCH((smem_exchange<true>), 1, un, 0, nullptr, F(out));
  } else if (name == "smem_missing_sync") {
    FN_LAUNCH((smem_exchange<false>), 1, un, 0, nullptr, F(out));
  } else if (name == "smem_last_writer") {
    FN_LAUNCH((smem_last_writer), 1, un, 0, nullptr, F(out));
  } else if (name == "uninit_smem") {
    FN_LAUNCH((uninit_smem), 1, un, 0, nullptr, F(out));
  } else if (name == "exit_then_barrier") {
    FN_LAUNCH((exit_then_barrier), 1, un, 0, nullptr, F(out));
  } else if (name == "barrier_two_sites") {
    FN_LAUNCH((barrier_two_sites), 1, un, 0, nullptr, F(out));
  } else if (name == "barrier_vs_shuffle") {
    FN_LAUNCH((barrier_vs_shuffle), 1, 32, 0, nullptr, F(out));
  } else if (name == "smem_reuse") {
    FN_LAUNCH((smem_reuse<true>), 1, un, 0, nullptr, F(out));
  } else if (name == "smem_reuse_no_trailing_sync") {
    FN_LAUNCH((smem_reuse<false>), 1, un, 0, nullptr, F(out));
  } else if (name == "sync_count") {
    FN_LAUNCH((sync_count), 1, un, 0, nullptr, I(out));
  } else if (name == "shuffles") {
    FN_LAUNCH((shuffles), 1, un, 0, nullptr, I(out));
  } else if (name == "shfl_exited_lane") {
    FN_LAUNCH((shfl_exited_lane), 1, 32, 0, nullptr, F(out));
  } else if (name == "shfl_outside_mask") {
    FN_LAUNCH((shfl_outside_mask), 1, 32, 0, nullptr, F(out));
  } else if (name == "shfl_partial_warp") {
    FN_LAUNCH((shfl_partial_warp), 1, un, 0, nullptr, F(out));
  } else if (name == "warp_race") {
    FN_LAUNCH((warp_race), 1, 32, 0, nullptr, F(out));
  } else if (name == "write_all") {  // arg: index to skip (-1 none)
    FN_LAUNCH((write_all), 3, 64, 0, nullptr, F(out), n, arg, 0LL);
  } else if (name == "write_past_end") {  // arg: how far past the last element
    FN_LAUNCH((write_all), 3, 64, 0, nullptr, F(out), n, -1LL, arg);
  } else if (name == "read_far") {
    FN_LAUNCH((read_far), 1, 32, 0, nullptr, F(out), n, arg);
  } else if (name == "null_deref") {
    FN_LAUNCH((null_deref), 1, 32, 0, nullptr, F(out));
  } else if (name == "atomics") {  // out: 8 ints, then 1 float
    FN_LAUNCH((atomics), 2, un, 0, nullptr, I(out), F(out) + 8);
  } else if (name == "misaligned_atomic") {
    FN_LAUNCH((misaligned_atomic), 1, 1, 0, nullptr, I(out));
  } else if (name == "atomic_float_sum") {
    cudaMemsetAsync(out, 0, sizeof(float), nullptr);  // as a launcher accumulating with atomics would
    FN_LAUNCH((atomic_float_sum), un, 64, 0, nullptr, F(out));
  } else if (name == "last_block_reduce") {  // out: x[n], partial[grid], ticket, result
    const unsigned grid = unsigned(arg);
    float* x = F(out);
    FN_LAUNCH((last_block_reduce), grid, 256, 0, nullptr, x, n, x + n,
              reinterpret_cast<unsigned*>(x + n + grid), x + n + grid + 1);
  } else if (name == "grid_barrier") {  // out: n blocks * 32 values, then the counter
    FN_LAUNCH((grid_barrier), un, 32, 0, nullptr, F(out), reinterpret_cast<unsigned*>(F(out) + n * 32));
  } else if (name == "spin_plain") {
    FN_LAUNCH((spin_plain), 1, 1, 0, nullptr, F(out));
  } else if (name == "indices") {  // arg: 0 -> 2-D, 1 -> 3-D geometry
    if (arg == 0) FN_LAUNCH((indices), dim3(3, 2), dim3(5, 3), 0, nullptr, I(out));
    else FN_LAUNCH((indices), dim3(2, 3, 2), dim3(4, 2, 3), 0, nullptr, I(out));
  } else if (name == "dyn_smem") {  // n: words; arg: 0 plain, 1 opt-in first, 2 overflow by 3 words
    if (arg >= 1) {
      const cudaError_t e = cudaFuncSetAttribute(dyn_smem<0>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 int(n * sizeof(float)));
      if (e != cudaSuccess) throw std::runtime_error("cudaFuncSetAttribute failed");
    }
    FN_LAUNCH((dyn_smem<0>), 1, 128, size_t(n) * sizeof(float), nullptr, F(out), int(n), arg == 2 ? 3 : 0);
  } else if (name == "trap") {
    FN_LAUNCH((trap_kernel), 1, 32, 0, nullptr, F(out));
  } else if (name == "assert") {
    FN_LAUNCH((assert_kernel), 1, 32, 0, nullptr, F(out));
  } else if (name == "throw") {
    FN_LAUNCH((throw_kernel), 1, 1, 0, nullptr, F(out));
  } else if (name == "stack_overflow") {
    FN_LAUNCH((stack_overflow), 1, 1, 0, nullptr, F(out));
  } else if (name == "math") {  // out: 7 n outputs, then n inputs
    FN_LAUNCH((math), 1, 128, 0, nullptr, F(out), F(out) + 7 * n, int(n));
  } else if (name == "block_too_big") {
    FN_LAUNCH((write_all), 1, 1025, 0, nullptr, F(out), n, -1LL, 0LL);
  } else if (name == "grid_y_too_big") {
    FN_LAUNCH((write_all), dim3(1, 65536), 32, 0, nullptr, F(out), n, -1LL, 0LL);
  } else if (name == "unchecked_launch") {
    FN_LAUNCH((write_all), 1, 32, 0, nullptr, F(out), n, -1LL, 0LL);
    return 0;  // bug: no FN_LAUNCH_CHECK
  } else if (name == "device_queries") {  // out: ints
    int* o = I(out);
    int dev = -1;
    cudaGetDevice(&o[0]);
    (void)dev;
    cudaDeviceGetAttribute(&o[1], cudaDevAttrMultiProcessorCount, 0);
    cudaDeviceGetAttribute(&o[2], cudaDevAttrMaxSharedMemoryPerBlock, 0);
    cudaDeviceGetAttribute(&o[3], cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    cudaDeviceGetAttribute(&o[4], cudaDevAttrMaxRegistersPerBlock, 0);
    cudaDeviceGetAttribute(&o[5], cudaDevAttrMaxThreadsPerMultiProcessor, 0);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o[6], write_all, 256, 0);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o[7], write_all, 1024, 0);
    cudaFuncSetAttribute(dyn_smem<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o[8], dyn_smem<1>, 128, 100 * 1024);
    o[9] = ::fusednorm::sm_count();
    o[10] = int(cudaDeviceGetAttribute(&o[11], cudaDeviceAttr(12345), 0));
    o[12] = int(cudaGetLastError());
    o[13] = int(cudaGetLastError());
    // host <-> device copies and memset on the stream (synchronous here)
    int tmp[2] = {7, 9};
    cudaMemcpyAsync(&o[14], tmp, sizeof tmp, cudaMemcpyHostToDevice, nullptr);
    cudaMemsetAsync(&o[15], 0, 1, nullptr);  // low byte of 9 -> 0
    return 0;
  } else {
    return 1;
  }
  FN_LAUNCH_CHECK(name_c);
  return 0;
}
