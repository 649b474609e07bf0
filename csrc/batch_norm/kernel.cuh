// BatchNorm over (N, C, S) in NCHW or channels_last: statistics per channel over N * S values,
// on the channel patterns (channel.cuh).
//
// Training forward (3 launches): shifted sums per (channel, split) (chan::ShiftedSumsOp, K =
//   the channel's first element; also num_batches_tracked += 1) -> stats_merge_kernel, a warp
//   per channel: mean, biased var, rstd, and the running statistics updated in place
//     f = momentum, or 1 / num_batches_tracked (momentum None: the cumulative average),
//     running_mean <- (1 - f) running_mean + f mean,  running_var <- (1 - f) running_var + f var n/(n-1)
//   computed in fp32, rounded once to each buffer's dtype -> ApplyOp: y = (x - mean) * a + b,
//   a = rstd * w computed once per channel and thread.
// Eval forward (1 launch): ApplyOp with mean = running_mean, rstd = 1/sqrt(running_var + eps),
//   computed per channel in the kernel (the thread first to cover a channel writes them out).
// Backward (3 launches): per-channel sums of dy and dy * (x - mean) -> grad_merge_kernel:
//   dbias = sum dy, dweight = rstd * sum dy (x - mean), coefficients -> DxOp:
//   dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat))   (training)
//   dx = rstd * w * dy                                          (eval)
#pragma once

#include "channel.cuh"
#include "common.cuh"
#include "reduce.cuh"

namespace fusednorm {
namespace bn {

constexpr int kMergeThreads = 256;  // 8 channels a block, a warp each

struct Running {
  void* mean = nullptr;  // (C,) or nullptr, updated in place
  void* var = nullptr;
  DType mean_dtype = DType::kFloat32, var_dtype = DType::kFloat32;
  const int64_t* nbt = nullptr;  // num_batches_tracked, already incremented (cumulative only)
  float momentum = 0.1f;
  bool cumulative = false;  // momentum None
};

// A warp per channel: the splits' partials summed lane-strided, then across the warp.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    stats_merge_kernel(const float* __restrict__ part, int64_t splits, const T* __restrict__ x,
                       int64_t shift_stride, int64_t C, float inv_count, float bessel, float eps,
                       float* __restrict__ mean, float* __restrict__ var, float* __restrict__ rstd,
                       const Running run) {
  const int64_t c = warp_item();
  const int lane = warp_lane();
  if (c >= C) return;  // whole warps
  float s[2];
  warp_sum_pairs(part + c * splits * 2, splits, lane, s);
  if (lane != 0) return;
  const MeanVar mv = shifted_mean_var(to_float(x[c * shift_stride]), s[0], s[1], inv_count);
  mean[c] = mv.mean;
  var[c] = mv.var;
  rstd[c] = rsqrtf(mv.var + eps);
  if (run.mean != nullptr || run.var != nullptr) {
    const float f = run.cumulative ? 1.f / float(*run.nbt) : run.momentum;
    if (run.mean != nullptr)
      store_any(run.mean, run.mean_dtype, c, load_any(run.mean, run.mean_dtype, c) * (1.f - f) + mv.mean * f);
    if (run.var != nullptr)
      store_any(run.var, run.var_dtype, c, load_any(run.var, run.var_dtype, c) * (1.f - f) + mv.var * bessel * f);
  }
}

template <typename T, typename W>
struct ApplyOp {
  static constexpr int kLoads = 4, kMinBlocks = 3;
  static constexpr bool kPlanes = true;
  const T* __restrict__ x;
  T* __restrict__ out;
  const W* __restrict__ w;
  const W* __restrict__ b;
  const float* __restrict__ mean;  // training: the batch statistics
  const float* __restrict__ rstd;
  const void* rm;                  // eval (rm != nullptr): the running statistics
  const void* rv;
  DType rm_dtype, rv_dtype;
  float eps;
  float* __restrict__ mean_out;    // eval: written once per channel
  float* __restrict__ rstd_out;

  template <int VEC>
  using In = chan::InX<T, VEC>;
  template <int VEC>
  struct Ctx {
    float m[VEC], a[VEC], b[VEC];
  };
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t, int64_t c, bool first) const {
    Ctx<VEC> t;
    float r[VEC], wv[VEC];
    if (rm == nullptr) {
      chan::channel_vals<VEC, kCl>(mean, c, t.m, 0.f);
      chan::channel_vals<VEC, kCl>(rstd, c, r, 1.f);
    } else {
      // NCHW: one channel for the whole vector, read once
#pragma unroll
      for (int v = 0; v < (kCl ? VEC : 1); ++v) {
        t.m[v] = load_any(rm, rm_dtype, c + v);
        r[v] = rsqrtf(load_any(rv, rv_dtype, c + v) + eps);
        if (first) {
          mean_out[c + v] = t.m[v];
          rstd_out[c + v] = r[v];
        }
      }
#pragma unroll
      for (int v = 1; v < VEC; ++v) {
        if (!kCl) {
          t.m[v] = t.m[0];
          r[v] = r[0];
        }
      }
    }
    chan::channel_vals<VEC, kCl>(w, c, wv, 1.f);
    chan::channel_vals<VEC, kCl>(b, c, t.b, 0.f);
#pragma unroll
    for (int v = 0; v < VEC; ++v) t.a[v] = r[v] * wv[v];
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
    for (int i = 0; i < VEC; ++i) v[i] = (v[i] - t.m[i]) * t.a[i] + t.b[i];
    st_pack<VEC>(out + off, pack<T, VEC>(v));
  }
};

// Backward sums per channel: sum dy, sum dy * (x - mean).
template <typename T>
struct GradSumsOp {
  static constexpr int K = 2, kLoads = 4, kMinBlocks = 2;
  static constexpr bool kPlanes = true;
  const T* __restrict__ x;
  const T* __restrict__ dy;
  const float* __restrict__ mean;
  template <int VEC>
  using In = chan::InXDy<T, VEC>;
  template <int VEC>
  struct Ctx {
    float m[VEC];
  };
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t, int64_t c) const {
    Ctx<VEC> t;
    chan::channel_vals<VEC, kCl>(mean, c, t.m, 0.f);
    return t;
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
      acc[i][0] += gv[i];
      acc[i][1] += gv[i] * (xv[i] - t.m[i]);
    }
  }
  __device__ __forceinline__ void once() const {}
};

// A warp per channel: dbias = sum dy, dweight = rstd * sum dy (x - mean) (= sum dy * xhat), and
// the dx coefficients coef[c] = (mean(dy), mean(dy * xhat)).
template <typename W>
__global__ void __launch_bounds__(kMergeThreads)
    grad_merge_kernel(const float* __restrict__ part, int64_t splits, int64_t C, float inv_count,
                      const float* __restrict__ rstd, W* __restrict__ dweight, W* __restrict__ dbias,
                      float* __restrict__ coef) {
  const int64_t c = warp_item();
  const int lane = warp_lane();
  if (c >= C) return;
  float s[2];
  warp_sum_pairs(part + c * splits * 2, splits, lane, s);
  if (lane != 0) return;
  const float r = rstd[c];
  if (dbias != nullptr) dbias[c] = from_float<W>(s[0]);
  if (dweight != nullptr) dweight[c] = from_float<W>(r * s[1]);
  coef[2 * c] = s[0] * inv_count;
  coef[2 * c + 1] = r * s[1] * inv_count;
}

template <typename T, typename W>
struct DxOp {
  static constexpr int kLoads = 4, kMinBlocks = 2;
  static constexpr bool kPlanes = true;
  const T* __restrict__ x;
  const T* __restrict__ dy;
  T* __restrict__ dx;
  const W* __restrict__ w;
  const float* __restrict__ mean;
  const float* __restrict__ rstd;
  const float* __restrict__ coef;  // (C, 2); nullptr in eval: dx = rstd * w * dy
  template <int VEC>
  using In = chan::InXDy<T, VEC>;
  template <int VEC>
  struct Ctx {
    float m[VEC], a[VEC], k1[VEC], k2[VEC];
  };
  template <int VEC, bool kCl>
  __device__ __forceinline__ Ctx<VEC> context(int64_t, int64_t c, bool) const {
    Ctx<VEC> t;
    float r[VEC], wv[VEC];
    chan::channel_vals<VEC, kCl>(mean, c, t.m, 0.f);
    chan::channel_vals<VEC, kCl>(rstd, c, r, 1.f);
    chan::channel_vals<VEC, kCl>(w, c, wv, 1.f);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t cc = kCl ? c + v : c;
      t.a[v] = r[v] * wv[v];
      // NCHW: one channel for the whole vector, read once
      t.k1[v] = coef == nullptr ? 0.f : (kCl || v == 0) ? coef[2 * cc] : t.k1[0];
      t.k2[v] = coef == nullptr ? 0.f : (kCl || v == 0) ? r[v] * coef[2 * cc + 1] : t.k2[0];  // rstd * mean(dy xhat)
    }
    return t;
  }
  template <int VEC>
  __device__ __forceinline__ In<VEC> load(int64_t off) const {
    return In<VEC>{coef != nullptr ? ld_pack<VEC>(x + off) : zero_pack<T, VEC>(), ld_pack<VEC>(dy + off)};
  }
  template <int VEC>
  __device__ __forceinline__ void store(const Ctx<VEC>& t, int64_t off, const In<VEC>& in) const {
    float xv[VEC], gv[VEC];
    unpack(in.x, xv);
    unpack(in.dy, gv);
    if (coef != nullptr) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) gv[i] = t.a[i] * (gv[i] - t.k1[i] - (xv[i] - t.m[i]) * t.k2[i]);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) gv[i] = t.a[i] * gv[i];
    }
    st_pack<VEC>(dx + off, pack<T, VEC>(gv));
  }
};

}  // namespace bn
}  // namespace fusednorm
