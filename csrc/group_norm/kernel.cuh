// GroupNorm (InstanceNorm = GroupNorm with G = C), optional SiLU after the affine, on (N, C, S)
// in NCHW or channels_last, read in place.  Cg = C / G channels per group, L = Cg * S elements
// per (n, g) group; with z = xhat * w + b and act = SiLU or identity:
//   y  = act(z),  xhat = (x - mean) * rstd                      (mean, rstd per (n, g))
//   g  = dy * act'(z),  h = g * w
//   dx = rstd * (h - mean_group(h) - xhat * mean_group(h * xhat))
//   dweight[c] = sum_{n,s} g * xhat,  dbias[c] = sum_{n,s} g
//
// NCHW (and S == 1): a group is L contiguous elements, a row of the row pattern (row.cuh), so the
//   forward is one launch that reads x once (the row cached in registers, or re-read from L2 by
//   the looped kernel).  The backward (rows_bwd_kernel) is one pass too; the per-(n, c) sums of
//   the weight gradients come from the row's per-slot sums added per channel segment, then
//   grad_merge_kernel adds them over n.
// channels_last: the channel patterns (channel.cuh): shifted sums per (n, c, split) -> a warp per
//   (n, g) merges them -> ClApplyOp; backward: per-(n, c, split) sums of g and g * xhat ->
//   grad_merge_kernel (a warp per (n, g) for the dx coefficients, a warp per c for dweight,
//   dbias; one launch) -> ClDxOp.
#pragma once

#include "channel.cuh"
#include "common.cuh"
#include "reduce.cuh"
#include "row.cuh"

namespace fusednorm {
namespace gn {

using chan::sigmoidf_;

// d silu(z) / dz = s * (1 + z * (1 - s)),  s = sigmoid(z)
__device__ __forceinline__ float silu_grad(float z) {
  const float s = sigmoidf_(z);
  return s * (1.f + z * (1.f - s));
}

// ------------------------------------------------------------------------- NCHW: rows
template <typename T_, typename W>
struct RowsFwdOp {
  using T = T_;
  const T* __restrict__ x;
  T* __restrict__ out;
  const W* __restrict__ w;
  const W* __restrict__ b;
  float* __restrict__ mean_out;  // (N, G)
  float* __restrict__ rstd_out;
  int64_t rows, len;  // N * G rows of L
  float inv_len, eps;
  bool rms;           // false
  int64_t G, Cg;
  FastDiv sdiv;       // column -> channel within the group
  bool silu;

  template <int VEC>
  __device__ __forceinline__ Pack<T, VEC> load(int64_t row, int64_t col) const {
    return ld_pack<VEC>(x + row * len + col);
  }
  template <int VEC>
  __device__ __forceinline__ Pack<T, VEC> reload(int64_t row, int64_t col) const {
    return ld_pack<VEC>(x + row * len + col);
  }
  __device__ __forceinline__ void stats(int64_t row, float mean, float rstd) const {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
  struct RowCtx {
    int64_t c0;  // first channel of the row's group
  };
  __device__ __forceinline__ RowCtx row_ctx(int64_t row) const { return RowCtx{(row % G) * Cg}; }
  // A vector never straddles two channels (VEC > 1 only when S % VEC == 0): one scale and shift.
  template <int VEC>
  __device__ __forceinline__ void store(RowCtx rc, int64_t row, int64_t col, const Pack<T, VEC>& xv, float mean,
                                        float rstd) const {
    const int64_t c = rc.c0 + sdiv.div(uint32_t(col));
    const float a = rstd * (w != nullptr ? to_float(w[c]) : 1.f);
    const float sh = b != nullptr ? to_float(b[c]) : 0.f;
    float v[VEC];
    unpack(xv, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float y = (v[i] - mean) * a + sh;
      v[i] = silu ? y * sigmoidf_(y) : y;
    }
    st_pack<VEC>(out + row * len + col, pack<T, VEC>(v));
  }
};

template <typename T, typename W>
struct RowsBwdArgs {
  const T* x;
  const T* dy;
  T* dx;
  const W* w;
  const W* b;
  const float* mean;  // (N, G)
  const float* rstd;
  float* nc;          // (N * C, 2): per (n, c) sum g, sum g * xhat
  int64_t rows, len, G, Cg, S;
  FastDiv sdiv;
  float inv_len;
  bool silu;
};

// g and h = g * w of one element (z recomputed from xhat).
__device__ __forceinline__ float act_grad(float dy, float xhat, float wc, float bc, bool silu) {
  return silu ? dy * silu_grad(xhat * wc + bc) : dy;
}

// Per-channel sums of one row group's chunk of slots: slot q holds slot[q] = (sum g, sum g * xhat)
// of columns base + q * VEC .. + VEC (a vector lies in one channel).  Channel cg belongs to warp
// cg % WN of the row group -- the same warp in every chunk, so a channel spanning chunks is added
// up in chunk order by one lane: deterministic.
template <class S, int VEC>
__device__ __forceinline__ void channel_sums(const row::Lane<S>& l, const float (*slot)[2], int64_t base,
                                             int64_t nslots, int64_t Sp, int64_t Cg, int64_t row,
                                             float* __restrict__ nc) {
  const int64_t cg_lo = base / Sp;
  const int64_t cg_hi = min64(Cg - 1, (base + nslots * VEC - 1) / Sp);
  for (int64_t cg = cg_lo + ((l.wn - cg_lo % S::WN) + S::WN) % S::WN; cg <= cg_hi; cg += S::WN) {
    const int64_t lo = cg * Sp > base ? (cg * Sp - base) / VEC : 0;
    const int64_t hi = min64(nslots, ceil_div((cg + 1) * Sp - base, VEC));
    float v[2] = {0.f, 0.f};
    for (int64_t q = lo + l.lane; q < hi; q += 32) {
      v[0] += slot[q][0];
      v[1] += slot[q][1];
    }
    warp_sum(v);
    if (l.lane == 0) {
      float* p = nc + (row * Cg + cg) * 2;  // (n * C + g * Cg + cg): row = n * G + g
      if (cg * Sp >= base) {                // the channel starts in this chunk
        p[0] = v[0];
        p[1] = v[1];
      } else {
        p[0] += v[0];
        p[1] += v[1];
      }
    }
  }
}

// Weight and bias of channel c (1 and 0 when absent).
template <typename T, typename W>
__device__ __forceinline__ void channel_affine(const RowsBwdArgs<T, W>& a, int64_t c, float& wc, float& bc) {
  wc = value_or(a.w, c, 1.f);
  bc = value_or(a.b, c, 0.f);
}

// Pass A of one vector at column col of a row whose first channel is c0 (a vector lies in one
// channel): s[0], s[1] += its sums of h * xhat and h; p[0], p[1] += its sums of g and g * xhat.
// (The per-slot stores are add_slot_sums, called after it: inside this function, under its `if`
// in the callers, the compiler no longer splits the loop on seg_sums and the kernels take more
// registers.)
template <typename T, typename W, int VEC>
__device__ __forceinline__ void pass_a_vec(const RowsBwdArgs<T, W>& a, int64_t c0, int64_t col,
                                           const Pack<T, VEC>& xp, const Pack<T, VEC>& gp, float mean, float rstd,
                                           float (&s)[4], float (&p)[2]) {
  float wc, bc;
  channel_affine(a, c0 + a.sdiv.div(uint32_t(col)), wc, bc);
  float xv[VEC], gv[VEC];
  unpack(xp, xv);
  unpack(gp, gv);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const float xhat = (xv[i] - mean) * rstd;
    const float g = act_grad(gv[i], xhat, wc, bc, a.silu);
    const float h = g * wc;
    s[0] += h * xhat;
    s[1] += h;
    p[0] += g;
    p[1] += g * xhat;
  }
}

// Pass B of one vector: dx = rstd * (h - xhat * mean(h * xhat) - mean(h)).
template <typename T, typename W, int VEC>
__device__ __forceinline__ void pass_b_vec(const RowsBwdArgs<T, W>& a, int64_t c0, int64_t row, int64_t col,
                                           const Pack<T, VEC>& xp, const Pack<T, VEC>& gp, float mean, float rstd,
                                           float c_hx, float c_h) {
  float wc, bc;
  channel_affine(a, c0 + a.sdiv.div(uint32_t(col)), wc, bc);
  float xv[VEC], gv[VEC];
  unpack(xp, xv);
  unpack(gp, gv);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const float xhat = (xv[i] - mean) * rstd;
    const float h = act_grad(gv[i], xhat, wc, bc, a.silu) * wc;
    xv[i] = rstd * (h - xhat * c_hx - c_h);
  }
  st_pack<VEC>(a.dx + row * a.len + col, pack<T, VEC>(xv));
}

// A vector's sums of g and g * xhat into the row's (s[2], s[3]) and, with seg_sums, its slot.
__device__ __forceinline__ void add_slot_sums(float (&s)[4], const float (&p)[2], bool seg_sums, float (&slot)[2]) {
  s[2] += p[0];
  s[3] += p[1];
  if (seg_sums) {
    slot[0] = p[0];
    slot[1] = p[1];
  }
}

template <typename T, int VEC, class S>
struct RowsBwdRow {
  Pack<T, VEC> x[S::LDGS], dy[S::LDGS];
  float mean, rstd;
};

// Rows that fit the shape: x and dy cached, and (kPrefetch) the next row's loaded while this one
// reduces (not at 512 threads: 128 registers a thread do not hold two rows and the SiLU terms).
template <typename T, typename W, int VEC, class S, bool kPrefetch>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) rows_bwd_kernel(const RowsBwdArgs<T, W> a) {
  __shared__ float red[row::RowReduce<S, 4>::kFloats];
  __shared__ float slot[S::WM][S::kSlots][2];
  row::RowReduce<S, 4> reduce{red};
  const row::Lane<S> l;
  const int64_t tiles = ceil_div(a.rows, S::WM);
  auto load_row = [&](int64_t tile, RowsBwdRow<T, VEC, S>& d) {
    const int64_t row = tile * S::WM + l.g;
    const bool live = row < a.rows;
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = l.template col<VEC>(it);
      const bool ok = live && col < a.len;
      d.x[it] = ok ? ld_pack<VEC>(a.x + row * a.len + col) : zero_pack<T, VEC>();
      d.dy[it] = ok ? ld_pack<VEC>(a.dy + row * a.len + col) : zero_pack<T, VEC>();
    }
    d.mean = live ? a.mean[row] : 0.f;
    d.rstd = live ? a.rstd[row] : 0.f;
  };
  RowsBwdRow<T, VEC, S> next;
  if (kPrefetch && int64_t(blockIdx.x) < tiles) load_row(blockIdx.x, next);
  const bool seg_sums = a.nc != nullptr && a.Cg > 1;  // per-channel sums by segments of slots
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    RowsBwdRow<T, VEC, S> cur;
    if constexpr (kPrefetch) {
      cur = next;
      if (tile + gridDim.x < tiles) load_row(tile + gridDim.x, next);
    } else {
      load_row(tile, cur);
    }
    const int64_t row = tile * S::WM + l.g;
    const bool live = row < a.rows;
    const int64_t c0 = (row % a.G) * a.Cg;
    if (seg_sums) row::row_sync<S>();  // the previous row's channel sums have read the slots
    // pass A: row sums of h * xhat and h (+ for InstanceNorm the row's sums of g, g * xhat);
    // per-slot sums of g and g * xhat into shared memory
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = l.template col<VEC>(it);
      float p[2] = {0.f, 0.f};
      if (live && col < a.len) pass_a_vec(a, c0, col, cur.x[it], cur.dy[it], cur.mean, cur.rstd, s, p);
      add_slot_sums(s, p, seg_sums, slot[l.g][it * S::kRowThreads + l.r]);
    }
    if (a.Cg == 1) {  // InstanceNorm: the row is one channel; its sums come with the row's
      reduce(l, s);
      if (live && l.r == 0 && a.nc != nullptr) {
        a.nc[row * 2] = s[2];
        a.nc[row * 2 + 1] = s[3];
      }
    } else {
      float s2[2] = {s[0], s[1]};
      reduce(l, s2);
      s[0] = s2[0];
      s[1] = s2[1];
      if (seg_sums) {
        row::row_sync<S>();
        if (live) channel_sums<S, VEC>(l, slot[l.g], 0, ceil_div(a.len, VEC), a.S, a.Cg, row, a.nc);
      }
    }
    const float c_hx = s[0] * a.inv_len, c_h = s[1] * a.inv_len;
    // pass B: dx (x, dy converted again rather than kept live as fp32 across the reductions)
    row::opaque_all(cur.x);
    row::opaque_all(cur.dy);
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = l.template col<VEC>(it);
      if (!live || col >= a.len) continue;
      pass_b_vec(a, c0, row, col, cur.x[it], cur.dy[it], cur.mean, cur.rstd, c_hx, c_h);
    }
  }
}

// Groups longer than the largest shape (S::WM == 1): chunks streamed twice (the second pass from
// L2), per-chunk slot sums added per channel as they come.
template <typename T, typename W, int VEC, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) rows_bwd_looped_kernel(const RowsBwdArgs<T, W> a) {
  static_assert(S::WM == 1, "looped rows: one row per CTA");
  constexpr int64_t kChunk = int64_t(S::kSlots) * VEC;
  __shared__ float red[row::RowReduce<S, 4>::kFloats];
  __shared__ float slot[S::kSlots][2];
  row::RowReduce<S, 4> reduce{red};
  const row::Lane<S> l;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const float mean = a.mean[row], rstd = a.rstd[row];
    const int64_t c0 = (row % a.G) * a.Cg;
    const T* xr = a.x + row * a.len;
    const T* gr = a.dy + row * a.len;
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t base = 0; base < a.len; base += kChunk) {
      Pack<T, VEC> xp[S::LDGS], gp[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col < a.len) {
          xp[it] = ld_pack<VEC>(xr + col);
          gp[it] = ld_pack<VEC>(gr + col);
        }
      }
      const bool seg_sums = a.nc != nullptr && a.Cg > 1;
      if (seg_sums) __syncthreads();  // the previous chunk's channel sums have read the slots
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        float p[2] = {0.f, 0.f};
        if (col < a.len) pass_a_vec(a, c0, col, xp[it], gp[it], mean, rstd, s, p);
        add_slot_sums(s, p, seg_sums, slot[it * S::kRowThreads + l.r]);
      }
      if (seg_sums) {
        __syncthreads();
        channel_sums<S, VEC>(l, slot, base, min64(int64_t(S::kSlots), ceil_div(a.len - base, VEC)), a.S, a.Cg,
                             row, a.nc);
      }
    }
    reduce(l, s);
    if (a.Cg == 1 && l.r == 0 && a.nc != nullptr) {
      a.nc[row * 2] = s[2];
      a.nc[row * 2 + 1] = s[3];
    }
    const float c_hx = s[0] * a.inv_len, c_h = s[1] * a.inv_len;
    for (int64_t base = 0; base < a.len; base += kChunk) {
      Pack<T, VEC> xp[S::LDGS], gp[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col < a.len) {
          xp[it] = ld_pack<VEC>(xr + col);
          gp[it] = ld_pack<VEC>(gr + col);
        }
      }
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col >= a.len) continue;
        pass_b_vec(a, c0, row, col, xp[it], gp[it], mean, rstd, c_hx, c_h);
      }
    }
  }
}

// ----------------------------------------------------------------- channels_last: channels
constexpr int kMergeThreads = 256;  // a warp per item

// A warp per (n, g): the group's Cg * splits partials (contiguous) summed, shifted by
// K = x[n, s = 0, g * Cg] (what chan::ShiftedSumsOp subtracted).
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    stats_merge_kernel(const float* __restrict__ part, int64_t splits, const T* __restrict__ x, int64_t N,
                       int64_t C, int64_t S, int64_t G, float inv_len, float eps, float* __restrict__ mean,
                       float* __restrict__ rstd) {
  const int64_t ng = warp_item();
  const int lane = warp_lane();
  if (ng >= N * G) return;
  const int64_t n = ng / G, g = ng % G, Cg = C / G;
  float s[2];
  warp_sum_pairs(part + (n * C + g * Cg) * splits * 2, Cg * splits, lane, s);
  if (lane != 0) return;
  const MeanVar mv = shifted_mean_var(to_float(x[n * S * C + g * Cg]), s[0], s[1], inv_len);
  mean[ng] = mv.mean;
  rstd[ng] = rsqrtf(mv.var + eps);
}

// Backward merge, one launch: warps [0, N * G) (when coef is wanted) the dx coefficients of
// (n, g): coef = (mean(h), mean(h * xhat)) from the per-(n, c) sums weighted by w[c]; the next C
// warps dweight[c] = sum over n, splits of sum g * xhat, dbias[c] = ... of sum g.
// part[((n * C + c) * splits + split) * 2 + k]: k = 0 sum g, 1 sum g * xhat.
template <typename W>
__global__ void __launch_bounds__(kMergeThreads)
    grad_merge_kernel(const float* __restrict__ part, int64_t splits, int64_t N, int64_t C, int64_t G,
                      const W* __restrict__ w, float inv_len, float* __restrict__ coef, W* __restrict__ dweight,
                      W* __restrict__ dbias) {
  const int64_t item = warp_item();
  const int lane = warp_lane();
  const int64_t ncoef = coef != nullptr ? N * G : 0;
  const int64_t Cg = C / G;
  float s[2] = {0.f, 0.f};
  if (item < ncoef) {
    const int64_t n = item / G, g = item % G;
    const float* p = part + (n * C + g * Cg) * splits * 2;
    for (int64_t j = lane; j < Cg * splits; j += 32) {
      const float wc = w != nullptr ? to_float(w[g * Cg + j / splits]) : 1.f;
      s[0] += wc * p[2 * j];
      s[1] += wc * p[2 * j + 1];
    }
    warp_sum(s);
    if (lane == 0) {
      coef[2 * item] = s[0] * inv_len;
      coef[2 * item + 1] = s[1] * inv_len;
    }
    return;
  }
  const int64_t c = item - ncoef;
  if (c >= C || (dweight == nullptr && dbias == nullptr)) return;
  for (int64_t j = lane; j < N * splits; j += 32) {
    const int64_t n = j / splits, k = j - n * splits;
    const float* p = part + ((n * C + c) * splits + k) * 2;
    s[0] += p[0];
    s[1] += p[1];
  }
  warp_sum(s);
  if (lane == 0) {
    if (dbias != nullptr) dbias[c] = from_float<W>(s[0]);
    if (dweight != nullptr) dweight[c] = from_float<W>(s[1]);
  }
}

// The (n, g) statistics, weight and bias of VEC consecutive channels (loaded once per task).
template <typename W, int VEC>
struct ClChannels {
  float m[VEC], r[VEC], w[VEC], b[VEC];
  __device__ __forceinline__ ClChannels(const float* mean, const float* rstd, const W* wp, const W* bp,
                                        int64_t n, int64_t c, int64_t G, int64_t Cg) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t ng = n * G + (c + v) / Cg;
      m[v] = mean[ng];
      r[v] = rstd[ng];
    }
    chan::channel_vals<VEC, true>(wp, c, w, 1.f);
    chan::channel_vals<VEC, true>(bp, c, b, 0.f);
  }
};

template <typename T, typename W>
struct ClApplyOp {
  static constexpr int kLoads = 4, kMinBlocks = 3;
  static constexpr bool kPlanes = false;  // NCHW groups take the row pattern
  const T* __restrict__ x;
  T* __restrict__ out;
  const W* __restrict__ w;
  const W* __restrict__ b;
  const float* __restrict__ mean;
  const float* __restrict__ rstd;
  int64_t G, Cg;
  bool silu;
  template <int VEC>
  using In = chan::InX<T, VEC>;
  template <int VEC>
  struct Ctx {
    float m[VEC], a[VEC], b[VEC];
  };
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t n, int64_t c, bool) const {
    static_assert(kCl, "channels_last only");
    const ClChannels<W, VEC> ch(mean, rstd, w, b, n, c, G, Cg);
    Ctx<VEC> t;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      t.m[v] = ch.m[v];
      t.a[v] = ch.r[v] * ch.w[v];
      t.b[v] = ch.b[v];
    }
    return t;
  }
  template <int VEC>
  __device__ __forceinline__ In<VEC> load(int64_t off) const {
    return chan::load_x<VEC>(x, off);
  }
  template <int VEC>
  __device__ __forceinline__ void store(const Ctx<VEC>& t, int64_t off, const In<VEC>& in) const {
    float v[VEC];
    unpack(in.x, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float y = (v[i] - t.m[i]) * t.a[i] + t.b[i];
      v[i] = silu ? y * sigmoidf_(y) : y;
    }
    st_pack<VEC>(out + off, pack<T, VEC>(v));
  }
};

// Backward sums per (n, c, split): sum g, sum g * xhat.
template <typename T, typename W>
struct ClGradSumsOp {
  static constexpr int K = 2, kLoads = 2, kMinBlocks = 2;  // the channels' w, b, mean, rstd take registers
  static constexpr bool kPlanes = false;
  const T* __restrict__ x;
  const T* __restrict__ dy;
  const W* __restrict__ w;
  const W* __restrict__ b;
  const float* __restrict__ mean;
  const float* __restrict__ rstd;
  int64_t G, Cg;
  bool silu;
  template <int VEC>
  using In = chan::InXDy<T, VEC>;
  template <int VEC>
  using Ctx = ClChannels<W, VEC>;
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t n, int64_t c) const {
    static_assert(kCl, "channels_last only");
    return Ctx<VEC>(mean, rstd, w, b, n, c, G, Cg);
  }
  template <int VEC>
  __device__ __forceinline__ In<VEC> load(int64_t off) const {
    return chan::load_x_dy<VEC>(x, dy, off);
  }
  template <int VEC>
  __device__ __forceinline__ void accumulate(float (&acc)[VEC][K], const Ctx<VEC>& t, const In<VEC>& in) const {
    float xv[VEC], gv[VEC];
    unpack(in.x, xv);
    unpack(in.dy, gv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xhat = (xv[i] - t.m[i]) * t.r[i];
      const float g = act_grad(gv[i], xhat, t.w[i], t.b[i], silu);
      acc[i][0] += g;
      acc[i][1] += g * xhat;
    }
  }
  __device__ __forceinline__ void once() const {}
};

template <typename T, typename W>
struct ClDxOp {
  static constexpr int kLoads = 4, kMinBlocks = 2;
  static constexpr bool kPlanes = false;
  const T* __restrict__ x;
  const T* __restrict__ dy;
  T* __restrict__ dx;
  const W* __restrict__ w;
  const W* __restrict__ b;
  const float* __restrict__ mean;
  const float* __restrict__ rstd;
  const float* __restrict__ coef;  // (N * G, 2): mean(h), mean(h * xhat)
  int64_t G, Cg;
  bool silu;
  template <int VEC>
  using In = chan::InXDy<T, VEC>;
  template <int VEC>
  struct Ctx {
    ClChannels<W, VEC> ch;
    float c_h[VEC], c_hx[VEC];
  };
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t n, int64_t c, bool) const {
    static_assert(kCl, "channels_last only");
    Ctx<VEC> t{ClChannels<W, VEC>(mean, rstd, w, b, n, c, G, Cg), {}, {}};
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t ng = n * G + (c + v) / Cg;
      t.c_h[v] = coef[2 * ng];
      t.c_hx[v] = coef[2 * ng + 1];
    }
    return t;
  }
  template <int VEC>
  __device__ __forceinline__ In<VEC> load(int64_t off) const {
    return chan::load_x_dy<VEC>(x, dy, off);
  }
  template <int VEC>
  __device__ __forceinline__ void store(const Ctx<VEC>& t, int64_t off, const In<VEC>& in) const {
    float xv[VEC], gv[VEC];
    unpack(in.x, xv);
    unpack(in.dy, gv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xhat = (xv[i] - t.ch.m[i]) * t.ch.r[i];
      const float h = act_grad(gv[i], xhat, t.ch.w[i], t.ch.b[i], silu) * t.ch.w[i];
      xv[i] = t.ch.r[i] * (h - t.c_h[i] - xhat * t.c_hx[i]);
    }
    st_pack<VEC>(dx + off, pack<T, VEC>(xv));
  }
};

// ------------------------------------------------------ InstanceNorm running statistics
// A warp per channel: the batch averages of the instance means and unbiased variances.
__global__ void __launch_bounds__(kMergeThreads)
    instance_running_kernel(const InstanceNormRunningArgs a, float inv_n) {
  const int64_t c = warp_item();
  const int lane = warp_lane();
  if (c >= a.C) return;
  float s[2] = {0.f, 0.f};
  for (int64_t n = lane; n < a.N; n += 32) {
    const float r = a.rstd[n * a.C + c];
    const float var = 1.f / (r * r) - a.eps;
    s[0] += a.mean[n * a.C + c];
    s[1] += var > 0.f ? var : 0.f;
  }
  warp_sum(s);
  if (lane != 0) return;
  const float m = a.momentum;
  if (a.running_mean != nullptr)
    store_any(a.running_mean, a.running_mean_dtype, c,
              load_any(a.running_mean, a.running_mean_dtype, c) * (1.f - m) + (s[0] * inv_n) * m);
  if (a.running_var != nullptr)
    store_any(a.running_var, a.running_var_dtype, c,
              load_any(a.running_var, a.running_var_dtype, c) * (1.f - m) + (s[1] * inv_n * a.unbias) * m);
}

}  // namespace gn
}  // namespace fusednorm
