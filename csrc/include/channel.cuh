// The channel patterns: per-channel reductions and per-channel elementwise maps over an
// (N, C, S) tensor, S = prod(spatial), in either layout:
//   NCHW:          element (n, c, s) at (n * C + c) * S + s   -- planes of S contiguous elements
//   channels_last: element (n, c, s) at (n * S + s) * C + c   -- rows of C contiguous channels
// BatchNorm (both layouts) and GroupNorm/InstanceNorm on channels_last are written on them; a
// norm supplies an Op with its math (its kernel.cuh) and the skeletons below do the walking.
//
// channels_last (ClGrid): rows grouped in `segs` segments of `rows` rows (BatchNorm: one
//   segment of N * S rows; GroupNorm: one per sample).  A block is tw x tr threads: tw threads
//   along 16-byte channel vectors (up to 64 vectors: 512 bf16 channels of a row), tr = 256 / tw
//   rows; each thread has Op::kLoads independent row loads in flight per step (4 to 8 x 16 B;
//   PyTorch's channels-last BatchNorm keeps PARALLEL_LOADS = 4).  A task is (channel tile, row split,
//   segment); per-channel state (shift, coefficients, accumulators) lives in the thread's
//   registers across its rows: no index division per element.
// NCHW (PlaneGrid): a sub-warp of lp lanes (lp a power of 2, chosen so that lp * kLoads vectors
//   cover a plane, at most 32) walks items (plane, chunk of lp * kLoads vectors); the reduction
//   puts many planes of one channel in a block (256 / lp sub-warps), the map spreads all planes
//   over a persistent grid; the (plane, chunk) of an item is one division per item.
//
// Reductions write per-(segment, channel, split) partials of K sums, laid out
// part[((seg * C + c) * splits + split) * K + k] so that a warp per channel (or per group) merges
// contiguous partials in a fixed order: deterministic, no atomics.  Statistics are shifted sums
// (sum(x - K), sum((x - K)^2), K one element of the set: reduce.cuh shifted_mean_var).
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "launch.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace chan {

constexpr int kThreads = 256;
constexpr int kMaxTileVecs = 64;  // channel vectors of one channels_last tile
constexpr int kTargetPerSm = 4;   // blocks per SM the splits aim for (fixed: workspaces depend on it)

inline int64_t target_blocks() { return int64_t(sm_count_cached()) * kTargetPerSm; }

// ------------------------------------------------------------------------- channels_last
struct ClGrid {
  int64_t C;       // channels (row length)
  int64_t rows;    // rows per segment
  int64_t segs;    // segments
  int64_t splits;  // row splits per segment
  int64_t rps;     // rows per split
  int64_t ctiles;  // channel tiles
  int tw, tr;      // block = tw * tr threads
  __host__ __device__ int64_t tasks() const { return ctiles * splits * segs; }
};

// Row splits: enough tasks for target_blocks(), at most one per tr rows.
inline ClGrid plan_cl(int64_t C, int vec, int64_t rows, int64_t segs) {
  ClGrid g;
  g.C = C;
  g.rows = rows;
  g.segs = segs;
  const int64_t cv = ceil_div(C, vec);
  g.tw = int(std::min<int64_t>(cv, kMaxTileVecs));
  g.tr = std::max(1, kThreads / g.tw);
  g.ctiles = ceil_div(cv, g.tw);
  const int64_t want = ceil_div(target_blocks(), g.ctiles * segs);
  g.splits = std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(rows, g.tr)));
  g.rps = ceil_div(rows, g.splits);
  g.splits = ceil_div(rows, g.rps);  // no empty split
  return g;
}

// The most splits plan_cl can choose, whatever the vector width: sizes workspaces.
inline int64_t max_cl_splits(int64_t rows, int64_t segs) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(target_blocks(), segs), rows));
}

struct ClTask {
  int64_t seg, split, c0;  // c0: this thread's first channel
  int tx, ty;
  bool live;               // c0 < C
};

__device__ __forceinline__ ClTask cl_task(const ClGrid& g, int64_t task, int vec) {
  ClTask t;
  const int tid = int(threadIdx.x);
  t.tx = tid % g.tw;
  t.ty = tid / g.tw;
  const int64_t ctile = task % g.ctiles;
  const int64_t rest = task / g.ctiles;
  t.split = rest % g.splits;
  t.seg = rest / g.splits;
  t.c0 = (ctile * g.tw + t.tx) * vec;
  t.live = t.c0 < g.C;
  return t;
}

// One step's loads of task t: rows r, r + tr, ... (Op::kLoads of them, those below r1), at this
// thread's channels.
template <class Op, int VEC>
__device__ __forceinline__ void load_cl_rows(const Op& op, const ClGrid& g, const ClTask& t, int64_t r, int64_t r1,
                                             typename Op::template In<VEC> (&in)[Op::kLoads]) {
#pragma unroll
  for (int k = 0; k < Op::kLoads; ++k)
    if (r + k * g.tr < r1) in[k] = op.template load<VEC>((t.seg * g.rows + r + k * g.tr) * g.C + t.c0);
}

// What an Op loads per vector: x, or x and dy (In<VEC> of the Ops below).
template <typename T, int VEC>
struct InX {
  Pack<T, VEC> x;
};
template <typename T, int VEC>
struct InXDy {
  Pack<T, VEC> x, dy;
};
template <int VEC, typename T>
__device__ __forceinline__ InX<T, VEC> load_x(const T* x, int64_t off) {
  return InX<T, VEC>{ld_pack<VEC>(x + off)};
}
template <int VEC, typename T>
__device__ __forceinline__ InXDy<T, VEC> load_x_dy(const T* x, const T* dy, int64_t off) {
  return InXDy<T, VEC>{ld_pack<VEC>(x + off), ld_pack<VEC>(dy + off)};
}

// Every Op sets kPlanes (it also runs on NCHW planes), kLoads (the independent vector loads a
// thread issues per step) and kMinBlocks (the resident blocks per SM its registers must allow,
// __launch_bounds__): a reduction of one tensor 8 loads x 2 blocks (2 x 256 threads x 128 B = 64
// KB in flight per SM), of x and dy 4 + 4 x 2 blocks (64 KB); a map of one tensor 4 x 3 blocks
// (48 KB, plus the stores), of two 4 + 4 x 2.
// Op (reduction): K sums per channel;  In<VEC> load<VEC>(offset);  Ctx<VEC> context<VEC, kCl>(seg,
// c) (kCl: channels c .. c+VEC-1; else all VEC elements are channel c);  accumulate(acc, ctx, in)
// adds element v of `in` into acc[v][0..K);  once(): run by one thread of the launch.
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads, Op::kMinBlocks)
    reduce_cl_kernel(const Op op, const ClGrid g, float* __restrict__ part) {
  constexpr int K = Op::K;
  __shared__ float sm[kThreads * VEC * K];
  if (blockIdx.x == 0 && threadIdx.x == 0) op.once();
  for (int64_t task = blockIdx.x; task < g.tasks(); task += gridDim.x) {
    const ClTask t = cl_task(g, task, VEC);
    float acc[VEC][K] = {};
    if (t.live) {
      const auto ctx = op.template context<VEC, true>(t.seg, t.c0);
      const int64_t r1 = min64(g.rows, (t.split + 1) * g.rps);
      for (int64_t r = t.split * g.rps + t.ty; r < r1; r += int64_t(g.tr) * Op::kLoads) {
        typename Op::template In<VEC> in[Op::kLoads];
        load_cl_rows<Op, VEC>(op, g, t, r, r1, in);
#pragma unroll
        for (int k = 0; k < Op::kLoads; ++k)
          if (r + k * g.tr < r1) op.accumulate(acc, ctx, in[k]);
      }
    }
    // the tr row-partials of each channel added in row order
    float* mine = sm + (t.ty * g.tw + t.tx) * VEC * K;
#pragma unroll
    for (int v = 0; v < VEC; ++v)
#pragma unroll
      for (int k = 0; k < K; ++k) mine[v * K + k] = acc[v][k];
    __syncthreads();
    const int ctile_vals = g.tw * VEC * K;
    for (int o = int(threadIdx.x); o < ctile_vals; o += int(blockDim.x)) {
      const int txo = o / (VEC * K), vk = o % (VEC * K);
      float s = 0.f;
      for (int j = 0; j < g.tr; ++j) s += sm[(j * g.tw + txo) * VEC * K + vk];
      const int64_t c = ((task % g.ctiles) * g.tw + txo) * VEC + vk / K;
      if (c < g.C) part[((t.seg * g.C + c) * g.splits + t.split) * K + vk % K] = s;
    }
    __syncthreads();
  }
}

// Op (map): In<VEC> load<VEC>(offset);  Ctx<VEC> context<VEC, kCl>(seg, c, first) (`first`: this
// thread is the one that covers channel c first in the launch -- eval BatchNorm writes the
// channel's statistics there);  store(ctx, offset, in).
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads, Op::kMinBlocks) map_cl_kernel(const Op op, const ClGrid g) {
  for (int64_t task = blockIdx.x; task < g.tasks(); task += gridDim.x) {
    const ClTask t = cl_task(g, task, VEC);
    if (!t.live) continue;
    const auto ctx = op.template context<VEC, true>(t.seg, t.c0, t.seg == 0 && t.split == 0 && t.ty == 0);
    const int64_t r1 = min64(g.rows, (t.split + 1) * g.rps);
    for (int64_t r = t.split * g.rps + t.ty; r < r1; r += int64_t(g.tr) * Op::kLoads) {
      typename Op::template In<VEC> in[Op::kLoads];
      load_cl_rows<Op, VEC>(op, g, t, r, r1, in);
#pragma unroll
      for (int k = 0; k < Op::kLoads; ++k)
        if (r + k * g.tr < r1) op.store(ctx, (t.seg * g.rows + r + k * g.tr) * g.C + t.c0, in[k]);
    }
  }
}

// --------------------------------------------------------------------------------- NCHW
struct PlaneGrid {
  int64_t N, C, S;
  int lp;          // lanes per item
  int64_t ipp;     // items per plane
  int64_t splits;  // reduction: blocks per channel
  int64_t ips;     // reduction: items per split
};

inline PlaneGrid plan_planes(int64_t N, int64_t C, int64_t S, int vec, int loads) {
  PlaneGrid g;
  g.N = N;
  g.C = C;
  g.S = S;
  const int64_t pv = ceil_div(S, vec);
  g.lp = 1;
  while (g.lp < 32 && int64_t(g.lp) * loads < pv) g.lp *= 2;
  g.ipp = ceil_div(pv, int64_t(g.lp) * loads);
  const int64_t items = N * g.ipp;  // per channel
  const int64_t nsw = kThreads / g.lp;
  g.splits = std::max<int64_t>(1, std::min<int64_t>(ceil_div(target_blocks(), C), ceil_div(items, nsw)));
  g.ips = ceil_div(items, g.splits);
  g.splits = ceil_div(items, g.ips);
  return g;
}

inline int64_t max_plane_splits(int64_t C) { return std::max<int64_t>(1, ceil_div(target_blocks(), C)); }

// One item's loads: the vectors v0, v0 + lp, ... (Op::kLoads of them, those within the plane) of
// the plane at `base`.
template <class Op, int VEC>
__device__ __forceinline__ void load_plane_chunk(const Op& op, const PlaneGrid& g, int64_t base, int64_t v0,
                                                 typename Op::template In<VEC> (&in)[Op::kLoads]) {
#pragma unroll
  for (int k = 0; k < Op::kLoads; ++k)
    if ((v0 + k * g.lp) * VEC < g.S) in[k] = op.template load<VEC>(base + (v0 + k * g.lp) * VEC);
}

// Reduction over the planes of one channel per task (task = (channel, split)).
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads, Op::kMinBlocks)
    reduce_nchw_kernel(const Op op, const PlaneGrid g, float* __restrict__ part) {
  constexpr int K = Op::K;
  __shared__ float sm[32 * K];
  if (blockIdx.x == 0 && threadIdx.x == 0) op.once();
  const int li = int(threadIdx.x) % g.lp, sw = int(threadIdx.x) / g.lp, nsw = kThreads / g.lp;
  const int64_t items = g.N * g.ipp;
  for (int64_t task = blockIdx.x; task < g.C * g.splits; task += gridDim.x) {
    const int64_t c = task / g.splits, split = task % g.splits;
    const auto ctx = op.template context<VEC, false>(0, c);
    float acc[VEC][K] = {};
    const int64_t i1 = min64(items, (split + 1) * g.ips);
    for (int64_t i = split * g.ips + sw; i < i1; i += nsw) {
      const int64_t n = i / g.ipp, v0 = (i % g.ipp) * g.lp * Op::kLoads + li;
      const int64_t base = (n * g.C + c) * g.S;
      typename Op::template In<VEC> in[Op::kLoads];
      load_plane_chunk<Op, VEC>(op, g, base, v0, in);
#pragma unroll
      for (int k = 0; k < Op::kLoads; ++k)
        if ((v0 + k * g.lp) * VEC < g.S) op.accumulate(acc, ctx, in[k]);
    }
    float s[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      s[k] = 0.f;
#pragma unroll
      for (int v = 0; v < VEC; ++v) s[k] += acc[v][k];
    }
    block_sum(s, sm);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) part[(c * g.splits + split) * K + k] = s[k];
    }
  }
}

// Map over every (plane, chunk) item, sub-warps striding over the whole tensor.
template <class Op, int VEC>
__global__ void __launch_bounds__(kThreads, Op::kMinBlocks) map_nchw_kernel(const Op op, const PlaneGrid g) {
  const int li = int(threadIdx.x) % g.lp, sw = int(threadIdx.x) / g.lp, nsw = kThreads / g.lp;
  const int64_t items = g.N * g.C * g.ipp;
  for (int64_t i = int64_t(blockIdx.x) * nsw + sw; i < items; i += int64_t(gridDim.x) * nsw) {
    const int64_t p = i / g.ipp, chunk = i % g.ipp;  // plane n * C + c
    const int64_t n = p / g.C, c = p % g.C;
    const auto ctx = op.template context<VEC, false>(n, c, n == 0 && chunk == 0 && li == 0);
    const int64_t v0 = chunk * g.lp * Op::kLoads + li;
    const int64_t base = p * g.S;
    typename Op::template In<VEC> in[Op::kLoads];
    load_plane_chunk<Op, VEC>(op, g, base, v0, in);
#pragma unroll
    for (int k = 0; k < Op::kLoads; ++k)
      if ((v0 + k * g.lp) * VEC < g.S) op.store(ctx, base + (v0 + k * g.lp) * VEC, in[k]);
  }
}

// ------------------------------------------------------------------------ launch templates
// The tensor as the patterns see it: channels_last rows (`rows` per segment, `segs` segments) or
// NCHW planes (N, C, S).
struct Geom {
  bool cl;
  int64_t N, C, S;      // NCHW
  int64_t rows, segs;   // channels_last (C as above)
};
inline Geom cl_geom(int64_t C, int64_t rows, int64_t segs) { return Geom{true, 0, C, 0, rows, segs}; }
inline Geom nchw_geom(int64_t N, int64_t C, int64_t S) { return Geom{false, N, C, S, 0, 0}; }

// Launches the reduction; returns the number of splits (partials per segment and channel).
template <class Op, int VEC>
int64_t launch_reduce(const Op& op, const Geom& g, float* part, cudaStream_t stream, const char* name) {
  int64_t splits = 0;
  if (g.cl) {
    const ClGrid cg = plan_cl(g.C, VEC, g.rows, g.segs);
    const unsigned grid = unsigned(std::min<int64_t>(cg.tasks(), kMaxGrid));
    FN_LAUNCH((reduce_cl_kernel<Op, VEC>), grid, cg.tw * cg.tr, 0, stream, op, cg, part);
    splits = cg.splits;
  } else if constexpr (Op::kPlanes) {
    const PlaneGrid pg = plan_planes(g.N, g.C, g.S, VEC, Op::kLoads);
    const unsigned grid = unsigned(std::min<int64_t>(pg.C * pg.splits, kMaxGrid));
    FN_LAUNCH((reduce_nchw_kernel<Op, VEC>), grid, kThreads, 0, stream, op, pg, part);
    splits = pg.splits;
  } else {
    throw std::logic_error(std::string(name) + ": this op has no NCHW kernel");
  }
  FN_LAUNCH_CHECK(name);
  return splits;
}

// The most partials per segment and channel launch_reduce can write, for any vector width.
inline int64_t max_splits(const Geom& g) {
  return g.cl ? max_cl_splits(g.rows, g.segs) : max_plane_splits(g.C);
}

template <class Op, int VEC>
void launch_map(const Op& op, const Geom& g, cudaStream_t stream, const char* name) {
  if (g.cl) {
    const ClGrid cg = plan_cl(g.C, VEC, g.rows, g.segs);
    const unsigned grid = unsigned(std::min<int64_t>(cg.tasks(), kMaxGrid));
    FN_LAUNCH((map_cl_kernel<Op, VEC>), grid, cg.tw * cg.tr, 0, stream, op, cg);
  } else if constexpr (Op::kPlanes) {
    const PlaneGrid pg = plan_planes(g.N, g.C, g.S, VEC, Op::kLoads);
    constexpr auto kernel = &map_nchw_kernel<Op, VEC>;
    const int64_t items = pg.N * pg.C * pg.ipp;
    const unsigned grid = persistent_grid<kernel>(kThreads, 0, ceil_div(items, kThreads / pg.lp));
    FN_LAUNCH((map_nchw_kernel<Op, VEC>), grid, kThreads, 0, stream, op, pg);
  } else {
    throw std::logic_error(std::string(name) + ": this op has no NCHW kernel");
  }
  FN_LAUNCH_CHECK(name);
}

// ------------------------------------------------------------------------ shared op pieces
// Per-channel values for the VEC elements of a vector: channels c .. c+VEC-1 (kCl, one 16-byte
// load where the vector allows) or VEC copies of channel c.  nullptr: `fill`.
template <int VEC, bool kCl, typename P>
__device__ __forceinline__ void channel_vals(const P* __restrict__ p, int64_t c, float (&out)[VEC], float fill) {
  if (p == nullptr) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = fill;
  } else if constexpr (kCl && VEC > 1 && (VEC * sizeof(P)) % 16 == 0) {
    load_f32<VEC>(p + c, out);
  } else if constexpr (kCl) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = to_float(p[c + v]);
  } else {  // one load, broadcast
    const float x = to_float(p[c]);
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = x;
  }
}

// Sums of x - K per channel, K = x[seg * seg_stride + (c - c % cg) * c_stride]: one element of
// the set merged together (BatchNorm: a channel; GroupNorm: the group of c in sample seg).
template <typename T>
struct ShiftedSumsOp {
  static constexpr int K = 2, kLoads = 8, kMinBlocks = 2;
  static constexpr bool kPlanes = true;
  const T* __restrict__ x;
  int64_t seg_stride, c_stride, cg;
  int64_t* nbt;  // BatchNorm's num_batches_tracked, += 1 once (nullptr: none)
  template <int VEC>
  using In = InX<T, VEC>;
  template <int VEC>
  struct Ctx {
    float k[VEC];
  };
  __device__ __forceinline__ int64_t shift_at(int64_t seg, int64_t c) const {
    return seg * seg_stride + (c - c % cg) * c_stride;
  }
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t seg, int64_t c) const {
    Ctx<VEC> t;
#pragma unroll
    for (int v = 0; v < VEC; ++v) t.k[v] = to_float(x[shift_at(seg, kCl ? c + v : c)]);
    return t;
  }
  template <int VEC>
  __device__ __forceinline__ In<VEC> load(int64_t off) const {
    return load_x<VEC>(x, off);
  }
  template <int VEC>
  __device__ __forceinline__ void accumulate(float (&acc)[VEC][K], const Ctx<VEC>& t, const In<VEC>& in) const {
    float v[VEC];
    unpack(in.x, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float d = v[i] - t.k[i];
      acc[i][0] += d;
      acc[i][1] += d * d;
    }
  }
  __device__ __forceinline__ void once() const {
    if (nbt != nullptr) *nbt += 1;  // read by the merge kernel, the next launch on the stream
  }
};

// 1 / (1 + e^-z): expf (2 ulp) and the fast reciprocal division (2 ulp; 0 once 1 + e^-z passes
// 2^126, z < -87, where the sigmoid is below 1e-38 anyway).  An IEEE division per element would
// be a range check and a slow-path call, unrolled 64 times per thread in the row kernels.
__device__ __forceinline__ float sigmoidf_(float z) { return __fdividef(1.f, 1.f + expf(-z)); }

}  // namespace chan
}  // namespace fusednorm
