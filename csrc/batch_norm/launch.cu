// Host launchers for BatchNorm: geometry (channels_last, and S == 1 where the layouts coincide,
// is one (N * S, C) matrix), workspace layout, kernel sequence, launch checks.
#include <algorithm>
#include <initializer_list>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

// Statistics are per channel over all of N * S: channels_last (and S == 1, where the layouts
// coincide) is one segment of N * S rows.
chan::Geom bn_geom(int64_t N, int64_t C, int64_t S, bool channels_last) {
  return (channels_last || S == 1) ? chan::cl_geom(C, N * S, 1) : chan::nchw_geom(N, C, S);
}

size_t partial_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  const chan::Geom g = bn_geom(N, C, S, channels_last);
  return align256(size_t(C) * size_t(chan::max_splits(g)) * 2 * sizeof(float));
}

unsigned merge_grid(int64_t C) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(C, bn::kMergeThreads / 32), kMaxGrid)));
}

// Vectors of 16 bytes need every pointer the kernels read or write per element aligned, and the
// vector inside one plane (NCHW: S % V) or one row (channels_last: C % V).
template <typename T>
bool vec_ok(const chan::Geom& g, std::initializer_list<const void*> ptrs) {
  constexpr int V = kVec16<T>;
  for (const void* q : ptrs)
    if (!aligned16(q)) return false;
  return g.cl ? g.C % V == 0 : g.S % V == 0;
}

}  // namespace

size_t batch_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  return partial_bytes(N, C, S, channels_last);
}

void batch_norm_fwd(const BatchNormFwdArgs& a, cudaStream_t stream) {
  if (a.C == 0) return;
  const int64_t numel = a.N * a.C * a.S;
  if (a.training && numel == 0)
    throw std::invalid_argument("batch_norm_fwd: training needs N * spatial >= 1 values per channel");
  if (!a.training && (a.running_mean == nullptr || a.running_var == nullptr))
    throw std::invalid_argument("batch_norm_fwd: eval needs running_mean and running_var");
  if (a.training && a.cumulative && (a.running_mean != nullptr || a.running_var != nullptr) &&
      a.num_batches_tracked == nullptr)
    throw std::invalid_argument("batch_norm_fwd: momentum None needs num_batches_tracked");
  if (numel == 0) return;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "batch_norm_fwd", T, W, {
    const chan::Geom g = bn_geom(a.N, a.C, a.S, a.channels_last);
    const int64_t shift_stride = g.cl ? 1 : a.S;  // channel c's shift K: element (n = 0, c, s = 0)
    const bool vec = vec_ok<T>(g, {a.x, a.out, a.weight, a.bias, a.mean, a.rstd});
    with_vec<T>(vec, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const T* x = static_cast<const T*>(a.x);
      bn::ApplyOp<T, W> apply{x, static_cast<T*>(a.out), static_cast<const W*>(a.weight),
                              static_cast<const W*>(a.bias), a.mean, a.rstd, nullptr, nullptr,
                              a.running_mean_dtype, a.running_var_dtype, a.eps, a.mean, a.rstd};
      if (a.training) {
        float* part = static_cast<float*>(a.workspace);
        const chan::ShiftedSumsOp<T> sums{x, 0, shift_stride, 1, a.num_batches_tracked};
        const int64_t splits = chan::launch_reduce<chan::ShiftedSumsOp<T>, VEC>(
            sums, g, part, stream, "batch_norm_fwd statistics (channel reduce)");
        bn::Running run;
        run.mean = a.running_mean;
        run.var = a.running_var;
        run.mean_dtype = a.running_mean_dtype;
        run.var_dtype = a.running_var_dtype;
        run.nbt = a.num_batches_tracked;
        run.momentum = a.momentum;
        run.cumulative = a.cumulative;
        const double count = double(a.N) * double(a.S);
        const float bessel = count > 1 ? float(count / (count - 1)) : 1.f;
        FN_LAUNCH((bn::stats_merge_kernel<T>), merge_grid(a.C), bn::kMergeThreads, 0, stream, part,
                  splits, x, shift_stride, a.C, float(1.0 / count), bessel, a.eps, a.mean, a.var,
                  a.rstd, run);
        FN_LAUNCH_CHECK("bn::stats_merge_kernel");
      } else {
        apply.rm = a.running_mean;
        apply.rv = a.running_var;
      }
      chan::launch_map<bn::ApplyOp<T, W>, VEC>(apply, g, stream, "batch_norm_fwd apply (channel map)");
    });
  });
}

namespace {
struct BnBwdWorkspace {
  float* part;
  float* coef;
  size_t bytes;
};
BnBwdWorkspace bn_bwd_workspace(void* base, int64_t N, int64_t C, int64_t S, bool channels_last) {
  const size_t b_part = partial_bytes(N, C, S, channels_last);
  const size_t b_coef = align256(size_t(C) * 2 * sizeof(float));
  char* c = static_cast<char*>(base);
  return {reinterpret_cast<float*>(c), reinterpret_cast<float*>(c + b_part), b_part + b_coef};
}
}  // namespace

size_t batch_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  return bn_bwd_workspace(nullptr, N, C, S, channels_last).bytes;
}

void batch_norm_bwd(const BatchNormBwdArgs& a, cudaStream_t stream) {
  const int64_t numel = a.N * a.C * a.S;
  if (numel == 0) return;  // the caller zero-fills dweight/dbias
  const BnBwdWorkspace ws = bn_bwd_workspace(a.workspace, a.N, a.C, a.S, a.channels_last);
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "batch_norm_bwd", T, W, {
    const chan::Geom g = bn_geom(a.N, a.C, a.S, a.channels_last);
    const bool vec = vec_ok<T>(g, {a.x, a.dy, a.dx, a.weight, a.mean, a.rstd});
    with_vec<T>(vec, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const T* x = static_cast<const T*>(a.x);
      const T* dy = static_cast<const T*>(a.dy);
      // the sums give dbias and dweight in eval too; only training's dx uses the coefficients
      const bn::GradSumsOp<T> sums{x, dy, a.mean};
      const int64_t splits = chan::launch_reduce<bn::GradSumsOp<T>, VEC>(sums, g, ws.part, stream,
                                                                          "batch_norm_bwd sums (channel reduce)");
      FN_LAUNCH((bn::grad_merge_kernel<W>), merge_grid(a.C), bn::kMergeThreads, 0, stream, ws.part,
                splits, a.C, float(1.0 / (double(a.N) * double(a.S))), a.rstd,
                static_cast<W*>(a.dweight), static_cast<W*>(a.dbias), ws.coef);
      FN_LAUNCH_CHECK("bn::grad_merge_kernel");
      const bn::DxOp<T, W> dxop{x, dy, static_cast<T*>(a.dx), static_cast<const W*>(a.weight), a.mean,
                                a.rstd, a.training ? ws.coef : nullptr};
      chan::launch_map<bn::DxOp<T, W>, VEC>(dxop, g, stream, "batch_norm_bwd dx (channel map)");
    });
  });
}

}  // namespace fusednorm
