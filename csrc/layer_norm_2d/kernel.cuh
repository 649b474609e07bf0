// LayerNorm over the channels of (N, C, *spatial) (timm's LayerNorm2d): at each (n, position s)
// the C values are normalized.  channels_last is the row pattern over rows of C (the LayerNorm
// launchers, M = N * S rows); NCHW, where a position's C values lie S apart, is the
// channel-strided pattern below.
//
// A tile is one sample n and tx * VEC consecutive positions; a CTA of 256 threads is tx lanes
// along the positions (16-byte vectors of one channel plane: coalesced) times ty = 256 / tx lanes
// along the channels, each thread walking channels ty, ty + ty_count, ... four at a time (four
// independent loads; the backward two, of x and dy).  Statistics per position are shifted sums,
// K = the position's channel-0 value (reduce.cuh shifted_mean_var), the ty lanes' sums added
// through shared memory in order; the normalizing pass re-reads the tile, sized (tx) so that the
// resident CTAs' tiles stay in L2.
//   forward:  y = (x - mean) * rstd * w[c] + b[c]
//   backward: g = dy * w[c], xhat = (x - mean) * rstd,
//             dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
//             dweight[c] = sum dy * xhat, dbias[c] = sum dy: per channel, the tile's
//             positions added across the tx lanes (shuffles), into the CTA's fp32 partial row
//             (one owner thread per channel, tiles in order), then ln::colsum_kernel.
#pragma once

#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace ln2d {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;     // channels in flight per thread (forward: x)
constexpr int kUnrollBwd = 2;  // (backward: x and dy; per-position mean, rstd and sums take registers)

struct Tiling {
  int64_t N, C, S;
  int tx, ty;          // tx * ty == kThreads; tx a power of 2 in [8, 32]
  int64_t tile_s;      // positions per tile: tx * VEC
  int64_t tiles_per_n;
  __host__ __device__ int64_t tiles() const { return N * tiles_per_n; }
};

template <typename T, typename W>
struct Args {
  const T* x;
  const T* dy;
  T* out;  // forward: y; backward: dx
  const W* w;
  const W* b;
  float* mean;  // (N, S)
  float* rstd;
  float eps, inv_c;
};

struct Tile {
  int64_t base;  // element (n, 0, s0) of this thread's positions s0 .. s0 + VEC
  int64_t pos;   // n * S + s0: where its statistics live
  bool live;     // s0 < S (a vector never straddles S: VEC > 1 only when S % VEC == 0)
};

template <int VEC>
__device__ __forceinline__ Tile tile_at(const Tiling& t, int64_t tile, int tx) {
  const int64_t n = tile / t.tiles_per_n;
  const int64_t s0 = (tile - n * t.tiles_per_n) * t.tile_s + int64_t(tx) * VEC;
  return Tile{n * t.C * t.S + s0, n * t.S + s0, s0 < t.S};
}

// The ty lanes' per-position sums (K of them per position) added in ty order; every thread gets
// the totals for its own positions.  Ends with a barrier: `sm` may be written again at once.
template <int VEC, int K>
__device__ __forceinline__ void sum_over_channel_lanes(float (&v)[VEC][K], float* sm, const Tiling& t, int tx,
                                                       int ty) {
  float* mine = sm + (ty * t.tx + tx) * VEC * K;
#pragma unroll
  for (int i = 0; i < VEC; ++i)
#pragma unroll
    for (int k = 0; k < K; ++k) mine[i * K + k] = v[i][k];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < VEC; ++i)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float s = 0.f;
      for (int j = 0; j < t.ty; ++j) s += sm[(j * t.tx + tx) * VEC * K + i * K + k];
      v[i][k] = s;
    }
  __syncthreads();
}

// The U channel vectors c0, c0 + ty_count, ... (those below C) at this thread's positions, of x
// (and of dy: the backward).
template <int U, typename T, int VEC>
__device__ __forceinline__ void load_channels(const Tiling& t, const Tile& p, int64_t c0, const T* x,
                                              Pack<T, VEC> (&xin)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (p.live && c0 + u * t.ty < t.C) xin[u] = ld_pack<VEC>(x + p.base + (c0 + u * t.ty) * t.S);
}
template <int U, typename T, int VEC>
__device__ __forceinline__ void load_channels(const Tiling& t, const Tile& p, int64_t c0, const T* x, const T* dy,
                                              Pack<T, VEC> (&xin)[U], Pack<T, VEC> (&gin)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + u * t.ty;
    if (p.live && c < t.C) {
      xin[u] = ld_pack<VEC>(x + p.base + c * t.S);
      gin[u] = ld_pack<VEC>(dy + p.base + c * t.S);
    }
  }
}

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kThreads, 2) fwd_kernel(const Args<T, W> a, const Tiling t) {
  __shared__ float sm[kThreads * VEC * 2];
  const int tx = int(threadIdx.x) % t.tx, ty = int(threadIdx.x) / t.tx;
  const int64_t cstep = int64_t(t.ty) * kUnroll;
  for (int64_t tile = blockIdx.x; tile < t.tiles(); tile += gridDim.x) {
    const Tile p = tile_at<VEC>(t, tile, tx);
    float k[VEC] = {}, acc[VEC][2] = {};
    if (p.live) unpack(ld_pack<VEC>(a.x + p.base), k);  // channel 0: the shift
    for (int64_t c0 = ty; c0 < t.C; c0 += cstep) {
      Pack<T, VEC> in[kUnroll];
      load_channels(t, p, c0, a.x, in);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (!p.live || c0 + u * t.ty >= t.C) continue;
        float v[VEC];
        unpack(in[u], v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float d = v[i] - k[i];
          acc[i][0] += d;
          acc[i][1] += d * d;
        }
      }
    }
    sum_over_channel_lanes<VEC, 2>(acc, sm, t, tx, ty);
    float mean[VEC], rstd[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const MeanVar mv = shifted_mean_var(k[i], acc[i][0], acc[i][1], a.inv_c);
      mean[i] = mv.mean;
      rstd[i] = rsqrtf(mv.var + a.eps);
    }
    if (p.live && ty == 0) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        a.mean[p.pos + i] = mean[i];
        a.rstd[p.pos + i] = rstd[i];
      }
    }
    for (int64_t c0 = ty; c0 < t.C; c0 += cstep) {  // the tile again (L2), normalized
      Pack<T, VEC> in[kUnroll];
      load_channels(t, p, c0, a.x, in);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + u * t.ty;
        if (!p.live || c >= t.C) continue;
        const float wc = value_or(a.w, c, 1.f);
        const float bc = value_or(a.b, c, 0.f);
        float v[VEC];
        unpack(in[u], v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = (v[i] - mean[i]) * rstd[i] * wc + bc;
        st_pack<VEC>(a.out + p.base + c * t.S, pack<T, VEC>(v));
      }
    }
  }
}

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_kernel(const Args<T, W> a, const Tiling t, float* __restrict__ part_w, float* __restrict__ part_b) {
  __shared__ float sm[kThreads * VEC * 2];
  const int tx = int(threadIdx.x) % t.tx, ty = int(threadIdx.x) / t.tx;
  const int64_t cstep = int64_t(t.ty) * kUnrollBwd;
  const bool wgrad = part_w != nullptr || part_b != nullptr;
  float* pw = part_w != nullptr ? part_w + int64_t(blockIdx.x) * t.C : nullptr;  // this CTA's partial rows
  float* pb = part_b != nullptr ? part_b + int64_t(blockIdx.x) * t.C : nullptr;
  if (wgrad && tx == 0) {  // channel c's entries belong to the thread (tx 0, ty = c % ty_count)
    for (int64_t c = ty; c < t.C; c += t.ty) {
      if (pw != nullptr) pw[c] = 0.f;
      if (pb != nullptr) pb[c] = 0.f;
    }
  }
  for (int64_t tile = blockIdx.x; tile < t.tiles(); tile += gridDim.x) {
    const Tile p = tile_at<VEC>(t, tile, tx);
    float mean[VEC], rstd[VEC], acc[VEC][2] = {};  // per position: sum g * xhat, sum g
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      mean[i] = p.live ? a.mean[p.pos + i] : 0.f;
      rstd[i] = p.live ? a.rstd[p.pos + i] : 0.f;
    }
    // pass A; the loop runs the same trips in every lane (the shuffles below need whole warps)
    for (int64_t c0 = 0; c0 < t.C; c0 += cstep) {
      Pack<T, VEC> xin[kUnrollBwd], gin[kUnrollBwd];
      load_channels(t, p, c0 + ty, a.x, a.dy, xin, gin);
#pragma unroll
      for (int u = 0; u < kUnrollBwd; ++u) {
        const int64_t c = c0 + ty + u * t.ty;
        const bool ok = p.live && c < t.C;
        float wsum[2] = {0.f, 0.f};  // this thread's positions: sum dy * xhat, sum dy
        if (ok) {
          const float wc = value_or(a.w, c, 1.f);
          float xv[VEC], gv[VEC];
          unpack(xin[u], xv);
          unpack(gin[u], gv);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float xhat = (xv[i] - mean[i]) * rstd[i];
            const float g = gv[i] * wc;
            acc[i][0] += g * xhat;
            acc[i][1] += g;
            wsum[0] += gv[i] * xhat;
            wsum[1] += gv[i];
          }
        }
        if (wgrad) {  // the tile's positions of channel c: across the tx lanes, then the owner
#pragma unroll
          for (int m = 1; m < 32; m <<= 1) {
            if (m >= t.tx) break;
            wsum[0] += __shfl_xor_sync(0xffffffffu, wsum[0], m);
            wsum[1] += __shfl_xor_sync(0xffffffffu, wsum[1], m);
          }
          if (tx == 0 && c < t.C) {
            if (pw != nullptr) pw[c] += wsum[0];
            if (pb != nullptr) pb[c] += wsum[1];
          }
        }
      }
    }
    sum_over_channel_lanes<VEC, 2>(acc, sm, t, tx, ty);
    // pass B: dx
    for (int64_t c0 = ty; c0 < t.C; c0 += cstep) {
      Pack<T, VEC> xin[kUnrollBwd], gin[kUnrollBwd];
      load_channels(t, p, c0, a.x, a.dy, xin, gin);
#pragma unroll
      for (int u = 0; u < kUnrollBwd; ++u) {
        const int64_t c = c0 + u * t.ty;
        if (!p.live || c >= t.C) continue;
        const float wc = value_or(a.w, c, 1.f);
        float xv[VEC], gv[VEC];
        unpack(xin[u], xv);
        unpack(gin[u], gv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float xhat = (xv[i] - mean[i]) * rstd[i];
          xv[i] = rstd[i] * (gv[i] * wc - acc[i][1] * a.inv_c - xhat * (acc[i][0] * a.inv_c));
        }
        st_pack<VEC>(a.out + p.base + c * t.S, pack<T, VEC>(xv));
      }
    }
  }
}

}  // namespace ln2d
}  // namespace fusednorm
