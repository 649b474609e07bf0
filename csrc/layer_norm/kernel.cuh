// LayerNorm / RMSNorm over the last dim of an (M, N) view, on the row pattern (row.cuh).
//
// Forward (row::fwd_kernel with FwdOp):
//   LN:  y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(mean((x - mean)^2) + eps)
//   RMS: y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
//   with a residual the normalized input is x + r rounded to x's dtype, stored as xsum.
//
// Backward, per row, with h = dy * w and xhat = (x - mean) * rstd:
//   dx = rstd * (h - xhat * mean(h * xhat) - mean(h))   (+ dxsum; RMS drops mean(h))
//   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy
// A persistent CTA owns one fp32 partial row of dweight and of dbias, accumulated in shared
// memory over its rows (each thread its own columns, then the row groups added in order), and
// prefetches its next row's x and dy while the current one reduces.  colsum_kernel adds the
// partial rows of dweight and dbias in one launch, in a fixed order: deterministic, no atomics.
#pragma once

#include "common.cuh"
#include "reduce.cuh"
#include "row.cuh"

namespace fusednorm {
namespace ln {

template <typename T_, typename W>
struct FwdOp {
  using T = T_;
  const T* __restrict__ x;
  int64_t x_stride;
  const T* __restrict__ res;  // nullptr: no residual
  int64_t res_stride;
  const W* __restrict__ w;
  const W* __restrict__ b;
  T* __restrict__ out;
  T* __restrict__ xsum;
  float* __restrict__ mean_out;  // nullptr for RMS
  float* __restrict__ rstd_out;
  int64_t rows, len;
  float inv_len, eps;
  bool rms;

  template <int VEC>
  __device__ __forceinline__ Pack<T, VEC> load(int64_t row, int64_t col) const {
    Pack<T, VEC> v = ld_pack<VEC>(x + row * x_stride + col);
    if (res != nullptr) {
      float a[VEC], r[VEC];
      unpack(v, a);
      unpack(ld_pack<VEC>(res + row * res_stride + col), r);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] += r[i];
      v = pack<T, VEC>(a);  // rounded: exactly what xsum holds for the backward
      st_pack<VEC>(xsum + row * len + col, v);
    }
    return v;
  }
  template <int VEC>
  __device__ __forceinline__ Pack<T, VEC> reload(int64_t row, int64_t col) const {
    return ld_pack<VEC>(res != nullptr ? xsum + row * len + col : x + row * x_stride + col);
  }
  __device__ __forceinline__ void stats(int64_t row, float mean, float rstd) const {
    if (mean_out != nullptr) mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
  struct RowCtx {};
  __device__ __forceinline__ RowCtx row_ctx(int64_t) const { return {}; }
  template <int VEC>
  __device__ __forceinline__ void store(RowCtx, int64_t row, int64_t col, const Pack<T, VEC>& xv, float mean,
                                        float rstd) const {
    float v[VEC], wv[VEC], bv[VEC];
    unpack(xv, v);
    load_f32_or<VEC>(w, col, wv, 1.f);
    load_f32_or<VEC>(b, col, bv, 0.f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = (v[i] - mean) * rstd * wv[i] + bv[i];
    st_pack<VEC>(out + row * len + col, pack<T, VEC>(v));
  }
};

// Shared-memory dweight/dbias accumulators of one thread: [row group][dw|db][slot][VEC] laid out
// so that a warp's 16-byte accesses are consecutive (no bank conflicts).
template <class S, int VEC>
struct WgradSmem {
  static constexpr int kQ = VEC >= 4 ? VEC / 4 : 1;   // float4 (or float) units per vector
  static constexpr int kUnit = VEC >= 4 ? 4 : 1;
  static constexpr size_t kBytes = size_t(S::WM) * 2 * S::kSlots * VEC * sizeof(float);
  float* base;
  __device__ __forceinline__ float* at(int g, int k, int it, int q, int r) const {
    return base + ((((g * 2 + k) * S::LDGS + it) * kQ + q) * S::kRowThreads + r) * kUnit;
  }
  __device__ __forceinline__ void add(int g, int k, int it, int r, const float (&d)[VEC]) const {
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      float* p = at(g, k, it, q, r);
      if constexpr (kUnit == 4) {
        float4 v = *reinterpret_cast<float4*>(p);
        v.x += d[4 * q];
        v.y += d[4 * q + 1];
        v.z += d[4 * q + 2];
        v.w += d[4 * q + 3];
        *reinterpret_cast<float4*>(p) = v;
      } else {
        p[0] += d[q];
      }
    }
  }
  __device__ __forceinline__ void get(int g, int k, int it, int r, float (&d)[VEC]) const {
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float* p = at(g, k, it, q, r);
#pragma unroll
      for (int u = 0; u < kUnit; ++u) d[q * kUnit + u] = p[u];
    }
  }
};

template <typename T, int VEC, class S>
struct BwdRow {
  Pack<T, VEC> x[S::LDGS], dy[S::LDGS];
  float mean, rstd;
};

template <typename T, typename W, int VEC, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks)
    layer_norm_bwd_kernel(const LayerNormBwdArgs a, const float inv_n, float* __restrict__ part_w,
                          float* __restrict__ part_b) {
  extern __shared__ float4 wgrad_smem[];
  __shared__ float red[row::RowReduce<S, 2>::kFloats];
  row::RowReduce<S, 2> reduce{red};
  const row::Lane<S> l;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  const T* __restrict__ dxsum = static_cast<const T*>(a.dxsum);
  const W* w = static_cast<const W*>(a.weight);
  T* __restrict__ dx = static_cast<T*>(a.dx);
  const int64_t M = a.M, N = a.N;
  const bool wgrad = part_w != nullptr || part_b != nullptr;
  const WgradSmem<S, VEC> acc{reinterpret_cast<float*>(wgrad_smem)};
  if (wgrad) {  // each thread zeroes the entries only it adds to
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it)
#pragma unroll
      for (int k = 0; k < 2; ++k)
#pragma unroll
        for (int q = 0; q < WgradSmem<S, VEC>::kQ; ++q)
#pragma unroll
          for (int u = 0; u < WgradSmem<S, VEC>::kUnit; ++u) acc.at(l.g, k, it, q, l.r)[u] = 0.f;
  }

  const int64_t tiles = ceil_div(M, S::WM);
  auto load_row = [&](int64_t tile, BwdRow<T, VEC, S>& d) {
    const int64_t row = tile * S::WM + l.g;
    const bool live = row < M;
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = l.template col<VEC>(it);
      const bool ok = live && col < N;
      d.x[it] = ok ? ld_pack<VEC>(x + row * a.x_row_stride + col) : zero_pack<T, VEC>();
      d.dy[it] = ok ? ld_pack<VEC>(dy + row * N + col) : zero_pack<T, VEC>();
    }
    d.mean = live && !a.rms ? a.mean[row] : 0.f;
    d.rstd = live ? a.rstd[row] : 0.f;
  };

  BwdRow<T, VEC, S> next;
  if (int64_t(blockIdx.x) < tiles) load_row(blockIdx.x, next);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    BwdRow<T, VEC, S> cur = next;
    if (tile + gridDim.x < tiles) load_row(tile + gridDim.x, next);  // in flight while this row reduces
    const int64_t row = tile * S::WM + l.g;
    const bool live = row < M;
    bool ok[S::LDGS];
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) ok[it] = live && l.template col<VEC>(it) < N;
    // pass A: sum(h * xhat), sum(h)
    float s[2] = {0.f, 0.f};
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      if (!ok[it]) continue;
      float xv[VEC], gv[VEC], wv[VEC];
      unpack(cur.x[it], xv);
      unpack(cur.dy[it], gv);
      load_f32_or<VEC>(w, l.template col<VEC>(it), wv, 1.f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float h = gv[i] * wv[i];
        s[0] += h * ((xv[i] - cur.mean) * cur.rstd);
        s[1] += h;
      }
    }
    reduce(l, s);
    const float c_hx = s[0] * inv_n;
    const float c_h = a.rms ? 0.f : s[1] * inv_n;
    // pass B: dx, and this thread's dweight/dbias columns; x, dy and w converted again rather
    // than kept live as fp32 across the reduction
    row::opaque_all(cur.x);
    row::opaque_all(cur.dy);
    opaque_ptr(w);
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      if (!ok[it]) continue;
      const int64_t col = l.template col<VEC>(it);
      float xv[VEC], gv[VEC], wv[VEC], d[VEC] = {}, pw[VEC];
      unpack(cur.x[it], xv);
      unpack(cur.dy[it], gv);
      load_f32_or<VEC>(w, col, wv, 1.f);
      if (dxsum != nullptr) unpack(ld_pack<VEC>(dxsum + row * N + col), d);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = (xv[i] - cur.mean) * cur.rstd;
        const float r = cur.rstd * (gv[i] * wv[i] - xhat * c_hx - c_h);
        d[i] = dxsum != nullptr ? d[i] + r : r;
        pw[i] = gv[i] * xhat;
      }
      st_pack<VEC>(dx + row * N + col, pack<T, VEC>(d));
      if (wgrad) {
        acc.add(l.g, 0, it, l.r, pw);
        acc.add(l.g, 1, it, l.r, gv);
      }
    }
  }

  if (wgrad) {  // this CTA's partial rows: the row groups' columns added in group order
    __syncthreads();
    if (l.g == 0) {
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = l.template col<VEC>(it);
        if (col >= N) continue;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          float* part = k == 0 ? part_w : part_b;
          if (part == nullptr) continue;
          float t[VEC], u[VEC];
          acc.get(0, k, it, l.r, t);
#pragma unroll
          for (int g = 1; g < S::WM; ++g) {
            acc.get(g, k, it, l.r, u);
#pragma unroll
            for (int i = 0; i < VEC; ++i) t[i] += u[i];
          }
#pragma unroll
          for (int i = 0; i < VEC; ++i) part[int64_t(blockIdx.x) * N + col + i] = t[i];
        }
      }
    }
  }
}

// Rows longer than the largest cached shape (S::WM == 1): two streaming passes over x and dy
// (the second mostly from L2), the partial row in global memory, each column read-modify-written
// only by the thread that owns it.
template <typename T, typename W, int VEC, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks)
    layer_norm_bwd_looped_kernel(const LayerNormBwdArgs a, const float inv_n, float* __restrict__ part_w,
                                 float* __restrict__ part_b) {
  static_assert(S::WM == 1, "looped rows: one row per CTA");
  constexpr int64_t kChunk = int64_t(S::kSlots) * VEC;
  __shared__ float red[row::RowReduce<S, 2>::kFloats];
  row::RowReduce<S, 2> reduce{red};
  const row::Lane<S> l;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  const T* __restrict__ dxsum = static_cast<const T*>(a.dxsum);
  const W* __restrict__ w = static_cast<const W*>(a.weight);
  T* __restrict__ dx = static_cast<T*>(a.dx);
  const int64_t M = a.M, N = a.N;
  float* pw_row = part_w != nullptr ? part_w + int64_t(blockIdx.x) * N : nullptr;
  float* pb_row = part_b != nullptr ? part_b + int64_t(blockIdx.x) * N : nullptr;
  const float zero[VEC] = {};
  for (int64_t base = 0; base < N; base += kChunk) {
#pragma unroll
    for (int it = 0; it < S::LDGS; ++it) {
      const int64_t col = base + l.template col<VEC>(it);
      if (col >= N) continue;
      if (pw_row != nullptr) store_f32<VEC>(pw_row + col, zero);
      if (pb_row != nullptr) store_f32<VEC>(pb_row + col, zero);
    }
  }
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const float mean = a.rms ? 0.f : a.mean[row];
    const float rstd = a.rstd[row];
    const T* xr = x + row * a.x_row_stride;
    const T* gr = dy + row * N;
    float s[2] = {0.f, 0.f};
    for (int64_t base = 0; base < N; base += kChunk) {
      Pack<T, VEC> xp[S::LDGS], gp[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col < N) {
          xp[it] = ld_pack<VEC>(xr + col);
          gp[it] = ld_pack<VEC>(gr + col);
        }
      }
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col >= N) continue;
        float xv[VEC], gv[VEC], wv[VEC];
        unpack(xp[it], xv);
        unpack(gp[it], gv);
        load_f32_or<VEC>(w, col, wv, 1.f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float h = gv[i] * wv[i];
          s[0] += h * ((xv[i] - mean) * rstd);
          s[1] += h;
        }
      }
    }
    reduce(l, s);
    const float c_hx = s[0] * inv_n;
    const float c_h = a.rms ? 0.f : s[1] * inv_n;
    for (int64_t base = 0; base < N; base += kChunk) {
      Pack<T, VEC> xp[S::LDGS], gp[S::LDGS], dp[S::LDGS];
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col < N) {
          xp[it] = ld_pack<VEC>(xr + col);
          gp[it] = ld_pack<VEC>(gr + col);
          if (dxsum != nullptr) dp[it] = ld_pack<VEC>(dxsum + row * N + col);
        }
      }
#pragma unroll
      for (int it = 0; it < S::LDGS; ++it) {
        const int64_t col = base + l.template col<VEC>(it);
        if (col >= N) continue;
        float xv[VEC], gv[VEC], wv[VEC], d[VEC] = {}, pw[VEC], pb[VEC];
        unpack(xp[it], xv);
        unpack(gp[it], gv);
        load_f32_or<VEC>(w, col, wv, 1.f);
        if (dxsum != nullptr) unpack(dp[it], d);
        // partial rows: VEC % 4 == 0 with N % VEC == 0 keeps them 16-byte aligned (or VEC == 1)
        load_f32_or<VEC>(pw_row, col, pw, 0.f);
        load_f32_or<VEC>(pb_row, col, pb, 0.f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float xhat = (xv[i] - mean) * rstd;
          const float r = rstd * (gv[i] * wv[i] - xhat * c_hx - c_h);
          d[i] = dxsum != nullptr ? d[i] + r : r;
          pw[i] += gv[i] * xhat;
          pb[i] += gv[i];
        }
        st_pack<VEC>(dx + row * N + col, pack<T, VEC>(d));
        if (pw_row != nullptr) store_f32<VEC>(pw_row + col, pw);
        if (pb_row != nullptr) store_f32<VEC>(pb_row + col, pb);
      }
    }
  }
}

// dweight / dbias = column sums of the P partial rows; blockIdx.y picks the tensor (the launcher
// passes the present ones first).  A block adds a tile of `tw` columns (32, 16, 8 or 4: narrow
// rows take narrow tiles so that there are >= 2 blocks per SM); a warp reads tw consecutive
// floats of 32 / tw partial rows per instruction, the block's 8 * 32 / tw row sums are then
// added in order.  Deterministic.
constexpr int kColsumThreads = 256;

template <typename W>
__global__ void __launch_bounds__(kColsumThreads)
    colsum_kernel(const float* __restrict__ part0, W* __restrict__ out0, const float* __restrict__ part1,
                  W* __restrict__ out1, int64_t P, int64_t N, int tw_log2) {
  __shared__ float sm[kColsumThreads];
  const float* __restrict__ part = blockIdx.y == 0 ? part0 : part1;
  W* __restrict__ out = blockIdx.y == 0 ? out0 : out1;
  const int tw = 1 << tw_log2;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int c = lane & (tw - 1);
  const int rid = warp * (32 >> tw_log2) + (lane >> tw_log2);  // 0 .. step-1
  const int step = kColsumThreads >> tw_log2;                  // partial rows a block reads at once
  for (int64_t c0 = int64_t(blockIdx.x) * tw; c0 < N; c0 += int64_t(gridDim.x) * tw) {
    const int64_t col = c0 + c;
    float s = 0.f;
    if (col < N) {
      // rows rid, rid + step, ... added in order; four loads in flight at a time
      const int64_t stride = int64_t(step) * N;
      const float* q = part + int64_t(rid) * N + col;
      int64_t p = rid;
      for (; p + 3 * step < P; p += 4 * step, q += 4 * stride) {
        const float a = q[0], b = q[stride], d = q[2 * stride], e = q[3 * stride];
        s += a;
        s += b;
        s += d;
        s += e;
      }
      for (; p < P; p += step, q += stride) s += *q;
    }
    sm[rid * tw + c] = s;
    __syncthreads();
    if (tid < tw && c0 + tid < N) {
      float t = 0.f;
      for (int j = 0; j < step; ++j) t += sm[j * tw + tid];
      out[c0 + tid] = from_float<W>(t);
    }
    __syncthreads();
  }
}

}  // namespace ln
}  // namespace fusednorm
