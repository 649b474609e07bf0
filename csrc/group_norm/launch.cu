// Host launchers for GroupNorm / InstanceNorm: the pattern (rows for NCHW and S == 1, channels
// for channels_last), workspace layout, kernel sequence, launch checks.
#include <algorithm>
#include <limits>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

void check_groups(const char* where, int64_t C, int64_t G) {
  if (G <= 0 || C % G != 0)
    throw std::invalid_argument(std::string(where) + ": num_groups=" + std::to_string(G) +
                                " must be positive and divide channels=" + std::to_string(C));
}

// NCHW groups are rows of Cg * S contiguous elements; channels_last with S == 1 is the same.
bool use_rows(bool channels_last, int64_t S) { return !channels_last || S == 1; }

void check_row_length(const char* where, int64_t len) {
  if (len > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument(std::string(where) + ": a group holds " + std::to_string(len) +
                                " elements (channels/num_groups * spatial); at most 2^31 - 1 are supported");
}

unsigned warp_grid(int64_t warps) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(warps, gn::kMergeThreads / 32), kMaxGrid)));
}

size_t cl_partial_bytes(int64_t N, int64_t C, int64_t S) {
  return align256(size_t(N * C) * size_t(chan::max_cl_splits(S, N)) * 2 * sizeof(float));
}

// Forward row shapes: groups are thousands of elements (a warp per row, 128 threads, 256, then
// the looped kernel), fewer shapes than LayerNorm's, for compile time.
using kRowsFwdShapes = row::ShapeList<row::FwdA, row::FwdB, row::FwdD>;
using kRowsFwdShapesScalar = row::ShapeList<row::FwdA, row::FwdE>;

// Row shapes of the backward.
template <typename T, typename W, int VEC, class S>
void launch_rows_bwd_shape(const gn::RowsBwdArgs<T, W>& r, cudaStream_t stream) {
  constexpr bool kPrefetch = S::kThreads < 512;
  constexpr auto kernel = &gn::rows_bwd_kernel<T, W, VEC, S, kPrefetch>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, 0, ceil_div(r.rows, S::WM));
  FN_LAUNCH((gn::rows_bwd_kernel<T, W, VEC, S, kPrefetch>), grid, S::kThreads, 0, stream, r);
  FN_LAUNCH_CHECK("gn::rows_bwd_kernel");
}

// Groups beyond the cached shapes: 2 CTAs of 256 threads per SM (as many threads as one of 512, but
// a row each).
using RowsBwdLoop = row::Shape<1, 8, 4, 2>;

template <typename T, typename W, int VEC>
void launch_rows_bwd(const gn::RowsBwdArgs<T, W>& r, cudaStream_t stream) {
  const int64_t nvec = ceil_div(r.len, VEC);
  if constexpr (VEC > 1) {
    if (nvec <= row::BwdA::kSlots) return launch_rows_bwd_shape<T, W, VEC, row::BwdA>(r, stream);
    if (nvec <= row::BwdB::kSlots) return launch_rows_bwd_shape<T, W, VEC, row::BwdB>(r, stream);
    if (nvec <= row::BwdD::kSlots) return launch_rows_bwd_shape<T, W, VEC, row::BwdD>(r, stream);
  } else {
    if (nvec <= row::BwdA::kSlots) return launch_rows_bwd_shape<T, W, VEC, row::BwdA>(r, stream);
    if (nvec <= row::BwdD::kSlots) return launch_rows_bwd_shape<T, W, VEC, row::BwdD>(r, stream);
  }
  using S = RowsBwdLoop;
  constexpr auto kernel = &gn::rows_bwd_looped_kernel<T, W, VEC, S>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, 0, r.rows);
  FN_LAUNCH((gn::rows_bwd_looped_kernel<T, W, VEC, S>), grid, S::kThreads, 0, stream, r);
  FN_LAUNCH_CHECK("gn::rows_bwd_looped_kernel");
}

}  // namespace

size_t group_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  return use_rows(channels_last, S) ? 0 : cl_partial_bytes(N, C, S);
}

void group_norm_fwd(const GroupNormFwdArgs& a, cudaStream_t stream) {
  check_groups("group_norm_fwd", a.C, a.G);
  if (a.N == 0 || a.C == 0) return;
  if (a.S == 0) throw std::invalid_argument("group_norm_fwd: spatial size is 0; expected >= 1");
  const int64_t Cg = a.C / a.G;
  const int64_t len = Cg * a.S;
  const float inv_len = float(1.0 / double(len));
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "group_norm_fwd", T, W, {
    constexpr int V = kVec16<T>;
    const T* x = static_cast<const T*>(a.x);
    const W* w = static_cast<const W*>(a.weight);
    const W* b = static_cast<const W*>(a.bias);
    if (use_rows(a.channels_last, a.S)) {
      check_row_length("group_norm_fwd", len);
      const gn::RowsFwdOp<T, W> op{x, static_cast<T*>(a.out), w, b, a.mean, a.rstd, a.N * a.G, len, inv_len,
                                   a.eps, false, a.G, Cg, FastDiv(a.S), a.silu};
      const bool vec = a.S % V == 0 && aligned16(a.x) && aligned16(a.out);
      if (vec) row::launch_fwd<gn::RowsFwdOp<T, W>, V>(op, kRowsFwdShapes{}, stream, "group_norm_fwd (row kernel)");
      else row::launch_fwd<gn::RowsFwdOp<T, W>, 1>(op, kRowsFwdShapesScalar{}, stream, "group_norm_fwd (row kernel)");
      return;
    }
    const chan::Geom g = chan::cl_geom(a.C, a.S, a.N);
    const bool vec = a.C % V == 0 && aligned16(a.x) && aligned16(a.out) && aligned16(a.weight) && aligned16(a.bias);
    with_vec<T>(vec, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      float* part = static_cast<float*>(a.workspace);
      const chan::ShiftedSumsOp<T> sums{x, a.S * a.C, 1, Cg, nullptr};
      const int64_t splits = chan::launch_reduce<chan::ShiftedSumsOp<T>, VEC>(
          sums, g, part, stream, "group_norm_fwd statistics (channel reduce)");
      FN_LAUNCH((gn::stats_merge_kernel<T>), warp_grid(a.N * a.G), gn::kMergeThreads, 0, stream, part, splits, x,
                a.N, a.C, a.S, a.G, inv_len, a.eps, a.mean, a.rstd);
      FN_LAUNCH_CHECK("gn::stats_merge_kernel");
      const gn::ClApplyOp<T, W> apply{x, static_cast<T*>(a.out), w, b, a.mean, a.rstd, a.G, Cg, a.silu};
      chan::launch_map<gn::ClApplyOp<T, W>, VEC>(apply, g, stream, "group_norm_fwd apply (channel map)");
    });
  });
}

namespace {
struct GnBwdWorkspace {
  float* part;  // rows: (N * C, 2) per-(n, c) sums; channels_last: (N * C * splits, 2) partials
  float* coef;  // channels_last: (N * G, 2)
  size_t bytes;
};
GnBwdWorkspace gn_bwd_workspace(void* base, int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  char* c = static_cast<char*>(base);
  if (use_rows(channels_last, S)) {
    const size_t b = align256(size_t(N * C) * 2 * sizeof(float));
    return {reinterpret_cast<float*>(c), nullptr, b};
  }
  const size_t b_part = cl_partial_bytes(N, C, S);
  const size_t b_coef = align256(size_t(N * G) * 2 * sizeof(float));
  return {reinterpret_cast<float*>(c), reinterpret_cast<float*>(c + b_part), b_part + b_coef};
}
}  // namespace

size_t group_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  return gn_bwd_workspace(nullptr, N, C, S, G, channels_last).bytes;
}

void group_norm_bwd(const GroupNormBwdArgs& a, cudaStream_t stream) {
  check_groups("group_norm_bwd", a.C, a.G);
  if (a.N == 0 || a.C == 0) return;  // the caller zero-fills dweight/dbias for N == 0
  if (a.S == 0) throw std::invalid_argument("group_norm_bwd: spatial size is 0; expected >= 1");
  const int64_t Cg = a.C / a.G;
  const int64_t len = Cg * a.S;
  const float inv_len = float(1.0 / double(len));
  const GnBwdWorkspace ws = gn_bwd_workspace(a.workspace, a.N, a.C, a.S, a.G, a.channels_last);
  const bool wgrad = a.dweight != nullptr || a.dbias != nullptr;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "group_norm_bwd", T, W, {
    constexpr int V = kVec16<T>;
    const T* x = static_cast<const T*>(a.x);
    const T* dy = static_cast<const T*>(a.dy);
    const W* w = static_cast<const W*>(a.weight);
    const W* b = static_cast<const W*>(a.bias);
    W* dw = static_cast<W*>(a.dweight);
    W* db = static_cast<W*>(a.dbias);
    if (use_rows(a.channels_last, a.S)) {
      check_row_length("group_norm_bwd", len);
      const gn::RowsBwdArgs<T, W> r{x, dy, static_cast<T*>(a.dx), w, b, a.mean, a.rstd,
                                    wgrad ? ws.part : nullptr, a.N * a.G, len, a.G, Cg, a.S, FastDiv(a.S),
                                    inv_len, a.silu};
      const bool vec = a.S % V == 0 && aligned16(a.x) && aligned16(a.dy) && aligned16(a.dx);
      if (vec) launch_rows_bwd<T, W, V>(r, stream);
      else launch_rows_bwd<T, W, 1>(r, stream);
      if (wgrad) {
        FN_LAUNCH((gn::grad_merge_kernel<W>), warp_grid(a.C), gn::kMergeThreads, 0, stream, ws.part, int64_t(1), a.N,
                  a.C, a.G, w, inv_len, nullptr, dw, db);
        FN_LAUNCH_CHECK("gn::grad_merge_kernel (dweight, dbias)");
      }
      return;
    }
    const chan::Geom g = chan::cl_geom(a.C, a.S, a.N);
    const bool vec = a.C % V == 0 && aligned16(a.x) && aligned16(a.dy) && aligned16(a.dx) && aligned16(a.weight) &&
                     aligned16(a.bias);
    with_vec<T>(vec, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const gn::ClGradSumsOp<T, W> sums{x, dy, w, b, a.mean, a.rstd, a.G, Cg, a.silu};
      const int64_t splits = chan::launch_reduce<gn::ClGradSumsOp<T, W>, VEC>(
          sums, g, ws.part, stream, "group_norm_bwd sums (channel reduce)");
      FN_LAUNCH((gn::grad_merge_kernel<W>), warp_grid(a.N * a.G + (wgrad ? a.C : 0)), gn::kMergeThreads, 0, stream,
                ws.part, splits, a.N, a.C, a.G, w, inv_len, ws.coef, dw, db);
      FN_LAUNCH_CHECK("gn::grad_merge_kernel");
      const gn::ClDxOp<T, W> dxop{x, dy, static_cast<T*>(a.dx), w, b, a.mean, a.rstd, ws.coef, a.G, Cg, a.silu};
      chan::launch_map<gn::ClDxOp<T, W>, VEC>(dxop, g, stream, "group_norm_bwd dx (channel map)");
    });
  });
}

void instance_norm_running(const InstanceNormRunningArgs& a, cudaStream_t stream) {
  if (a.N == 0 || a.C == 0 || (a.running_mean == nullptr && a.running_var == nullptr)) return;
  FN_LAUNCH((gn::instance_running_kernel), warp_grid(a.C), gn::kMergeThreads, 0, stream, a,
            float(1.0 / double(a.N)));
  FN_LAUNCH_CHECK("gn::instance_running_kernel");
}

}  // namespace fusednorm
