// GroupNorm (InstanceNorm = GroupNorm with G = C), optional SiLU after the affine, on
// (N, C, S) in NCHW or channels_last (read in place).  Cg = C / G channels per group,
// K = Cg * S elements per (n, g) slice.
//
// Forward:  per-(n, c, chunk) Welford partials (channel.cuh) -> gn_stats_kernel merges the
//           Cg * chunks partials of each (n, g) with Chan -> mean, rstd -> elementwise
//           y = act((x - mean) * rstd * w[c] + b[c]).
// Backward: with z = xhat * w + b, g = dy * act'(z) (act' = 1 without SiLU), h = g * w:
//           dx = rstd * (h - mean_slice(h) - xhat * mean_slice(h * xhat))
//           per-(n, c, chunk) partials of (sum g, sum g * xhat) -> gn_bwd_group_kernel:
//           per-(n, c) sums and per-(n, g) coefficients -> gn_bwd_wgrad_kernel: dweight[c] =
//           sum_n sum g * xhat, dbias[c] = sum_n sum g -> elementwise dx.
#pragma once

#include "channel.cuh"
#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace gn {

// d silu(z) / dz = s * (1 + z * (1 - s)),  s = sigmoid(z)
__device__ __forceinline__ float silu_grad(float z) {
  const float s = sigmoidf_(z);
  return s * (1.f + z * (1.f - s));
}

template <typename T, typename W>
struct BwdOp {
  using Acc = Sum2;  // a: sum g, b: sum g * xhat
  struct Ctx { float mu, r, w, b; };
  const T* x;
  const T* dy;
  const W* w;
  const W* b;
  const float* mean;
  const float* rstd;
  int64_t G, Cg;
  bool silu;
  __device__ Ctx context(int64_t n, int64_t c) const {
    const int64_t ng = n * G + c / Cg;
    return Ctx{mean[ng], rstd[ng], w ? to_float(w[c]) : 1.f, b ? to_float(b[c]) : 0.f};
  }
  template <int VEC>
  __device__ void accumulate(Acc& acc, const Ctx& k, int64_t off) const {
    float xv[VEC], gv[VEC];
    load_f32<VEC>(x + off, xv);
    load_f32<VEC>(dy + off, gv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xhat = (xv[i] - k.mu) * k.r;
      const float g = silu ? gv[i] * silu_grad(xhat * k.w + k.b) : gv[i];
      acc.a += g;
      acc.b += g * xhat;
    }
  }
};

// One thread per (n, g): Chan-merge partials c in group, chunk 0..chunks-1, in that order;
// the partials are of x - K (channel.cuh WelfordOp), K = x[shift(n, g * Cg)].
template <typename T>
__global__ void gn_stats_kernel(const Welford* __restrict__ part, const T* __restrict__ x,
                                ShiftAt shift, int64_t N, int64_t C, int64_t G, int64_t chunks,
                                float eps, float* __restrict__ mean, float* __restrict__ rstd) {
  const int64_t Cg = C / G;
  for (int64_t ng = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; ng < N * G;
       ng += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = ng / G, g = ng - n * G;
    const Welford* p = part + (n * C + g * Cg) * chunks;  // Cg * chunks consecutive partials
    Welford acc{};
    for (int64_t k = 0; k < Cg * chunks; ++k) acc = merge(acc, p[k]);
    mean[ng] = to_float(x[shift(n, g * Cg)]) + acc.mean;
    rstd[ng] = rsqrtf(acc.m2 / acc.n + eps);
  }
}

template <typename T, typename W>
struct FwdMap {
  const T* x;
  T* out;
  const W* w;
  const W* b;
  const float* mean;
  const float* rstd;
  int64_t G, Cg;
  bool silu;
  template <int VEC, bool CL>
  __device__ void apply(int64_t i, int64_t n, int64_t c) const {
    float v[VEC];
    load_f32<VEC>(x + i, v);
    // y = x * scale + shift would cancel for offset data; keep (x - mean) * rstd.
    auto params = [&](int64_t cc, float& mu, float& r, float& wc, float& bc) {
      const int64_t ng = n * G + cc / Cg;
      mu = mean[ng];
      r = rstd[ng];
      wc = w ? to_float(w[cc]) : 1.f;
      bc = b ? to_float(b[cc]) : 0.f;
    };
    float mu, r, wc, bc;
    if constexpr (!CL) params(c, mu, r, wc, bc);  // one channel for the whole vector
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if constexpr (CL) params(c + k, mu, r, wc, bc);
      float y = (v[k] - mu) * r * wc + bc;
      if (silu) y = y * sigmoidf_(y);
      v[k] = y;
    }
    store_f32<VEC>(out + i, v);
  }
};

// One thread per (n, g): per-(n, c) sums (merged over chunks) into nc[n * C + c], and the
// slice coefficients coef[n * G + g] = (mean(h), mean(h * xhat)) with h = g * w.
template <typename W>
__global__ void gn_bwd_group_kernel(const Sum2* __restrict__ part, const W* __restrict__ w,
                                    int64_t N, int64_t C, int64_t G, int64_t S, int64_t chunks,
                                    Sum2* __restrict__ nc, Sum2* __restrict__ coef) {
  const int64_t Cg = C / G;
  const float inv_k = 1.f / float(Cg * S);
  for (int64_t ng = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; ng < N * G;
       ng += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = ng / G, g = ng - n * G;
    Sum2 h = sum2_init();
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const Sum2* p = part + (n * C + c) * chunks;
      Sum2 s = sum2_init();
      for (int64_t k = 0; k < chunks; ++k) s = merge(s, p[k]);
      nc[n * C + c] = s;
      const float wc = w ? to_float(w[c]) : 1.f;
      h.a += wc * s.a;
      h.b += wc * s.b;
    }
    coef[ng] = Sum2{h.a * inv_k, h.b * inv_k};
  }
}

// One thread per channel: dweight[c] = sum_n sum(g * xhat), dbias[c] = sum_n sum(g).
template <typename W>
__global__ void gn_bwd_wgrad_kernel(const Sum2* __restrict__ nc, int64_t N, int64_t C,
                                    W* __restrict__ dweight, W* __restrict__ dbias) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    Sum2 s = sum2_init();
    for (int64_t n = 0; n < N; ++n) s = merge(s, nc[n * C + c]);
    if (dweight) dweight[c] = from_float<W>(s.b);
    if (dbias) dbias[c] = from_float<W>(s.a);
  }
}

template <typename T, typename W>
struct BwdDxMap {
  const T* dy;
  const T* x;
  T* dx;
  const W* w;
  const W* b;
  const float* mean;
  const float* rstd;
  const Sum2* coef;
  int64_t G, Cg;
  bool silu;
  template <int VEC, bool CL>
  __device__ void apply(int64_t i, int64_t n, int64_t c) const {
    float xv[VEC], gv[VEC];
    load_f32<VEC>(x + i, xv);
    load_f32<VEC>(dy + i, gv);
    auto params = [&](int64_t cc, float& mu, float& r, float& wc, float& bc, Sum2& cf) {
      const int64_t ng = n * G + cc / Cg;
      mu = mean[ng];
      r = rstd[ng];
      wc = w ? to_float(w[cc]) : 1.f;
      bc = b ? to_float(b[cc]) : 0.f;
      cf = coef[ng];
    };
    float mu, r, wc, bc;
    Sum2 cf;
    if constexpr (!CL) params(c, mu, r, wc, bc, cf);  // one channel for the whole vector
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if constexpr (CL) params(c + k, mu, r, wc, bc, cf);
      const float xhat = (xv[k] - mu) * r;
      const float g = silu ? gv[k] * silu_grad(xhat * wc + bc) : gv[k];
      xv[k] = r * (g * wc - cf.a - xhat * cf.b);
    }
    store_f32<VEC>(dx + i, xv);
  }
};

}  // namespace gn
}  // namespace fusednorm
