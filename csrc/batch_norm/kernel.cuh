// BatchNorm over (N, C, S) in NCHW or channels_last, statistics per channel over N * S.
//
// Training forward: per-(n, c, chunk) Welford partials (channel.cuh; channels_last and S == 1
//   are folded to N' = 1, S' = N * S so chunks tile all rows) -> bn_stats_kernel Chan-merges
//   each channel's partials in a fixed order -> mean, biased var, rstd -> elementwise apply.
// Eval forward: the caller passes the running statistics as fp32 mean / rstd; apply only.
// Backward: per-channel sums (sum dy, sum dy * xhat) by the same partial scheme ->
//   bn_bwd_finalize_kernel: dbias = sum dy, dweight = sum dy * xhat, coefficients ->
//   dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat))  (training)
//   dx = rstd * w * dy                                          (eval)
#pragma once

#include "channel.cuh"
#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace bn {

// One thread per channel: Chan-merge partials n = 0..N-1, chunk = 0..chunks-1 in that order;
// the partials are of x - K (channel.cuh WelfordOp), K = x[shift(0, c)].
template <typename T>
__global__ void bn_stats_kernel(const Welford* __restrict__ part, const T* __restrict__ x,
                                ShiftAt shift, int64_t N, int64_t C, int64_t chunks, float eps,
                                float* __restrict__ mean, float* __restrict__ var,
                                float* __restrict__ rstd) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    Welford acc{};
    for (int64_t n = 0; n < N; ++n) {
      const Welford* p = part + (n * C + c) * chunks;
      for (int64_t k = 0; k < chunks; ++k) acc = merge(acc, p[k]);
    }
    const float v = acc.m2 / acc.n;  // biased
    mean[c] = to_float(x[shift(0, c)]) + acc.mean;
    var[c] = v;
    rstd[c] = rsqrtf(v + eps);
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
  template <int VEC, bool CL>
  __device__ void apply(int64_t i, int64_t, int64_t c) const {
    float v[VEC];
    load_f32<VEC>(x + i, v);
    auto params = [&](int64_t cc, float& mu, float& r, float& wc, float& bc) {
      mu = mean[cc];
      r = rstd[cc];
      wc = w ? to_float(w[cc]) : 1.f;
      bc = b ? to_float(b[cc]) : 0.f;
    };
    float mu, r, wc, bc;
    if constexpr (!CL) params(c, mu, r, wc, bc);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if constexpr (CL) params(c + k, mu, r, wc, bc);
      v[k] = (v[k] - mu) * r * wc + bc;
    }
    store_f32<VEC>(out + i, v);
  }
};

template <typename T>
struct BwdOp {
  using Acc = Sum2;  // a: sum dy, b: sum dy * xhat
  struct Ctx { float mu, r; };
  const T* x;
  const T* dy;
  const float* mean;
  const float* rstd;
  __device__ Ctx context(int64_t, int64_t c) const { return Ctx{mean[c], rstd[c]}; }
  template <int VEC>
  __device__ void accumulate(Acc& acc, const Ctx& k, int64_t off) const {
    float xv[VEC], gv[VEC];
    load_f32<VEC>(x + off, xv);
    load_f32<VEC>(dy + off, gv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc.a += gv[i];
      acc.b += gv[i] * (xv[i] - k.mu) * k.r;
    }
  }
};

// One thread per channel: sums over the partials in a fixed order; weight gradients and the
// dx coefficients coef[c] = (mean(dy), mean(dy * xhat)).
template <typename W>
__global__ void bn_bwd_finalize_kernel(const Sum2* __restrict__ part, int64_t N, int64_t C,
                                       int64_t chunks, float inv_count, W* __restrict__ dweight,
                                       W* __restrict__ dbias, Sum2* __restrict__ coef) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    Sum2 s = sum2_init();
    for (int64_t n = 0; n < N; ++n) {
      const Sum2* p = part + (n * C + c) * chunks;
      for (int64_t k = 0; k < chunks; ++k) s = merge(s, p[k]);
    }
    if (dweight) dweight[c] = from_float<W>(s.b);
    if (dbias) dbias[c] = from_float<W>(s.a);
    coef[c] = Sum2{s.a * inv_count, s.b * inv_count};
  }
}

template <typename T, typename W>
struct BwdDxMap {
  const T* dy;
  const T* x;
  T* dx;
  const W* w;
  const float* mean;
  const float* rstd;
  const Sum2* coef;  // nullptr in eval mode
  template <int VEC, bool CL>
  __device__ void apply(int64_t i, int64_t, int64_t c) const {
    float xv[VEC], gv[VEC];
    load_f32<VEC>(dy + i, gv);
    if (coef) load_f32<VEC>(x + i, xv);
    auto params = [&](int64_t cc, float& mu, float& r, float& wc, Sum2& cf) {
      mu = mean[cc];
      r = rstd[cc];
      wc = w ? to_float(w[cc]) : 1.f;
      cf = coef ? coef[cc] : Sum2{0.f, 0.f};
    };
    float mu, r, wc;
    Sum2 cf;
    if constexpr (!CL) params(c, mu, r, wc, cf);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if constexpr (CL) params(c + k, mu, r, wc, cf);
      const float g = coef ? gv[k] - cf.a - (xv[k] - mu) * r * cf.b : gv[k];
      gv[k] = r * wc * g;
    }
    store_f32<VEC>(dx + i, gv);
  }
};

}  // namespace bn
}  // namespace fusednorm
