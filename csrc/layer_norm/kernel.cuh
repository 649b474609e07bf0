// LayerNorm / RMSNorm kernels over the last dim of an (M, N) view.
//
// Forward: one block per row (grid-stride over rows).  Thread t owns the VEC-wide column chunks
// t*VEC + k*blockDim*VEC.  With ITEMS > 0 the row fits the block's registers (ITEMS chunks per
// thread) and is read once; ITEMS == 0 is the looped path for rows of any length, which reads
// the row again for the second pass (it was just read by the same block: mostly cache hits).
// Statistics: per-thread Welford, Chan-merged over the block; RMS uses mean(x^2) = var + mean^2.
//
// Backward: a block walks rows blockIdx.x, blockIdx.x + gridDim.x, ...; per row
//   h = dy * w,  xhat = (x - mean) * rstd,
//   dx = rstd * (h - xhat * mean(h * xhat) - mean(h))     (LN; RMS drops the mean(h) term)
// and the block's dweight/dbias partials (sum of dy * xhat, sum of dy over its rows) stay in
// registers (ITEMS > 0) or in the block's own row of the fp32 partial buffer (ITEMS == 0),
// so no two threads ever touch the same partial.  colsum_kernel then sums the partials in a
// fixed order: deterministic, no atomics.
#pragma once

#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace ln {

constexpr int kMaxThreads = 512;

template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_fwd_kernel(const LayerNormFwdArgs a) {
  __shared__ Welford smem[32];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ res = static_cast<const T*>(a.residual);
  const W* __restrict__ w = static_cast<const W*>(a.weight);
  const W* __restrict__ b = static_cast<const W*>(a.bias);
  T* __restrict__ out = static_cast<T*>(a.out);
  T* __restrict__ xsum = static_cast<T*>(a.xsum);
  const int64_t N = a.N;
  const int64_t step = int64_t(blockDim.x) * VEC;
  const int64_t col0 = int64_t(threadIdx.x) * VEC;

  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const T* xr = x + row * a.x_row_stride;
    const T* rr = res ? res + row * a.residual_row_stride : nullptr;
    T* sr = xsum ? xsum + row * N : nullptr;
    T* yr = out + row * N;

    // The normalized input: x, or x + residual rounded to x's dtype (exactly what xsum stores,
    // so the backward, which reads xsum, sees the same values).
    auto load_input = [&](int64_t col, float* v) {
      load_f32<VEC>(xr + col, v);
      if (rr) {
        float r[VEC];
        load_f32<VEC>(rr + col, r);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = round_to<T>(v[i] + r[i]);
        store_f32<VEC>(sr + col, v);
      }
    };

    Welford wf = welford_init();
    float cache[ITEMS > 0 ? ITEMS : 1][VEC];
    if constexpr (ITEMS > 0) {
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t col = col0 + it * step;
        if (col < N) {  // vector path: N % VEC == 0, so the whole chunk is in range
          load_input(col, cache[it]);
#pragma unroll
          for (int i = 0; i < VEC; ++i) welford_update(wf, cache[it][i]);
        }
      }
    } else {
      for (int64_t col = col0; col < N; col += step) {
        float v[VEC];
        load_input(col, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) welford_update(wf, v[i]);
      }
    }
    wf = block_allreduce(wf, smem);
    const float var = wf.m2 / wf.n;  // biased
    const float mu = a.rms ? 0.f : wf.mean;
    const float rstd = rsqrtf((a.rms ? var + wf.mean * wf.mean : var) + a.eps);
    if (threadIdx.x == 0) {
      if (a.mean != nullptr) a.mean[row] = mu;
      a.rstd[row] = rstd;
    }

    auto normalize = [&](int64_t col, const float* v) {
      float wv[VEC], bv[VEC], y[VEC];
      load_f32_or<VEC>(w, col, wv, 1.f);
      load_f32_or<VEC>(b, col, bv, 0.f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) y[i] = (v[i] - mu) * rstd * wv[i] + bv[i];
      store_f32<VEC>(yr + col, y);
    };

    if constexpr (ITEMS > 0) {
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t col = col0 + it * step;
        if (col < N) normalize(col, cache[it]);
      }
    } else {
      // Second read: rr == nullptr here would re-read x; with a residual, recompute x + r
      // (identical rounding) instead of reading back xsum written by this same thread.
      for (int64_t col = col0; col < N; col += step) {
        float v[VEC];
        load_f32<VEC>(xr + col, v);
        if (rr) {
          float r[VEC];
          load_f32<VEC>(rr + col, r);
#pragma unroll
          for (int i = 0; i < VEC; ++i) v[i] = round_to<T>(v[i] + r[i]);
        }
        normalize(col, v);
      }
    }
  }
}

template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kMaxThreads)
    layer_norm_bwd_kernel(const LayerNormBwdArgs a, float* __restrict__ dw_part,
                          float* __restrict__ db_part) {
  // Keep x and dy of the row in registers between the two passes only for small ITEMS; the
  // dweight/dbias accumulators already take 2 * ITEMS * VEC registers.
  constexpr bool kCache = ITEMS > 0 && ITEMS <= 2;
  constexpr int kSlots = ITEMS > 0 ? ITEMS : 1;
  __shared__ Sum2 smem[32];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  const T* __restrict__ dxsum = static_cast<const T*>(a.dxsum);
  const W* __restrict__ w = static_cast<const W*>(a.weight);
  T* __restrict__ dx = static_cast<T*>(a.dx);
  const int64_t N = a.N;
  const int64_t step = int64_t(blockDim.x) * VEC;
  const int64_t col0 = int64_t(threadIdx.x) * VEC;
  const float inv_n = 1.f / float(N);
  float* dwp = dw_part ? dw_part + int64_t(blockIdx.x) * N : nullptr;  // this block's partial row
  float* dbp = db_part ? db_part + int64_t(blockIdx.x) * N : nullptr;

  float accw[kSlots][VEC], accb[kSlots][VEC];
#pragma unroll
  for (int it = 0; it < kSlots; ++it)
#pragma unroll
    for (int i = 0; i < VEC; ++i) accw[it][i] = accb[it][i] = 0.f;
  if constexpr (ITEMS == 0) {
    for (int64_t col = col0; col < N; col += step) {
      if (dwp) store_f32<VEC>(dwp + col, accw[0]);
      if (dbp) store_f32<VEC>(dbp + col, accb[0]);
    }
  }

  float xc[kCache ? kSlots : 1][VEC], gc[kCache ? kSlots : 1][VEC];

  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const float mu = a.rms ? 0.f : a.mean[row];
    const float rstd = a.rstd[row];
    const T* xr = x + row * a.x_row_stride;
    const T* gr = dy + row * N;

    auto load_w = [&](int64_t col, float* wv) { load_f32_or<VEC>(w, col, wv, 1.f); };
    // Pass A: s.a = sum(h * xhat), s.b = sum(h).
    Sum2 s = sum2_init();
    auto pass_a = [&](int64_t col, const float* xv, const float* gv) {
      float wv[VEC];
      load_w(col, wv);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float h = gv[i] * wv[i];
        s.a += h * (xv[i] - mu) * rstd;
        s.b += h;
      }
    };
    if constexpr (ITEMS > 0) {
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t col = col0 + it * step;
        if (col < N) {
          float xv[VEC], gv[VEC];
          load_f32<VEC>(xr + col, xv);
          load_f32<VEC>(gr + col, gv);
          if constexpr (kCache) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) { xc[it][i] = xv[i]; gc[it][i] = gv[i]; }
          }
          pass_a(col, xv, gv);
        }
      }
    } else {
      for (int64_t col = col0; col < N; col += step) {
        float xv[VEC], gv[VEC];
        load_f32<VEC>(xr + col, xv);
        load_f32<VEC>(gr + col, gv);
        pass_a(col, xv, gv);
      }
    }
    s = block_allreduce(s, smem);
    const float c_hx = s.a * inv_n;
    const float c_h = a.rms ? 0.f : s.b * inv_n;

    // Pass B: dx, and accumulate dweight/dbias partials.
    auto pass_b = [&](int64_t col, const float* xv, const float* gv, float* aw, float* ab) {
      float wv[VEC], d[VEC];
      load_w(col, wv);
      load_f32_or<VEC>(dxsum, row * N + col, d, 0.f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = (xv[i] - mu) * rstd;
        d[i] += rstd * (gv[i] * wv[i] - xhat * c_hx - c_h);
        aw[i] += gv[i] * xhat;
        ab[i] += gv[i];
      }
      store_f32<VEC>(dx + row * N + col, d);
    };
    if constexpr (ITEMS > 0) {
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t col = col0 + it * step;
        if (col < N) {
          if constexpr (kCache) {
            pass_b(col, xc[it], gc[it], accw[it], accb[it]);
          } else {
            float xv[VEC], gv[VEC];
            load_f32<VEC>(xr + col, xv);
            load_f32<VEC>(gr + col, gv);
            pass_b(col, xv, gv, accw[it], accb[it]);
          }
        }
      }
    } else {
      for (int64_t col = col0; col < N; col += step) {
        float xv[VEC], gv[VEC], aw[VEC], ab[VEC];
        load_f32<VEC>(xr + col, xv);
        load_f32<VEC>(gr + col, gv);
        // Only this thread ever touches these partial entries (same column mapping each row).
        if (dwp) load_f32<VEC>(dwp + col, aw);
        if (dbp) load_f32<VEC>(dbp + col, ab);
        pass_b(col, xv, gv, aw, ab);
        if (dwp) store_f32<VEC>(dwp + col, aw);
        if (dbp) store_f32<VEC>(dbp + col, ab);
      }
    }
  }

  if constexpr (ITEMS > 0) {
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t col = col0 + it * step;
      if (col < N) {
        if (dwp) store_f32<VEC>(dwp + col, accw[it]);
        if (dbp) store_f32<VEC>(dbp + col, accb[it]);
      }
    }
  }
}

// out[col] = sum over g of part[g * N + col], g = 0 .. rows-1, in a fixed order.
// Block (32, kColsumRows): threadIdx.x picks the column, threadIdx.y strides over g; the
// kColsumRows column partials are then added in ascending y.  Deterministic.
constexpr int kColsumRows = 16;

template <typename W>
__global__ void __launch_bounds__(32 * kColsumRows)
    colsum_kernel(const float* __restrict__ part, int64_t rows, int64_t N, W* __restrict__ out) {
  __shared__ float smem[kColsumRows][33];
  for (int64_t c0 = int64_t(blockIdx.x) * 32; c0 < N; c0 += int64_t(gridDim.x) * 32) {
    const int64_t col = c0 + threadIdx.x;
    float s = 0.f;
    if (col < N)
      for (int64_t g = threadIdx.y; g < rows; g += kColsumRows) s += part[g * N + col];
    smem[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < N) {
      float t = 0.f;
#pragma unroll
      for (int k = 0; k < kColsumRows; ++k) t += smem[k][threadIdx.x];
      out[col] = from_float<W>(t);
    }
    __syncthreads();
  }
}

}  // namespace ln
}  // namespace fusednorm
