// Host launchers for GroupNorm: workspace layout, kernel sequence, launch checks.
#include <algorithm>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

constexpr int kSmallThreads = 128;  // per-(n, g) / per-channel merge kernels

unsigned small_grid(int64_t items) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(items, kSmallThreads), kMaxGrid)));
}

void check_groups(const char* where, int64_t C, int64_t G) {
  if (G <= 0 || C % G != 0)
    throw std::invalid_argument(std::string(where) + ": num_groups=" + std::to_string(G) +
                                " must be positive and divide channels=" + std::to_string(C));
}

}  // namespace

size_t group_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  const ChannelPlan p = plan_channel_reduce(N, C, S, channels_last);
  return align256(size_t(channel_partials(N, C, p)) * sizeof(Welford));
}

void group_norm_fwd(const GroupNormFwdArgs& a, cudaStream_t stream) {
  check_groups("group_norm_fwd", a.C, a.G);
  if (a.N == 0 || a.C == 0) return;
  if (a.S == 0) throw std::invalid_argument("group_norm_fwd: spatial size is 0; expected >= 1");
  const ChannelPlan p = plan_channel_reduce(a.N, a.C, a.S, a.channels_last);
  Welford* part = static_cast<Welford*>(a.workspace);
  const int64_t Cg = a.C / a.G;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "group_norm_fwd", T, W, {
    const ShiftAt shift{a.C, a.S, Cg, a.channels_last, /*per_sample=*/true};
    WelfordOp<T> op{static_cast<const T*>(a.x), shift};
    launch_channel_reduce<T>(op, p, a.C, a.S, aligned16(a.x), part, stream,
                             "channel_reduce (group_norm_fwd statistics)");
    FN_LAUNCH((gn::gn_stats_kernel<T>), small_grid(a.N * a.G), kSmallThreads, 0, stream,
              part, static_cast<const T*>(a.x), shift, a.N, a.C, a.G, p.chunks, a.eps, a.mean,
              a.rstd);
    FN_LAUNCH_CHECK("gn_stats_kernel");
    gn::FwdMap<T, W> f{static_cast<const T*>(a.x), static_cast<T*>(a.out),
                       static_cast<const W*>(a.weight), static_cast<const W*>(a.bias),
                       a.mean, a.rstd, a.G, Cg, a.silu};
    launch_channel_map<T>(f, a.N * a.C * a.S, a.C, a.S, a.channels_last,
                          aligned16(a.x) && aligned16(a.out), stream,
                          "channel_map_kernel (group_norm_fwd apply)");
  });
}

namespace {
struct GnBwdWorkspace {
  Sum2* part;
  Sum2* nc;
  Sum2* coef;
  size_t bytes;
};
GnBwdWorkspace gn_bwd_workspace(void* base, int64_t N, int64_t C, int64_t S, int64_t G,
                                bool channels_last) {
  const ChannelPlan p = plan_channel_reduce(N, C, S, channels_last);
  const size_t b_part = align256(size_t(channel_partials(N, C, p)) * sizeof(Sum2));
  const size_t b_nc = align256(size_t(N * C) * sizeof(Sum2));
  const size_t b_coef = align256(size_t(N * G) * sizeof(Sum2));
  char* c = static_cast<char*>(base);
  return {reinterpret_cast<Sum2*>(c), reinterpret_cast<Sum2*>(c + b_part),
          reinterpret_cast<Sum2*>(c + b_part + b_nc), b_part + b_nc + b_coef};
}
}  // namespace

size_t group_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  return gn_bwd_workspace(nullptr, N, C, S, G, channels_last).bytes;
}

void group_norm_bwd(const GroupNormBwdArgs& a, cudaStream_t stream) {
  check_groups("group_norm_bwd", a.C, a.G);
  if (a.N == 0 || a.C == 0) return;  // the caller zero-fills dweight/dbias for N == 0
  if (a.S == 0) throw std::invalid_argument("group_norm_bwd: spatial size is 0; expected >= 1");
  const ChannelPlan p = plan_channel_reduce(a.N, a.C, a.S, a.channels_last);
  const GnBwdWorkspace ws = gn_bwd_workspace(a.workspace, a.N, a.C, a.S, a.G, a.channels_last);
  const int64_t Cg = a.C / a.G;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "group_norm_bwd", T, W, {
    const T* x = static_cast<const T*>(a.x);
    const T* dy = static_cast<const T*>(a.dy);
    const W* w = static_cast<const W*>(a.weight);
    const W* b = static_cast<const W*>(a.bias);
    gn::BwdOp<T, W> op{x, dy, w, b, a.mean, a.rstd, a.G, Cg, a.silu};
    launch_channel_reduce<T>(op, p, a.C, a.S, aligned16(a.x) && aligned16(a.dy), ws.part, stream,
                             "channel_reduce (group_norm_bwd sums)");
    FN_LAUNCH((gn::gn_bwd_group_kernel<W>), small_grid(a.N * a.G), kSmallThreads, 0, stream,
              ws.part, w, a.N, a.C, a.G, a.S, p.chunks, ws.nc, ws.coef);
    FN_LAUNCH_CHECK("gn_bwd_group_kernel");
    if (a.dweight || a.dbias) {
      FN_LAUNCH((gn::gn_bwd_wgrad_kernel<W>), small_grid(a.C), kSmallThreads, 0, stream,
                ws.nc, a.N, a.C, static_cast<W*>(a.dweight), static_cast<W*>(a.dbias));
      FN_LAUNCH_CHECK("gn_bwd_wgrad_kernel");
    }
    gn::BwdDxMap<T, W> f{dy, x, static_cast<T*>(a.dx), w, b, a.mean, a.rstd, ws.coef, a.G, Cg, a.silu};
    launch_channel_map<T>(f, a.N * a.C * a.S, a.C, a.S, a.channels_last,
                          aligned16(a.x) && aligned16(a.dy) && aligned16(a.dx), stream,
                          "channel_map_kernel (group_norm_bwd dx)");
  });
}

}  // namespace fusednorm
