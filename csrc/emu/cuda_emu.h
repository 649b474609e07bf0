// cuda_emu.h -- a small SIMT emulator that compiles fusednorm's CUDA device code as host C++
// (g++) and runs it on the CPU with CUDA's execution semantics for what the kernels use.
//
// HOW TO BUILD.  `python csrc/emu/build.py` (tests/test_cuda_emu.py calls it): every
// csrc/*/launch.cu is compiled with
//     g++ -std=c++17 -x c++ -include csrc/emu/cuda_emu.h -I csrc/emu/include -I csrc/include
//         -fno-extern-tls-init -ffp-contract=off -fno-strict-aliasing -fPIC -O2
// together with cuda_emu.cpp (the runtime: fibers, scheduler, checks), capi.cpp (a C ABI over
// the launchers for ctypes) and selftest.cpp (deliberately buggy kernels), and linked into one
// shared library.  csrc/emu/include/ holds stand-ins for <cuda_runtime.h>, <cuda_fp16.h>,
// <cuda_bf16.h> that forward here, so no CUDA toolkit is needed.  Launch sites must use
// FN_LAUNCH((kernel<...>), grid, block, smem, stream, args...) (common.cuh), which is exactly
// kernel<<<grid, block, smem, stream>>>(args...) under nvcc.  Builds are cached under
// build/cuda_emu/<variant>-<source hash>/; `--variant asan` builds with AddressSanitizer, to be
// loaded with LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)".
// Python drives it through ctypes: capi.cpp (fn_layer_norm_fwd, ...) and the fn_emu_* entry
// points at the end of cuda_emu.cpp (allocation, configuration, messages).
//
// WHAT IS EMULATED.
//  * Execution: every CUDA thread of a block is a user-level fiber with its own stack
//    (guard page below it); a deterministic scheduler runs each fiber until it reaches a
//    synchronization point (__syncthreads*, a warp collective, an atomic, a fence, __nanosleep)
//    or exits.  Blocks run one after another (forward or reverse blockIdx order), or, with
//    Config::resident_blocks > 1, that many blocks are interleaved fiber round by fiber round so
//    a grid-wide wait on global atomics (grid barrier, look-back) makes progress; each block
//    then keeps its own copy of shared memory.  The thread order inside a block is forward,
//    reverse or a seeded shuffle (Config::schedule), and threads either take turns one
//    synchronization step at a time (round robin) or warp by warp, each warp running as far as
//    it can before the next starts (Config::greedy_warps): running the same launch under several
//    of these exposes missing barriers and order-dependent (racy / atomic-order) results.
//  * __syncthreads / _count / _and / _or: all non-exited threads of the block must arrive at the
//    same call site.  Reported as errors: threads of one block waiting at different
//    __syncthreads() call sites, a barrier that some threads can never reach (deadlock, with
//    every thread's wait location), and a barrier reached after some threads of the block exited
//    (PTX releases it, CUDA C++ calls it undefined; Config::allow_exit_before_barrier accepts it).
//  * Warp collectives (__shfl_sync/_up/_down/_xor with width, __syncwarp, __ballot_sync,
//    __any_sync, __all_sync, __reduce_{add,min,max,and,or,xor}_sync, __match_any_sync): values
//    move only between the 32 lanes of a warp (lane = linear thread id % 32).  A collective
//    completes when every lane named in its mask has arrived at a collective with the same mask.
//    Errors: the mask names a lane that has exited or does not exist (partial last warp), the
//    calling lane is not in its own mask, a shuffle reads a lane outside the mask, lanes of one
//    mask disagree on the operation / width / size (and call site, Config::strict_warp_sites),
//    and a lane that never arrives (deadlock report).  Lanes are NOT in lockstep: a lane runs
//    until it blocks, so code relying on implicit warp-synchronous execution (no __syncwarp)
//    behaves as it may on Volta and later -- wrongly.
//    __activemask() returns the non-exited lanes of the warp without synchronizing (hardware may
//    report fewer under divergence).
//  * Shared memory: `__shared__` is `thread_local` storage of the emulator thread (so
//    `extern __shared__` works too: build.py aliases every extern TLS array to one dynamic
//    buffer, as all extern __shared__ arrays alias the dynamic base on a GPU).  Before each
//    block all shared memory (static and the launch's dynamic bytes) is filled with 0xFF (NaN in
//    every float format) so reads of never-written shared memory show; a canary after the
//    dynamic bytes is checked when the block ends.  Dynamic size > 48 KB needs
//    cudaFuncSetAttribute(MaxDynamicSharedMemorySize) as on a GPU, <= 227 KB.
//  * Memory faults: a SIGSEGV/SIGBUS/SIGFPE inside a kernel becomes an error naming the block,
//    thread and address (null page, stack overflow, guard page of an fn_emu_alloc buffer)
//    instead of a crash.  fn_emu_alloc places buffers against PROT_NONE pages with byte
//    guards around them (checked by fn_emu_check_guards; poisoned for ASan in the asan build);
//    inputs can be made read-only (fn_emu_protect).  A kernel that spins on atomics without
//    progress is reported after 2^24 such steps; a wall-clock watchdog (Config::timeout_s, via
//    SIGUSR2, chained to any previous handler) stops one that spins on plain loads.  __trap(),
//    assert() and C++ exceptions in device code are errors.
//  * Launch errors as cudaGetLastError reports them: block > 1024 threads or > (1024,1024,64),
//    grid.y/z > 65535, zero-sized grid/block, dynamic smem over the limit.  A launch that is not
//    followed by cudaGetLastError/cudaPeekAtLastError before the next launch or the end of the
//    host call is reported (STYLE: check every launch).  Faults are sticky until fn_emu_reset.
//  * Device queries: an H100-like device (132 SMs, 48 KB default / 227 KB opt-in shared memory
//    per block, 228 KB per SM, 65536 registers, 2048 threads and 32 blocks per SM, cc 9.0).
//    cudaOccupancyMaxActiveBlocksPerMultiprocessor assumes 32 registers per thread, or what
//    fn_emu_set_kernel_resources gave the kernel (ptxas's registers and static shared memory);
//    with Config::dry_run launches are validated and logged but not run, so a launcher's plan
//    (kernel, grid, block, shared memory) for any shape can be read without running it.
//  * Types and math: dim3/uint3, the vector types with CUDA's alignments, __half and
//    __nv_bfloat16 (own bit-exact round-to-nearest-even conversions, NaN -> 0x7fff as CUDA),
//    atomics (Add/Sub/Exch/Min/Max/Inc/Dec/CAS/And/Or/Xor), the common intrinsics.  Approximate
//    intrinsics (rsqrtf, __expf, __logf, __fdividef, __sinf, __cosf, __powf) return the host
//    result moved by their documented maximum ulp error in a direction fixed by a hash of the
//    argument (Config::approx_math = 0 turns it off), so tests do not rely on exact results.
//
// WHAT IS NOT EMULATED (say so rather than fake it).
//  * The memory model: one fiber runs at a time, so every access is sequentially consistent;
//    missing __threadfence / volatile / acquire-release bugs between threads are invisible.
//    Data races are exposed only through schedule perturbation and poisoning, not detected.
//  * Timing, occupancy, bank conflicts, coalescing, register limits, spills, __launch_bounds__
//    (ignored: a launch above the bound fails on a GPU but not here), L1/L2, async copies
//    (cp.async, TMA, mbarrier), tensor cores, inline PTX (`asm`), cooperative groups (including
//    grid.sync(); use atomics and resident_blocks instead), dynamic parallelism, streams and
//    events (everything is synchronous), textures, __constant__ placement (plain globals).
//  * Floating point: no FMA contraction (nvcc contracts a*b+c by default; results can differ
//    from a GPU in the last bits), host libm for expf/logf/... (CUDA's are within 1-2 ulp of
//    them), host NaN payloads.  __CUDA_ARCH__ is not defined: code behind it is not emulated.
//  * Out-of-bounds accesses within static shared memory (neighbouring __shared__ arrays share one
//    TLS block), or in host memory not allocated with fn_emu_alloc.
//  * Device code must not use thread_local itself (nvcc rejects it anyway): build.py refuses a
//    library whose TLS holds anything but shared memory.
#pragma once

#define FN_EMU 1

#include <algorithm>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------ qualifiers and keywords
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
#define __cudart_builtin__
#define CUDARTAPI
// Per emulator thread = per block: blocks share one OS thread and run one at a time (or have
// their copies swapped in, resident_blocks > 1).  thread_local also makes `extern __shared__`
// legal syntax; build.py defines those symbols as the dynamic shared buffer.
#define __shared__ thread_local
#ifndef __restrict__
#define __restrict__ __restrict
#endif
#define FN_EMU_CUDA_ARCH 900

// -------------------------------------------------------------------------- basic types
struct uint3 { unsigned int x, y, z; };
struct int3 { int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define FN_EMU_VEC1(name, T, al) struct alignas(al) name { T x; };
#define FN_EMU_VEC2(name, T, al) struct alignas(al) name { T x, y; };
#define FN_EMU_VEC3(name, T, al) struct alignas(al) name { T x, y, z; };
#define FN_EMU_VEC4(name, T, al) struct alignas(al) name { T x, y, z, w; };
FN_EMU_VEC1(char1, signed char, 1) FN_EMU_VEC2(char2, signed char, 2) FN_EMU_VEC4(char4, signed char, 4)
FN_EMU_VEC1(uchar1, unsigned char, 1) FN_EMU_VEC2(uchar2, unsigned char, 2) FN_EMU_VEC4(uchar4, unsigned char, 4)
FN_EMU_VEC1(short1, short, 2) FN_EMU_VEC2(short2, short, 4) FN_EMU_VEC4(short4, short, 8)
FN_EMU_VEC1(ushort1, unsigned short, 2) FN_EMU_VEC2(ushort2, unsigned short, 4) FN_EMU_VEC4(ushort4, unsigned short, 8)
FN_EMU_VEC1(int1, int, 4) FN_EMU_VEC2(int2, int, 8) FN_EMU_VEC4(int4, int, 16)
FN_EMU_VEC1(uint1, unsigned int, 4) FN_EMU_VEC2(uint2, unsigned int, 8) FN_EMU_VEC4(uint4, unsigned int, 16)
FN_EMU_VEC1(long1, long, 8) FN_EMU_VEC2(long2, long, 16) FN_EMU_VEC4(long4, long, 16)
FN_EMU_VEC1(ulong1, unsigned long, 8) FN_EMU_VEC2(ulong2, unsigned long, 16) FN_EMU_VEC4(ulong4, unsigned long, 16)
FN_EMU_VEC1(longlong1, long long, 8) FN_EMU_VEC2(longlong2, long long, 16) FN_EMU_VEC4(longlong4, long long, 16)
FN_EMU_VEC1(ulonglong1, unsigned long long, 8) FN_EMU_VEC2(ulonglong2, unsigned long long, 16) FN_EMU_VEC4(ulonglong4, unsigned long long, 16)
FN_EMU_VEC1(float1, float, 4) FN_EMU_VEC2(float2, float, 8) FN_EMU_VEC3(float3, float, 4) FN_EMU_VEC4(float4, float, 16)
FN_EMU_VEC1(double1, double, 8) FN_EMU_VEC2(double2, double, 16) FN_EMU_VEC4(double4, double, 16)
#undef FN_EMU_VEC1
#undef FN_EMU_VEC2
#undef FN_EMU_VEC3
#undef FN_EMU_VEC4

#define FN_EMU_MAKE2(name, T) inline name make_##name(T a, T b) { return name{a, b}; }
#define FN_EMU_MAKE3(name, T) inline name make_##name(T a, T b, T c) { return name{a, b, c}; }
#define FN_EMU_MAKE4(name, T) inline name make_##name(T a, T b, T c, T d) { return name{a, b, c, d}; }
FN_EMU_MAKE2(char2, signed char) FN_EMU_MAKE4(char4, signed char) FN_EMU_MAKE2(uchar2, unsigned char)
FN_EMU_MAKE4(uchar4, unsigned char) FN_EMU_MAKE2(short2, short) FN_EMU_MAKE4(short4, short)
FN_EMU_MAKE2(ushort2, unsigned short) FN_EMU_MAKE4(ushort4, unsigned short) FN_EMU_MAKE2(int2, int)
FN_EMU_MAKE3(int3, int) FN_EMU_MAKE4(int4, int) FN_EMU_MAKE2(uint2, unsigned int)
FN_EMU_MAKE3(uint3, unsigned int) FN_EMU_MAKE4(uint4, unsigned int) FN_EMU_MAKE2(longlong2, long long)
FN_EMU_MAKE2(ulonglong2, unsigned long long) FN_EMU_MAKE2(float2, float) FN_EMU_MAKE3(float3, float)
FN_EMU_MAKE4(float4, float) FN_EMU_MAKE2(double2, double)
#undef FN_EMU_MAKE2
#undef FN_EMU_MAKE3
#undef FN_EMU_MAKE4

// ---------------------------------------------------------------------- runtime API types
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchTimeout = 702,
  cudaErrorAssert = 710,
  cudaErrorIllegalInstruction = 715,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrTotalConstantMemory = 9,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMemoryClockRate = 36,
  cudaDevAttrGlobalMemoryBusWidth = 37,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxRegistersPerMultiprocessor = 82,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxBlocksPerMultiprocessor = 106,
  cudaDevAttrReservedSharedMemoryPerBlock = 111,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)

struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA;
  int maxDynamicSharedSizeBytes, preferredShmemCarveout;
};

// The fields code commonly reads; the real struct has many more.
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
  size_t totalConstMem;
  int regsPerBlock, regsPerMultiprocessor, warpSize, maxThreadsPerBlock, maxThreadsDim[3];
  int maxGridSize[3], clockRate, major, minor, multiProcessorCount, maxThreadsPerMultiProcessor;
  int maxBlocksPerMultiProcessor, l2CacheSize, cooperativeLaunch;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int dev);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t n);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s);
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);

namespace fn_emu {

// ------------------------------------------------------------------------- configuration
enum Schedule : int { kForward = 0, kReverse = 1, kShuffled = 2 };
struct Config {
  int schedule = kForward;          // thread order inside a block (and block order)
  int greedy_warps = 0;             // 1: each warp runs as far as it can before the next
  unsigned seed = 1;                // for kShuffled
  int resident_blocks = 1;          // blocks interleaved at once (1: one after another)
  int approx_math = 1;              // perturb approximate intrinsics by their max ulp error
  int poison_shared = 1;            // fill shared memory with 0xFF before each block
  int allow_exit_before_barrier = 0;
  int strict_call_sites = 1;        // all threads of a barrier at one __syncthreads() call site
  int strict_warp_sites = 0;        // lanes of a warp collective at one call site (PTX does not
                                    // require it on sm_70+; CUDA C++ code rarely relies on it)
  int require_launch_check = 1;     // a launch must be followed by cudaGetLastError/Peek
  double timeout_s = 120.0;         // watchdog per launch
  size_t stack_bytes = 0;           // per emulated thread; 0: default (256 KB with ASan, else 64 KB)
  int dry_run = 0;                  // 1: launches are validated and logged, not run (launch plans)
};
Config& config();

// ------------------------------------------------------------------- per-thread state
struct Loc {
  const char* file;
  int line;
};

enum class Op : unsigned char {
  None, Shfl, ShflUp, ShflDown, ShflXor, SyncWarp, Ballot, Any, All, RedAdd, RedMin, RedMax,
  RedAnd, RedOr, RedXor, MatchAny
};

enum class St : unsigned char { Runnable, Barrier, Warp, Exited };

struct WarpOp {
  Op kind = Op::None;
  unsigned mask = 0;
  int arg = 0;    // src lane / delta / lane mask
  int width = 32;
  int size = 0;   // bytes of the value
  int is_signed = 0;
  Loc loc{nullptr, 0};
  alignas(16) unsigned char val[16];
  alignas(16) unsigned char res[16];
};

struct Block;
struct Thread {
  void* sp = nullptr;          // saved stack pointer while switched out
  void* stack_lo = nullptr;    // usable stack [stack_lo, stack_lo + stack_size)
  size_t stack_size = 0;
  void* asan_fake = nullptr;
  uint3 thread_idx{0, 0, 0};
  unsigned linear = 0, lane = 0, warp = 0;
  St state = St::Runnable;
  WarpOp op;
  Loc loc{nullptr, 0};         // where it waits (barrier) or what it last did
  int bar_kind = 0, bar_pred = 0, bar_result = 0;
  Block* block = nullptr;
};

extern Thread* g_thread;      // the running emulated thread (nullptr outside kernels)
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

// Switch back to the scheduler.  Runnable: just let others run (atomics, fences).
void yield();
// Wait at a warp collective (t->op filled in) / at a barrier; returns when released.
void wait_warp(Loc loc);
int wait_barrier(int kind, int pred, Loc loc);
// Record an error for the running kernel and abandon it (never returns).
[[noreturn]] void fault(cudaError_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void check_atomic_address(const void* p, size_t align, Loc loc);
float approx(float r, float arg, int ulps);

inline Thread* cur(Loc loc) {
  Thread* t = g_thread;
  if (t == nullptr) {
    std::fprintf(stderr, "fn_emu: device function called outside a kernel at %s:%d\n", loc.file, loc.line);
    std::abort();
  }
  return t;
}

// ----------------------------------------------------------------------------- launches
struct LaunchSpec {
  const char* text;   // the kernel expression as written at the launch site
  const char* file;
  int line;
  const void* func;   // kernel function (attributes, name via dladdr)
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
using Entry = void (*)(void* closure);
void run_grid(const LaunchSpec& spec, Entry entry, void* closure);
void set_func_attribute(const void* func, int attr, int value, cudaError_t* err);

template <class... P, class... A>
inline void launch(const char* text, const char* file, int line, void (*k)(P...), dim3 grid,
                   dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // Parameters are copied once here (as the launch copies them to the constant bank); each
  // emulated thread then gets its own by-value copies when the kernel is called.
  struct Closure {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> args;
  };
  Closure c{k, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  LaunchSpec s{text, file, line, reinterpret_cast<const void*>(k), grid, block, smem, stream};
  run_grid(s, [](void* p) {
    auto* cl = static_cast<Closure*>(p);
    std::apply(cl->k, cl->args);
  }, &c);
}

}  // namespace fn_emu

#define FN_EMU_UNPAREN_(...) __VA_ARGS__
// FN_LAUNCH((kernel<T, V>), grid, block, smem, stream, args...): the emulator's launch.
#define FN_LAUNCH(kernel, grid, block, smem, stream, ...)                                   \
  ::fn_emu::launch(#kernel, __FILE__, __LINE__, FN_EMU_UNPAREN_ kernel, dim3(grid), dim3(block), \
                   size_t(smem), (stream), ##__VA_ARGS__)

template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  cudaError_t e = cudaSuccess;
  ::fn_emu::set_func_attribute(reinterpret_cast<const void*>(func), int(attr), value, &e);
  return e;
}
inline cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  cudaError_t e = cudaSuccess;
  ::fn_emu::set_func_attribute(func, int(attr), value, &e);
  return e;
}
namespace fn_emu {
cudaError_t occupancy(int* blocks, const void* func, int block_size, size_t dyn_smem);
cudaError_t func_attributes(cudaFuncAttributes* a, const void* func);
}  // namespace fn_emu
template <class T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T* func, int block_size,
                                                                 size_t dyn_smem) {
  return ::fn_emu::occupancy(n, reinterpret_cast<const void*>(func), block_size, dyn_smem);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, T* func) {
  return ::fn_emu::func_attributes(a, reinterpret_cast<const void*>(func));
}

// ---------------------------------------------------------------------- built-in variables
#define threadIdx (static_cast<const uint3&>(::fn_emu::cur({__FILE__, __LINE__})->thread_idx))
#define blockIdx (static_cast<const uint3&>(::fn_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::fn_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::fn_emu::g_grid_dim))
constexpr int warpSize = 32;

#define FN_EMU_LOC const char *fn_emu_file = __builtin_FILE(), int fn_emu_line = __builtin_LINE()
#define FN_EMU_HERE ::fn_emu::Loc{fn_emu_file, fn_emu_line}

// ----------------------------------------------------------------------------- barriers
inline void __syncthreads(FN_EMU_LOC) { ::fn_emu::wait_barrier(0, 0, FN_EMU_HERE); }
inline int __syncthreads_count(int pred, FN_EMU_LOC) {
  return ::fn_emu::wait_barrier(1, pred != 0, FN_EMU_HERE);
}
inline int __syncthreads_and(int pred, FN_EMU_LOC) {
  return ::fn_emu::wait_barrier(2, pred != 0, FN_EMU_HERE);
}
inline int __syncthreads_or(int pred, FN_EMU_LOC) {
  return ::fn_emu::wait_barrier(3, pred != 0, FN_EMU_HERE);
}

// ------------------------------------------------------------------------------ half types
namespace fn_emu {
inline unsigned f32_bits(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// float -> binary16, round to nearest even; NaN -> 0x7fff as CUDA does.
inline unsigned short f32_to_f16_rn(float f) {
  const unsigned x = f32_bits(f);
  const unsigned sign = (x >> 16) & 0x8000u;
  const unsigned ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fffu;
  if (ax >= 0x47800000u) return sign | 0x7c00u;  // >= 2^16: infinity (also +-inf itself)
  if (ax >= 0x38800000u) {                       // normal half: >= 2^-14
    unsigned h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13));
    const unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach inf: right
    return (unsigned short)(sign | h);
  }
  if (ax <= 0x33000000u) return (unsigned short)sign;  // <= 2^-25: rounds to (signed) zero
  const unsigned e = ax >> 23;                          // 102 .. 112
  const unsigned mant = (ax & 0x7fffffu) | 0x800000u;
  const unsigned shift = 126u - e;                      // value / 2^-24 = mant >> shift
  unsigned h = mant >> shift;
  const unsigned rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return (unsigned short)(sign | h);
}
// Round toward zero (__float2half_rz).
inline unsigned short f32_to_f16_rz(float f) {
  const unsigned x = f32_bits(f);
  const unsigned sign = (x >> 16) & 0x8000u;
  const unsigned ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fffu;
  if (ax == 0x7f800000u) return sign | 0x7c00u;
  if (ax >= 0x477ff000u) return sign | 0x7bffu;  // >= 65520 truncates to the largest finite
  if (ax >= 0x38800000u) return (unsigned short)(sign | ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13)));
  if (ax < 0x33800000u) return (unsigned short)sign;
  const unsigned e = ax >> 23;
  return (unsigned short)(sign | (((ax & 0x7fffffu) | 0x800000u) >> (126u - e)));
}
inline float f16_to_f32(unsigned short h) {
  const unsigned sign = unsigned(h & 0x8000u) << 16;
  const unsigned e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return bits_f32(sign);
  // subnormal: m * 2^-24, exact in fp32
  const float v = float(m) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}
inline unsigned short f32_to_bf16_rn(float f) {
  const unsigned x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline unsigned short f32_to_bf16_rz(float f) {
  const unsigned x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return (unsigned short)(x >> 16);
}
inline float bf16_to_f32(unsigned short b) { return bits_f32(unsigned(b) << 16); }
// double -> half / bf16 in two steps without double rounding: round to float with
// round-to-odd (truncate, then set the last bit when inexact), then to the narrow type.
inline float f64_to_f32_odd(double d) {
  float f = float(d);
  if (!std::isfinite(f) || double(f) == d) return f;
  if (std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);  // truncate
  unsigned u = f32_bits(f);
  return bits_f32(u | 1u);
}
}  // namespace fn_emu

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

struct alignas(2) __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  __half(float f) : __x(::fn_emu::f32_to_f16_rn(f)) {}
  __half(double d) : __x(::fn_emu::f32_to_f16_rn(::fn_emu::f64_to_f32_odd(d))) {}
  __half(int v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(unsigned v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(long long v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(unsigned long long v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(long v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(unsigned long v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(short v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half(unsigned short v) : __x(::fn_emu::f32_to_f16_rn(float(v))) {}
  __half& operator=(const __half_raw& r) { __x = r.x; return *this; }
  __half& operator=(float f) { __x = ::fn_emu::f32_to_f16_rn(f); return *this; }
  __half& operator=(double d) { return *this = __half(d); }
  operator float() const { return ::fn_emu::f16_to_f32(__x); }
  operator __half_raw() const { return __half_raw{__x}; }
};
struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16(float f) : __x(::fn_emu::f32_to_bf16_rn(f)) {}
  __nv_bfloat16(double d) : __x(::fn_emu::f32_to_bf16_rn(::fn_emu::f64_to_f32_odd(d))) {}
  __nv_bfloat16(int v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(unsigned v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(long long v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(unsigned long long v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(long v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(unsigned long v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(short v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16(unsigned short v) : __x(::fn_emu::f32_to_bf16_rn(float(v))) {}
  __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) { __x = r.x; return *this; }
  __nv_bfloat16& operator=(float f) { __x = ::fn_emu::f32_to_bf16_rn(f); return *this; }
  __nv_bfloat16& operator=(double d) { return *this = __nv_bfloat16(d); }
  operator float() const { return ::fn_emu::bf16_to_f32(__x); }
  operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

inline float __half2float(__half h) { return ::fn_emu::f16_to_f32(h.__x); }
inline __half __float2half(float f) { return __half_raw{::fn_emu::f32_to_f16_rn(f)}; }
inline __half __float2half_rn(float f) { return __half_raw{::fn_emu::f32_to_f16_rn(f)}; }
inline __half __float2half_rz(float f) { return __half_raw{::fn_emu::f32_to_f16_rz(f)}; }
inline __half __double2half(double d) { return __half(d); }
inline float __bfloat162float(__nv_bfloat16 b) { return ::fn_emu::bf16_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16_raw{::fn_emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16_raw{::fn_emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16_rz(float f) { return __nv_bfloat16_raw{::fn_emu::f32_to_bf16_rz(f)}; }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline short __half_as_short(__half h) { return short(h.__x); }
inline __half __short_as_half(short s) { return __half_raw{(unsigned short)s}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
  return float2{__bfloat162float(h.x), __bfloat162float(h.y)};
}
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline bool __hisnan(__half h) { return (h.__x & 0x7fffu) > 0x7c00u; }
inline bool __hisnan(__nv_bfloat16 h) { return (h.__x & 0x7fffu) > 0x7f80u; }
inline int __hisinf(__half h) { return (h.__x & 0x7fffu) == 0x7c00u ? (h.__x & 0x8000u ? -1 : 1) : 0; }
inline int __hisinf(__nv_bfloat16 h) { return (h.__x & 0x7fffu) == 0x7f80u ? (h.__x & 0x8000u ? -1 : 1) : 0; }

// Arithmetic as the host fallbacks compute it: in fp32, rounded once to the half type.
#define FN_EMU_HALF_OPS(H, TOF, FROMF)                                                    \
  inline H operator+(H a, H b) { return FROMF(TOF(a) + TOF(b)); }                         \
  inline H operator-(H a, H b) { return FROMF(TOF(a) - TOF(b)); }                         \
  inline H operator*(H a, H b) { return FROMF(TOF(a) * TOF(b)); }                         \
  inline H operator/(H a, H b) { return FROMF(TOF(a) / TOF(b)); }                         \
  inline H operator-(H a) { H r = a; r.__x ^= 0x8000u; return r; }                       \
  inline H& operator+=(H& a, H b) { return a = a + b; }                                   \
  inline H& operator-=(H& a, H b) { return a = a - b; }                                   \
  inline H& operator*=(H& a, H b) { return a = a * b; }                                   \
  inline H& operator/=(H& a, H b) { return a = a / b; }                                   \
  inline bool operator==(H a, H b) { return TOF(a) == TOF(b); }                           \
  inline bool operator!=(H a, H b) { return TOF(a) != TOF(b); }                           \
  inline bool operator<(H a, H b) { return TOF(a) < TOF(b); }                             \
  inline bool operator>(H a, H b) { return TOF(a) > TOF(b); }                             \
  inline bool operator<=(H a, H b) { return TOF(a) <= TOF(b); }                           \
  inline bool operator>=(H a, H b) { return TOF(a) >= TOF(b); }                           \
  inline H __hadd(H a, H b) { return a + b; }                                             \
  inline H __hsub(H a, H b) { return a - b; }                                             \
  inline H __hmul(H a, H b) { return a * b; }                                             \
  inline H __hdiv(H a, H b) { return a / b; }                                             \
  inline H __hneg(H a) { return -a; }                                                     \
  inline H __habs(H a) { H r = a; r.__x &= 0x7fffu; return r; }                          \
  inline H __hfma(H a, H b, H c) { return FROMF(float(double(TOF(a)) * TOF(b) + TOF(c))); }
FN_EMU_HALF_OPS(__half, __half2float, __float2half_rn)
FN_EMU_HALF_OPS(__nv_bfloat16, __bfloat162float, __float2bfloat16_rn)
#undef FN_EMU_HALF_OPS

// ------------------------------------------------------------------------------ warp level
namespace fn_emu {
template <class T>
constexpr bool kShuffleable = std::is_arithmetic<T>::value || std::is_same<T, __half>::value ||
                              std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half2>::value ||
                              std::is_same<T, __nv_bfloat162>::value;

template <class T>
inline T warp_value_op(Op kind, unsigned mask, T v, int arg, int width, Loc loc) {
  static_assert(kShuffleable<T> && sizeof(T) <= 16, "type not supported by CUDA warp shuffles");
  Thread* t = cur(loc);
  t->op.kind = kind;
  t->op.mask = mask;
  t->op.arg = arg;
  t->op.width = width;
  t->op.size = int(sizeof(T));
  t->op.is_signed = std::is_signed<T>::value;
  t->op.loc = loc;
  std::memcpy(t->op.val, &v, sizeof(T));
  wait_warp(loc);
  T r;
  std::memcpy(&r, t->op.res, sizeof(T));
  return r;
}
inline unsigned warp_pred_op(Op kind, unsigned mask, int pred, Loc loc) {
  return warp_value_op<int>(kind, mask, pred != 0, 0, 32, loc);
}
unsigned active_mask(Loc loc);
}  // namespace fn_emu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = 32, FN_EMU_LOC) {
  return ::fn_emu::warp_value_op(::fn_emu::Op::Shfl, mask, var, src, width, FN_EMU_HERE);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, FN_EMU_LOC) {
  return ::fn_emu::warp_value_op(::fn_emu::Op::ShflUp, mask, var, int(delta), width, FN_EMU_HERE);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, FN_EMU_LOC) {
  return ::fn_emu::warp_value_op(::fn_emu::Op::ShflDown, mask, var, int(delta), width, FN_EMU_HERE);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, FN_EMU_LOC) {
  return ::fn_emu::warp_value_op(::fn_emu::Op::ShflXor, mask, var, lane_mask, width, FN_EMU_HERE);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, FN_EMU_LOC) {
  (void)::fn_emu::warp_pred_op(::fn_emu::Op::SyncWarp, mask, 0, FN_EMU_HERE);
}
inline unsigned __ballot_sync(unsigned mask, int pred, FN_EMU_LOC) {
  return ::fn_emu::warp_pred_op(::fn_emu::Op::Ballot, mask, pred, FN_EMU_HERE);
}
inline int __any_sync(unsigned mask, int pred, FN_EMU_LOC) {
  return int(::fn_emu::warp_pred_op(::fn_emu::Op::Any, mask, pred, FN_EMU_HERE));
}
inline int __all_sync(unsigned mask, int pred, FN_EMU_LOC) {
  return int(::fn_emu::warp_pred_op(::fn_emu::Op::All, mask, pred, FN_EMU_HERE));
}
inline unsigned __activemask(FN_EMU_LOC) { return ::fn_emu::active_mask(FN_EMU_HERE); }
#define FN_EMU_REDUCE(name, kind)                                                              \
  inline unsigned name(unsigned mask, unsigned v, FN_EMU_LOC) {                                \
    return ::fn_emu::warp_value_op(::fn_emu::Op::kind, mask, v, 0, 32, FN_EMU_HERE);           \
  }                                                                                            \
  inline int name(unsigned mask, int v, FN_EMU_LOC) {                                          \
    return ::fn_emu::warp_value_op(::fn_emu::Op::kind, mask, v, 0, 32, FN_EMU_HERE);           \
  }
FN_EMU_REDUCE(__reduce_add_sync, RedAdd)
FN_EMU_REDUCE(__reduce_min_sync, RedMin)
FN_EMU_REDUCE(__reduce_max_sync, RedMax)
FN_EMU_REDUCE(__reduce_and_sync, RedAnd)
FN_EMU_REDUCE(__reduce_or_sync, RedOr)
FN_EMU_REDUCE(__reduce_xor_sync, RedXor)
#undef FN_EMU_REDUCE
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v, FN_EMU_LOC) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_any_sync takes 32- or 64-bit values");
  unsigned long long u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return unsigned(::fn_emu::warp_value_op(::fn_emu::Op::MatchAny, mask, u, 0, 32, FN_EMU_HERE));
}

// -------------------------------------------------------------------- fences and atomics
inline void __threadfence() { ::fn_emu::yield(); }
inline void __threadfence_block() { ::fn_emu::yield(); }
inline void __threadfence_system() { ::fn_emu::yield(); }
inline void __nanosleep(unsigned) { ::fn_emu::yield(); }
long long fn_emu_clock64();
inline long long clock64() { return fn_emu_clock64(); }
[[noreturn]] inline void __trap() { ::fn_emu::fault(cudaErrorLaunchFailure, "__trap() called"); }
[[noreturn]] inline void __brkpt() { ::fn_emu::fault(cudaErrorLaunchFailure, "__brkpt() called"); }

// Each atomic is one indivisible step (only one emulated thread runs at a time), then a
// scheduling point so spin-waits on atomics let the thread they wait for run.
#define FN_EMU_ATOMIC(name, T, expr)                                                      \
  inline T name(T* p, T v, FN_EMU_LOC) {                                                  \
    ::fn_emu::check_atomic_address(p, sizeof(T), FN_EMU_HERE);                            \
    const T old = *p;                                                                     \
    *p = (expr);                                                                          \
    ::fn_emu::yield();                                                                    \
    return old;                                                                           \
  }
#define FN_EMU_ATOMIC_INT(T)                                                              \
  FN_EMU_ATOMIC(atomicAdd, T, static_cast<T>(old + v))                                                 \
  FN_EMU_ATOMIC(atomicSub, T, static_cast<T>(old - v))                                                 \
  FN_EMU_ATOMIC(atomicExch, T, v)                                                         \
  FN_EMU_ATOMIC(atomicMin, T, (v < old ? v : old))                                        \
  FN_EMU_ATOMIC(atomicMax, T, (v > old ? v : old))                                        \
  FN_EMU_ATOMIC(atomicAnd, T, static_cast<T>(old & v))                                                 \
  FN_EMU_ATOMIC(atomicOr, T, static_cast<T>(old | v))                                                  \
  FN_EMU_ATOMIC(atomicXor, T, static_cast<T>(old ^ v))                                                 \
  inline T atomicCAS(T* p, T compare, T v, FN_EMU_LOC) {                                  \
    ::fn_emu::check_atomic_address(p, sizeof(T), FN_EMU_HERE);                           \
    const T old = *p;                                                                     \
    if (old == compare) *p = v;                                                           \
    ::fn_emu::yield();                                                                    \
    return old;                                                                           \
  }
FN_EMU_ATOMIC_INT(int)
FN_EMU_ATOMIC_INT(unsigned int)
FN_EMU_ATOMIC_INT(unsigned long long)
FN_EMU_ATOMIC_INT(long long)
FN_EMU_ATOMIC(atomicAdd, float, old + v)
FN_EMU_ATOMIC(atomicAdd, double, old + v)
FN_EMU_ATOMIC(atomicExch, float, v)
FN_EMU_ATOMIC(atomicAdd, __half, __float2half_rn(__half2float(old) + __half2float(v)))
FN_EMU_ATOMIC(atomicAdd, __nv_bfloat16, __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(v)))
FN_EMU_ATOMIC(atomicInc, unsigned int, ((old >= v) ? 0u : old + 1u))
FN_EMU_ATOMIC(atomicDec, unsigned int, ((old == 0u || old > v) ? v : old - 1u))
inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v, FN_EMU_LOC) {
  ::fn_emu::check_atomic_address(p, sizeof(*p), FN_EMU_HERE);
  const unsigned short old = *p;
  if (old == compare) *p = v;
  ::fn_emu::yield();
  return old;
}
#undef FN_EMU_ATOMIC_INT
#undef FN_EMU_ATOMIC
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicCAS_block atomicCAS
#define atomicExch_block atomicExch

// --------------------------------------------------------------------- loads and stores
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ------------------------------------------------------------------------------- math
// Correctly rounded, then moved by the 2 ulp CUDA allows (Config::approx_math).
inline float rsqrtf(float x) { return ::fn_emu::approx(float(1.0 / std::sqrt(double(x))), x, 2); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return float(1.0 / std::sqrt(double(x))); }
inline float __fdividef(float x, float y) {
  // CUDA: for 2^126 < |y| < 2^128 the result is 0 (NaN if x is infinite); 2 ulp otherwise.
  if (std::fabs(y) > 8.507059e37f && std::isfinite(y)) return std::isinf(x) ? NAN : 0.0f;
  return ::fn_emu::approx(x / y, y, 2);
}
inline float fdividef(float x, float y) { return __fdividef(x, y); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return std::fma(x, y, z); }
inline float __expf(float x) {
  return ::fn_emu::approx(std::exp(x), x, 2 + int(std::min(64.f, std::floor(std::fabs(1.16f * x)))));
}
inline float __exp10f(float x) {
  return ::fn_emu::approx(std::pow(10.0f, x), x, 2 + int(std::min(64.f, std::floor(std::fabs(2.95f * x)))));
}
inline float __logf(float x) { return ::fn_emu::approx(std::log(x), x, 3); }
inline float __log2f(float x) { return ::fn_emu::approx(std::log2(x), x, 3); }
inline float __log10f(float x) { return ::fn_emu::approx(std::log10(x), x, 3); }
inline float __sinf(float x) { return ::fn_emu::approx(std::sin(x), x, 3); }
inline float __cosf(float x) { return ::fn_emu::approx(std::cos(x), x, 3); }
inline float __tanf(float x) { return ::fn_emu::approx(std::tan(x), x, 4); }
inline float __powf(float x, float y) { return ::fn_emu::approx(std::pow(x, y), x * y, 8); }
inline void __sincosf(float x, float* s, float* c) { *s = __sinf(x); *c = __cosf(x); }
inline float __saturatef(float x) { return x >= 1.f ? 1.f : (x > 0.f ? x : 0.f); }  // NaN -> 0
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline float rcbrtf(float x) { return 1.f / std::cbrt(x); }

inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
// Float -> int conversions saturate and map NaN to 0 on the GPU.
namespace fn_emu {
template <class I>
inline I sat_cvt(double v) {
  if (v != v) return 0;
  if (v <= double(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (v >= double(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return I(v);
}
}  // namespace fn_emu
inline int __float2int_rn(float x) { return ::fn_emu::sat_cvt<int>(std::nearbyint(double(x))); }
inline int __float2int_rz(float x) { return ::fn_emu::sat_cvt<int>(std::trunc(double(x))); }
inline int __float2int_rd(float x) { return ::fn_emu::sat_cvt<int>(std::floor(double(x))); }
inline int __float2int_ru(float x) { return ::fn_emu::sat_cvt<int>(std::ceil(double(x))); }
inline unsigned __float2uint_rn(float x) { return ::fn_emu::sat_cvt<unsigned>(std::nearbyint(double(x))); }
inline unsigned __float2uint_rz(float x) { return ::fn_emu::sat_cvt<unsigned>(std::trunc(double(x))); }
inline long long __float2ll_rn(float x) { return ::fn_emu::sat_cvt<long long>(std::nearbyint(double(x))); }
inline long long __float2ll_rz(float x) { return ::fn_emu::sat_cvt<long long>(std::trunc(double(x))); }
inline float __int2float_rn(int i) { return float(i); }
inline float __uint2float_rn(unsigned i) { return float(i); }
inline float __ll2float_rn(long long i) { return float(i); }
inline int __double2int_rn(double x) { return ::fn_emu::sat_cvt<int>(std::nearbyint(x)); }
inline float __double2float_rn(double x) { return float(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((unsigned long long)a * b >> 32); }
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mul24(int a, int b) { return int((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}

// CUDA's min/max overloads for device code (the standard library has none unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
inline unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
inline unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(double(a), b); }
inline double max(float a, double b) { return std::fmax(double(a), b); }
inline double min(double a, float b) { return std::fmin(a, double(b)); }
inline double max(double a, float b) { return std::fmax(a, double(b)); }
