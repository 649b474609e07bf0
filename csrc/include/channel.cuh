// Per-channel machinery shared by GroupNorm and BatchNorm on an (N, C, S) tensor, S = prod of
// the spatial dims, in either layout:
//   NCHW (contiguous):  element (n, c, s) at (n * C + c) * S + s
//   channels_last:      element (n, c, s) at (n * S + s) * C + c
//
// channel_reduce_*: one partial accumulator per (n, c, chunk of S), stored at
//   part[(n * C + c) * chunks + chunk]
// for an Op (Welford of x for the forward, pairs of sums for the backward).  Callers merge the
// partials in a fixed order (per (n, group) or per channel): deterministic, no atomics.
//   NCHW: a 1-D block walks a contiguous chunk of one (n, c) row with VEC-wide loads.
//   channels_last: a (32 x 8) block covers 32 adjacent channels (coalesced) x a chunk of rows.
// channel_map_kernel: elementwise pass with (n, c) decoded from the flat index.
#pragma once

#include <algorithm>

#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {

constexpr int kReduceThreads = 256;
constexpr int kClTx = 32;  // channels per channels_last block
constexpr int kClTy = 8;   // rows walked in parallel per channels_last block
constexpr int64_t kNchwChunk = 8192;  // elements of one (n, c) row per block (multiple of 8)
constexpr int64_t kClChunk = 256;     // rows per channels_last block (multiple of kClTy)

struct ChannelPlan {
  bool cl = false;     // channels_last kernel (also used for S == 1, where layouts coincide)
  int64_t chunk = 1;   // NCHW: elements of S per block; CL: rows of S per block
  int64_t chunks = 1;  // ceil(S / chunk)
  int64_t ctiles = 1;  // CL: ceil(C / 32)
  int64_t blocks = 0;  // total blocks (grid-stride if above the grid limit)
  int threads = 32;    // NCHW block size
};

inline ChannelPlan plan_channel_reduce(int64_t N, int64_t C, int64_t S, bool channels_last) {
  ChannelPlan p;
  p.cl = channels_last || S == 1;
  if (p.cl) {
    p.chunk = kClChunk;
    p.chunks = std::max<int64_t>(1, ceil_div(S, p.chunk));
    p.ctiles = ceil_div(C, kClTx);
    p.blocks = N * p.chunks * p.ctiles;
    p.threads = kClTx * kClTy;
  } else {
    p.chunk = S > kNchwChunk ? kNchwChunk : S;  // one chunk (starting at 0) when S fits
    p.chunks = std::max<int64_t>(1, ceil_div(S, p.chunk));
    p.blocks = N * C * p.chunks;
    // ~8 elements per thread per chunk pass; at least one warp
    p.threads = int(std::min<int64_t>(kReduceThreads, std::max<int64_t>(32, ceil_div(ceil_div(p.chunk, 8), 32) * 32)));
  }
  return p;
}

// Number of partial accumulators the plan writes: N * C * chunks.
inline int64_t channel_partials(int64_t N, int64_t C, const ChannelPlan& p) { return N * C * p.chunks; }

template <class Op, int VEC>
__global__ void __launch_bounds__(kReduceThreads)
    channel_reduce_nchw_kernel(const Op op, int64_t C, int64_t S, int64_t chunk, int64_t chunks,
                               int64_t blocks, typename Op::Acc* __restrict__ part) {
  using Acc = typename Op::Acc;
  __shared__ Acc smem[32];
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t row = blk / chunks;  // n * C + c
    const int64_t ch = blk - row * chunks;
    const int64_t n = row / C;
    const int64_t c = row - n * C;
    const auto ctx = op.context(n, c);
    const int64_t begin = ch * chunk;
    const int64_t end = min64(S, begin + chunk);
    Acc acc{};
    // VEC > 1 only when S % VEC == 0 (and chunk % VEC == 0): a vector never crosses `end`.
    for (int64_t s = begin + int64_t(threadIdx.x) * VEC; s < end; s += int64_t(blockDim.x) * VEC)
      op.template accumulate<VEC>(acc, ctx, row * S + s);
    acc = block_allreduce(acc, smem);
    if (threadIdx.x == 0) part[blk] = acc;  // blk == (n * C + c) * chunks + ch
  }
}

template <class Op>
__global__ void __launch_bounds__(kClTx * kClTy)
    channel_reduce_cl_kernel(const Op op, int64_t C, int64_t S, int64_t chunk, int64_t chunks,
                             int64_t ctiles, int64_t blocks, typename Op::Acc* __restrict__ part) {
  using Acc = typename Op::Acc;
  __shared__ Acc smem[kClTy][kClTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t ctile = blk % ctiles;
    const int64_t rest = blk / ctiles;
    const int64_t ch = rest % chunks;
    const int64_t n = rest / chunks;
    const int64_t c = ctile * kClTx + tx;
    Acc acc{};
    if (c < C) {
      const auto ctx = op.context(n, c);
      const int64_t end = min64(S, (ch + 1) * chunk);
      for (int64_t s = ch * chunk + ty; s < end; s += kClTy)
        op.template accumulate<1>(acc, ctx, (n * S + s) * C + c);
    }
    smem[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < C) {
      Acc r = smem[0][tx];
#pragma unroll
      for (int k = 1; k < kClTy; ++k) r = merge(r, smem[k][tx]);
      part[(n * C + c) * chunks + ch] = r;
    }
    __syncthreads();
  }
}

// Launch the reduction for `op` over x's geometry.  vec_ok: every pointer the op loads from is
// 16-byte aligned (NCHW additionally needs S % VEC == 0, checked here).
template <typename T, class Op>
void launch_channel_reduce(const Op& op, const ChannelPlan& p, int64_t C, int64_t S, bool vec_ok,
                           typename Op::Acc* part, cudaStream_t stream, const char* name) {
  if (p.blocks == 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(p.blocks, kMaxGrid));
  if (p.cl) {
    FN_LAUNCH((channel_reduce_cl_kernel<Op>), grid, dim3(kClTx, kClTy), 0, stream,
              op, C, S, p.chunk, p.chunks, p.ctiles, p.blocks, part);
  } else {
    constexpr int V = kVec16<T>;
    if (vec_ok && S % V == 0) {
      FN_LAUNCH((channel_reduce_nchw_kernel<Op, V>), grid, p.threads, 0, stream, op, C, S, p.chunk,
                p.chunks, p.blocks, part);
    } else {
      FN_LAUNCH((channel_reduce_nchw_kernel<Op, 1>), grid, p.threads, 0, stream, op, C, S, p.chunk,
                p.chunks, p.blocks, part);
    }
  }
  FN_LAUNCH_CHECK(name);
}

// Elementwise pass: f.apply<VEC, CL>(i, n, c) handles elements i .. i+VEC-1, which share n and
// (NCHW) c, or have channels c .. c+VEC-1 (channels_last).  VEC > 1 requires S % VEC == 0 (NCHW)
// or C % VEC == 0 (channels_last) and 16-byte aligned pointers.
constexpr int kMapThreads = 256;

template <bool CL, int VEC, class F>
__global__ void __launch_bounds__(kMapThreads)
    channel_map_kernel(const F f, int64_t numel, int64_t C, int64_t S) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < numel; i += stride) {
    int64_t n, c;
    if constexpr (CL) {
      const int64_t q = i / C;  // n * S + s
      c = i - q * C;
      n = q / S;
    } else {
      const int64_t q = i / S;  // n * C + c
      n = q / C;
      c = q - n * C;
    }
    f.template apply<VEC, CL>(i, n, c);
  }
}

template <typename T, class F>
void launch_channel_map(const F& f, int64_t numel, int64_t C, int64_t S, bool channels_last,
                        bool ptrs_aligned, cudaStream_t stream, const char* name) {
  if (numel == 0) return;
  constexpr int V = kVec16<T>;
  const bool vec = ptrs_aligned && (channels_last ? C % V == 0 : S % V == 0);
  const int vw = vec ? V : 1;
  const unsigned grid = unsigned(std::min<int64_t>(ceil_div(ceil_div(numel, vw), kMapThreads), kMaxGrid));
  if (channels_last) {
    if (vec) FN_LAUNCH((channel_map_kernel<true, V, F>), grid, kMapThreads, 0, stream, f, numel, C, S);
    else FN_LAUNCH((channel_map_kernel<true, 1, F>), grid, kMapThreads, 0, stream, f, numel, C, S);
  } else {
    if (vec) FN_LAUNCH((channel_map_kernel<false, V, F>), grid, kMapThreads, 0, stream, f, numel, C, S);
    else FN_LAUNCH((channel_map_kernel<false, 1, F>), grid, kMapThreads, 0, stream, f, numel, C, S);
  }
  FN_LAUNCH_CHECK(name);
}

// Where the shift element of partial (n, c) lives: the first element (s = 0) of the first
// channel of c's group (Cg channels per group; 1 for BatchNorm) in sample n, or in sample 0
// when the partials of every sample are merged together (BatchNorm: per_sample = false).
struct ShiftAt {
  int64_t C, S, Cg;
  bool cl, per_sample;
  __device__ __host__ int64_t operator()(int64_t n, int64_t c) const {
    const int64_t nn = per_sample ? n : 0;
    const int64_t c0 = c - c % Cg;
    return cl ? nn * S * C + c0 : (nn * C + c0) * S;
  }
};

// Op for channel_reduce_*: Welford statistics of x - K, K = x[shift(n, c)], one element shared
// by every partial that is merged together.  Merged at the data's magnitude, each fp32 Chan
// step rounds the running mean to the ulp of |mean|: with mean 1e4 and std 1 (ulp ~1e-3) the
// mean drifted 1.4 ulp over 16 merges (an H200 run) where torch is within half an ulp.
// Shifted, the partial means are O(std) and mean = K + shifted mean rounds once.
template <typename T>
struct WelfordOp {
  using Acc = Welford;
  struct Ctx {
    float k;
  };
  const T* x;
  ShiftAt shift;
  __device__ Ctx context(int64_t n, int64_t c) const { return Ctx{to_float(x[shift(n, c)])}; }
  template <int VEC>
  __device__ void accumulate(Acc& acc, const Ctx& ctx, int64_t off) const {
    float v[VEC];
    load_f32<VEC>(x + off, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) welford_update(acc, v[i] - ctx.k);
  }
};

__device__ __forceinline__ float sigmoidf_(float z) { return 1.f / (1.f + expf(-z)); }

}  // namespace fusednorm
