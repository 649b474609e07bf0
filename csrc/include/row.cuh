// The row pattern: statistics over whole rows of a (rows, len) view, then an elementwise pass
// over the same rows.  LayerNorm/RMSNorm (a row = N features) and GroupNorm/InstanceNorm on
// NCHW (a row = one (n, group): Cg * S contiguous elements) are written on it.
//
// Thread layout.  A CTA is WM row groups of WN warps; a row group owns one row at a time.  Thread
// r (0 .. 32*WN-1) of a row group holds LDGS slots, slot `it` the VEC-element vector at column
// (it * 32*WN + r) * VEC: each warp instruction covers 32 consecutive 16-byte vectors
// (coalesced), and the row stays in registers in its storage dtype (a 16-bit row costs half the
// registers of an fp32 copy: 8192 bf16 over 128 threads is 32 registers a thread).
//
// Statistics without a division per element: LN sums the cached row, then sum((x - mean)^2) over
// it (two passes over registers); RMS sums x^2.  Rows longer than a CTA's registers (the looped
// kernel) keep their first chunk cached, shift by that chunk's mean K and stream sum(x - K),
// sum((x - K)^2) in one pass (reduce.cuh shifted_mean_var), then re-read the rest (from L2: the
// row was read just before) to normalize.
//
// Persistent grid (launch.cuh): min(row tiles, SMs x resident CTAs); a CTA walks tiles
// blockIdx.x, blockIdx.x + gridDim.x, ...  Every thread runs every tile (rows past the end skip
// their loads and stores) so the barriers of the reductions stay uniform.
#pragma once

#include "common.cuh"
#include "launch.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace row {

// MINB: resident CTAs per SM the registers must allow (__launch_bounds__), so that enough rows
// are in flight: ptxas otherwise spends registers on hoisting every parameter load.
template <int WM_, int WN_, int LDGS_, int MINB_ = 1>
struct Shape {
  static constexpr int WM = WM_, WN = WN_, LDGS = LDGS_, kMinBlocks = MINB_;
  static constexpr int kRowThreads = 32 * WN;
  static constexpr int kThreads = 32 * WM * WN;
  static constexpr int kSlots = kRowThreads * LDGS;  // vectors of a row (or chunk) held at once
};

// This thread's place in the CTA.
template <class S>
struct Lane {
  int g;     // row group, 0 .. WM-1
  int wn;    // warp within the row group
  int lane;  // lane within the warp
  int r;     // thread within the row group, 0 .. 32*WN-1
  __device__ __forceinline__ Lane() {
    const int t = int(threadIdx.x);
    lane = t & 31;
    g = (t >> 5) / S::WN;
    wn = (t >> 5) % S::WN;
    r = wn * 32 + lane;
  }
  template <int VEC>
  __device__ __forceinline__ int64_t col(int it) const {
    return (int64_t(it) * S::kRowThreads + r) * VEC;
  }
};

// All-reduce of up to KMAX sums over one row group: warp butterfly, then (WN > 1) the warps'
// sums through shared memory, added in warp order by every thread.  Two buffers used in turn:
// a thread can only write a buffer again after the next reduction's barrier, which every
// thread reaches after reading it, so one barrier per reduction suffices.
template <class S, int KMAX>
struct RowReduce {
  static constexpr int kFloats = S::WN > 1 ? 2 * S::WM * S::WN * KMAX : 1;
  float* smem;
  int parity = 0;
  template <int K>
  __device__ __forceinline__ void operator()(const Lane<S>& l, float (&v)[K]) {
    static_assert(K <= KMAX, "RowReduce sized for fewer sums");
    warp_sum(v);
    if constexpr (S::WN > 1) {
      float* buf = smem + parity * (S::WM * S::WN * KMAX);
      parity ^= 1;
      if (l.lane == 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) buf[(l.g * S::WN + l.wn) * KMAX + k] = v[k];
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < K; ++k) {
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < S::WN; ++j) s += buf[(l.g * S::WN + j) * KMAX + k];
        v[k] = s;
      }
    }
  }
};

// sum of f(x) over the valid cached elements of this thread.
template <int LDGS, int VEC, typename T, class F>
__device__ __forceinline__ float sum_cached(const Pack<T, VEC> (&c)[LDGS], const bool (&ok)[LDGS], F f) {
  float s = 0.f;
#pragma unroll
  for (int it = 0; it < LDGS; ++it) {
    if (ok[it]) {
      float v[VEC];
      unpack(c[it], v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) s += f(v[i]);
    }
  }
  return s;
}

// The cached row converted again where it is used next, not kept live as fp32 (common.cuh).
template <int LDGS, int VEC, typename T>
__device__ __forceinline__ void opaque_all(Pack<T, VEC> (&c)[LDGS]) {
#pragma unroll
  for (int it = 0; it < LDGS; ++it) opaque(c[it]);
}

// ------------------------------------------------------------------------------ forward
// The norm supplies an Op (its kernel.cuh):
//   using T;                                   storage dtype of x and out
//   int64_t rows, len; float inv_len, eps; bool rms;
//   Pack<T,VEC> load<VEC>(row, col)            the normalized input (LN with a residual: x + r,
//                                              rounded to T and stored to xsum)
//   Pack<T,VEC> reload<VEC>(row, col)          the same values again (looped kernel's 2nd pass)
//   void stats(row, mean, rstd)                the row's statistics
//   RowCtx row_ctx(row)                        what a row's stores share (GroupNorm: its group)
//   void store<VEC>(rc, row, col, x, mean, rstd)   normalize, affine, activation, store
template <class Op, int VEC, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) fwd_kernel(const Op op) {
  using T = typename Op::T;
  __shared__ float red[RowReduce<S, 1>::kFloats];
  RowReduce<S, 1> reduce{red};
  const Lane<S> l;
  const int64_t tiles = ceil_div(op.rows, S::WM);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t row = tile * S::WM + l.g;
    const bool live = row < op.rows;
    Pack<T, VEC> v[S::LDGS];
    bool ok[S::LDGS];
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {  // all loads issued before any arithmetic
      const int64_t col = l.template col<VEC>(it);
      ok[it] = live && col < op.len;  // VEC > 1: len % VEC == 0, so a vector is all in or out
      v[it] = ok[it] ? op.template load<VEC>(row, col) : zero_pack<T, VEC>();
    }
    float mean = 0.f;
    if (!op.rms) {
      float s[1] = {sum_cached(v, ok, [](float x) { return x; })};
      reduce(l, s);
      mean = s[0] * op.inv_len;
      opaque_all(v);
    }
    float q[1] = {sum_cached(v, ok, [&](float x) { const float d = x - mean; return d * d; })};
    reduce(l, q);
    const float rstd = rsqrtf(q[0] * op.inv_len + op.eps);
    if (live && l.r == 0) op.stats(row, mean, rstd);
    opaque_all(v);
    const auto rc = op.row_ctx(row);
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it)
      if (ok[it]) op.template store<VEC>(rc, row, l.template col<VEC>(it), v[it], mean, rstd);
  }
}

// Rows longer than S::kSlots * VEC (WM == 1).  inv_first = 1 / (elements of the first chunk).
template <class Op, int VEC, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) fwd_looped_kernel(const Op op, const float inv_first) {
  static_assert(S::WM == 1, "looped rows: one row per CTA");
  using T = typename Op::T;
  constexpr int64_t kChunk = int64_t(S::kSlots) * VEC;
  __shared__ float red[RowReduce<S, 2>::kFloats];
  RowReduce<S, 2> reduce{red};
  const Lane<S> l;
  for (int64_t row = blockIdx.x; row < op.rows; row += gridDim.x) {
    Pack<T, VEC> v[S::LDGS];
    bool ok[S::LDGS];
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = l.template col<VEC>(it);
      ok[it] = col < op.len;
      v[it] = ok[it] ? op.template load<VEC>(row, col) : zero_pack<T, VEC>();
    }
    float k = 0.f;  // the shift: mean of the first chunk (0 for RMS, which needs sum(x^2) only)
    if (!op.rms) {
      float s[1] = {sum_cached(v, ok, [](float x) { return x; })};
      reduce(l, s);
      k = s[0] * inv_first;
      opaque_all(v);
    }
    float acc[2] = {sum_cached(v, ok, [&](float x) { return x - k; }),
                    sum_cached(v, ok, [&](float x) { const float d = x - k; return d * d; })};
    for (int64_t base = kChunk; base < op.len; base += kChunk) {
      Pack<T, VEC> u[S::LDGS];
      bool uk[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        uk[it] = col < op.len;
        u[it] = uk[it] ? op.template load<VEC>(row, col) : zero_pack<T, VEC>();
      }
      acc[0] += sum_cached(u, uk, [&](float x) { return x - k; });
      acc[1] += sum_cached(u, uk, [&](float x) { const float d = x - k; return d * d; });
    }
    reduce(l, acc);
    float mean = 0.f, var = acc[1] * op.inv_len;
    if (!op.rms) {
      const MeanVar mv = shifted_mean_var(k, acc[0], acc[1], op.inv_len);
      mean = mv.mean;
      var = mv.var;
    }
    const float rstd = rsqrtf(var + op.eps);
    if (l.r == 0) op.stats(row, mean, rstd);
    opaque_all(v);
    const auto rc = op.row_ctx(row);
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it)
      if (ok[it]) op.template store<VEC>(rc, row, l.template col<VEC>(it), v[it], mean, rstd);
    for (int64_t base = kChunk; base < op.len; base += kChunk) {
      Pack<T, VEC> u[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {  // loads first, then the stores
        const int64_t col = base + l.template col<VEC>(it);
        if (col < op.len) u[it] = op.template reload<VEC>(row, col);
      }
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col < op.len) op.template store<VEC>(rc, row, col, u[it], mean, rstd);
      }
    }
  }
}

// ------------------------------------------------------------------------- launch template
// Forward shapes, smallest first (a norm's ShapeList below): the launcher takes the first whose
// row capacity (kSlots vectors) covers the row, else the looped kernel.
//   Shape<4, 1, 4>    a warp per row, 4 rows a CTA, 4 vectors a thread  (N <= 1024 bf16)
//   Shape<1, 4, 4>    4 warps per row, 4 vectors a thread               (N <= 4096 bf16)
//   Shape<1, 4, 8>    4 warps per row, 8 vectors a thread               (N <= 8192 bf16)
//   Shape<1, 8, 8>    8 warps per row                                   (N <= 16384 bf16)
//   Shape<1, 16, 8>   16 warps per row                                  (N <= 32768 bf16)
//   looped: Shape<1, 8, 4> chunks
using FwdA = Shape<4, 1, 4>;
using FwdB = Shape<1, 4, 4>;
using FwdC = Shape<1, 4, 8, 5>;   // <= 102 registers: 5 x 16 KB of bf16 rows in flight
using FwdD = Shape<1, 8, 8, 2>;   // <= 128: 2 x 32 KB (3 would spill on sm_80)
using FwdE = Shape<1, 16, 8>;     // one CTA of 64 KB rows
using FwdLoop = Shape<1, 8, 4, 2>;  // 2 x 256 threads x 4 x 16 B = 32 KB in flight per SM

// Backward shapes, smallest first (the kernels are the norms' own: their weight gradients
// differ).  A thread holds 4 vectors of x and of dy, and as many again for the prefetched next
// row (32 elements of a 16-bit row: 64 registers of packs).
using BwdA = Shape<4, 1, 4, 4>;  // <= 128 registers: 4 CTAs per SM       (N <= 1024 bf16)
using BwdB = Shape<1, 4, 4, 4>;  //                                          (N <= 4096 bf16)
using BwdC = Shape<1, 8, 4, 2>;  //                                          (N <= 8192 bf16)
using BwdD = Shape<1, 16, 4, 1>; //                                          (N <= 16384 bf16)
using BwdLoop = Shape<1, 16, 2, 1>;  // 512 threads cap registers at 128: 2 vectors a chunk

// Orders the shared memory of one row group: a warp (WN == 1) or the CTA.
template <class S>
__device__ __forceinline__ void row_sync() {
  if constexpr (S::WN == 1) __syncwarp();
  else __syncthreads();
}

template <class Op, int VEC, class S>
void launch_fwd_shape(const Op& op, cudaStream_t stream, const char* name) {
  constexpr auto kernel = &fwd_kernel<Op, VEC, S>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, 0, ceil_div(op.rows, S::WM));
  FN_LAUNCH((fwd_kernel<Op, VEC, S>), grid, S::kThreads, 0, stream, op);
  FN_LAUNCH_CHECK(name);
}

template <class Op, int VEC>
void launch_fwd_looped(const Op& op, cudaStream_t stream, const char* name) {
  using S = FwdLoop;
  constexpr auto kernel = &fwd_looped_kernel<Op, VEC, S>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, 0, op.rows);
  const float inv_first = float(1.0 / double(std::min<int64_t>(op.len, int64_t(S::kSlots) * VEC)));
  FN_LAUNCH((fwd_looped_kernel<Op, VEC, S>), grid, S::kThreads, 0, stream, op, inv_first);
  FN_LAUNCH_CHECK(name);
}

// The forward shapes a norm offers, smallest first; past the last, the looped kernel.  LayerNorm
// takes them all; GroupNorm, whose rows are groups (thousands of elements), fewer (compile time).
template <class... Shapes>
struct ShapeList {};
using FwdShapes = ShapeList<FwdA, FwdB, FwdC, FwdD, FwdE>;
using FwdShapesScalar = ShapeList<FwdA, FwdB, FwdE>;  // VEC = 1: unaligned rows, odd N

template <class Op, int VEC, class S, class... Rest>
void launch_fwd_first_fit(const Op& op, int64_t nvec, cudaStream_t stream, const char* name) {
  if (nvec <= S::kSlots) return launch_fwd_shape<Op, VEC, S>(op, stream, name);
  if constexpr (sizeof...(Rest) > 0) launch_fwd_first_fit<Op, VEC, Rest...>(op, nvec, stream, name);
  else launch_fwd_looped<Op, VEC>(op, stream, name);
}

// Launch the first shape whose row capacity (kSlots vectors) covers op.len.
template <class Op, int VEC, class... Shapes>
void launch_fwd(const Op& op, ShapeList<Shapes...>, cudaStream_t stream, const char* name) {
  launch_fwd_first_fit<Op, VEC, Shapes...>(op, ceil_div(op.len, VEC), stream, name);
}

}  // namespace row
}  // namespace fusednorm
