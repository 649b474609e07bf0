// Host launchers for BatchNorm: geometry folding, workspace layout, kernel sequence, checks.
#include <algorithm>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

constexpr int kSmallThreads = 128;

unsigned small_grid(int64_t items) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(items, kSmallThreads), kMaxGrid)));
}

// Statistics are per channel over all of N * S.  channels_last (and S == 1, where the layouts
// coincide) is one (N * S, C) matrix: fold N into the rows so chunks tile everything.
struct BnGeom {
  int64_t N, S;
  bool cl;
};
BnGeom bn_geom(int64_t N, int64_t S, bool channels_last) {
  if (channels_last || S == 1) return {1, N * S, true};
  return {N, S, false};
}

}  // namespace

size_t batch_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  const BnGeom g = bn_geom(N, S, channels_last);
  const ChannelPlan p = plan_channel_reduce(g.N, C, g.S, g.cl);
  return align256(size_t(channel_partials(g.N, C, p)) * sizeof(Welford));
}

void batch_norm_fwd(const BatchNormFwdArgs& a, cudaStream_t stream) {
  if (a.C == 0) return;
  const int64_t numel = a.N * a.C * a.S;
  if (a.training && numel == 0)
    throw std::invalid_argument("batch_norm_fwd: training needs N * spatial >= 1 values per channel");
  const BnGeom g = bn_geom(a.N, a.S, a.channels_last);
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "batch_norm_fwd", T, W, {
    if (a.training) {
      const ChannelPlan p = plan_channel_reduce(g.N, a.C, g.S, g.cl);
      Welford* part = static_cast<Welford*>(a.workspace);
      const ShiftAt shift{a.C, g.S, 1, g.cl, /*per_sample=*/false};
      WelfordOp<T> op{static_cast<const T*>(a.x), shift};
      launch_channel_reduce<T>(op, p, a.C, g.S, aligned16(a.x), part, stream,
                               "channel_reduce (batch_norm_fwd statistics)");
      FN_LAUNCH((bn::bn_stats_kernel<T>), small_grid(a.C), kSmallThreads, 0, stream,
                part, static_cast<const T*>(a.x), shift, g.N, a.C, p.chunks, a.eps, a.mean, a.var,
                a.rstd);
      FN_LAUNCH_CHECK("bn_stats_kernel");
    }
    bn::FwdMap<T, W> f{static_cast<const T*>(a.x), static_cast<T*>(a.out),
                       static_cast<const W*>(a.weight), static_cast<const W*>(a.bias), a.mean,
                       a.rstd};
    launch_channel_map<T>(f, numel, a.C, a.S, a.channels_last, aligned16(a.x) && aligned16(a.out),
                          stream, "channel_map_kernel (batch_norm_fwd apply)");
  });
}

namespace {
struct BnBwdWorkspace {
  Sum2* part;
  Sum2* coef;
  size_t bytes;
};
BnBwdWorkspace bn_bwd_workspace(void* base, int64_t N, int64_t C, int64_t S, bool channels_last) {
  const BnGeom g = bn_geom(N, S, channels_last);
  const ChannelPlan p = plan_channel_reduce(g.N, C, g.S, g.cl);
  const size_t b_part = align256(size_t(channel_partials(g.N, C, p)) * sizeof(Sum2));
  const size_t b_coef = align256(size_t(C) * sizeof(Sum2));
  char* c = static_cast<char*>(base);
  return {reinterpret_cast<Sum2*>(c), reinterpret_cast<Sum2*>(c + b_part), b_part + b_coef};
}
}  // namespace

size_t batch_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  return bn_bwd_workspace(nullptr, N, C, S, channels_last).bytes;
}

void batch_norm_bwd(const BatchNormBwdArgs& a, cudaStream_t stream) {
  const int64_t numel = a.N * a.C * a.S;
  if (numel == 0) return;  // the caller zero-fills dweight/dbias
  const BnGeom g = bn_geom(a.N, a.S, a.channels_last);
  const ChannelPlan p = plan_channel_reduce(g.N, a.C, g.S, g.cl);
  const BnBwdWorkspace ws = bn_bwd_workspace(a.workspace, a.N, a.C, a.S, a.channels_last);
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "batch_norm_bwd", T, W, {
    const T* x = static_cast<const T*>(a.x);
    const T* dy = static_cast<const T*>(a.dy);
    bn::BwdOp<T> op{x, dy, a.mean, a.rstd};
    launch_channel_reduce<T>(op, p, a.C, g.S, aligned16(a.x) && aligned16(a.dy), ws.part, stream,
                             "channel_reduce (batch_norm_bwd sums)");
    FN_LAUNCH((bn::bn_bwd_finalize_kernel<W>), small_grid(a.C), kSmallThreads, 0, stream,
              ws.part, g.N, a.C, p.chunks, 1.f / float(a.N * a.S), static_cast<W*>(a.dweight),
              static_cast<W*>(a.dbias), ws.coef);
    FN_LAUNCH_CHECK("bn_bwd_finalize_kernel");
    bn::BwdDxMap<T, W> f{dy, x, static_cast<T*>(a.dx), static_cast<const W*>(a.weight), a.mean,
                         a.rstd, a.training ? ws.coef : nullptr};
    launch_channel_map<T>(f, numel, a.C, a.S, a.channels_last,
                          aligned16(a.x) && aligned16(a.dy) && aligned16(a.dx), stream,
                          "channel_map_kernel (batch_norm_bwd dx)");
  });
}

}  // namespace fusednorm
