// Host launchers for LayerNorm / RMSNorm: the vector width (runtime alignment check), the row
// shape for N (row.cuh), the persistent grid, the backward's partial rows and their column sum.
#include <algorithm>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

template <typename T, typename W>
ln::FwdOp<T, W> fwd_op(const LayerNormFwdArgs& a) {
  ln::FwdOp<T, W> op;
  op.x = static_cast<const T*>(a.x);
  op.x_stride = a.x_row_stride;
  op.res = static_cast<const T*>(a.residual);
  op.res_stride = a.residual_row_stride;
  op.w = static_cast<const W*>(a.weight);
  op.b = static_cast<const W*>(a.bias);
  op.out = static_cast<T*>(a.out);
  op.xsum = static_cast<T*>(a.xsum);
  op.mean_out = a.rms ? nullptr : a.mean;
  op.rstd_out = a.rstd;
  op.rows = a.M;
  op.len = a.N;
  op.inv_len = float(1.0 / double(a.N));
  op.eps = a.eps;
  op.rms = a.rms;
  return op;
}

using row::BwdA;
using row::BwdB;
using row::BwdC;
using row::BwdD;
using row::BwdLoop;

// Partial rows of dweight/dbias: one per CTA, at most this many CTAs per SM (the bytes of the
// partials against the rows in flight).
constexpr int kPartialsPerSm = 4;

int64_t max_partials(int64_t M) {
  return std::max<int64_t>(1, std::min<int64_t>(M, int64_t(sm_count_cached()) * kPartialsPerSm));
}

template <typename T, typename W, int VEC, class S>
unsigned launch_bwd_shape(const LayerNormBwdArgs& a, float inv_n, float* pw, float* pb, cudaStream_t stream) {
  const size_t smem = (pw != nullptr || pb != nullptr) ? ln::WgradSmem<S, VEC>::kBytes : 0;
  constexpr auto kernel = &ln::layer_norm_bwd_kernel<T, W, VEC, S>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, smem, ceil_div(a.M, S::WM), kPartialsPerSm);
  FN_LAUNCH((ln::layer_norm_bwd_kernel<T, W, VEC, S>), grid, S::kThreads, smem, stream, a, inv_n, pw, pb);
  FN_LAUNCH_CHECK("layer_norm_bwd_kernel");
  return grid;
}

template <typename T, typename W, int VEC>
unsigned launch_bwd_looped(const LayerNormBwdArgs& a, float inv_n, float* pw, float* pb, cudaStream_t stream) {
  using S = BwdLoop;
  constexpr auto kernel = &ln::layer_norm_bwd_looped_kernel<T, W, VEC, S>;
  const unsigned grid = persistent_grid<kernel>(S::kThreads, 0, a.M, kPartialsPerSm);
  FN_LAUNCH((ln::layer_norm_bwd_looped_kernel<T, W, VEC, S>), grid, S::kThreads, 0, stream, a, inv_n, pw, pb);
  FN_LAUNCH_CHECK("layer_norm_bwd_looped_kernel");
  return grid;
}

template <typename T, typename W, int VEC>
unsigned launch_bwd(const LayerNormBwdArgs& a, float* pw, float* pb, cudaStream_t stream) {
  const float inv_n = float(1.0 / double(a.N));
  const int64_t nvec = ceil_div(a.N, VEC);
  if constexpr (VEC > 1) {
    if (nvec <= BwdA::kSlots) return launch_bwd_shape<T, W, VEC, BwdA>(a, inv_n, pw, pb, stream);
    if (nvec <= BwdB::kSlots) return launch_bwd_shape<T, W, VEC, BwdB>(a, inv_n, pw, pb, stream);
    if (nvec <= BwdC::kSlots) return launch_bwd_shape<T, W, VEC, BwdC>(a, inv_n, pw, pb, stream);
    if (nvec <= BwdD::kSlots) return launch_bwd_shape<T, W, VEC, BwdD>(a, inv_n, pw, pb, stream);
  } else {
    if (nvec <= BwdA::kSlots) return launch_bwd_shape<T, W, VEC, BwdA>(a, inv_n, pw, pb, stream);
    if (nvec <= BwdD::kSlots) return launch_bwd_shape<T, W, VEC, BwdD>(a, inv_n, pw, pb, stream);
  }
  return launch_bwd_looped<T, W, VEC>(a, inv_n, pw, pb, stream);
}

// One launch for both column sums.  Tiles of 32 columns, narrower (down to 4: 16-byte pieces of
// partial rows) while that leaves fewer than two blocks per SM.
template <typename W>
void launch_colsum(const float* pw, void* dw, const float* pb, void* db, int64_t P, int64_t N,
                   cudaStream_t stream) {
  const float* p0 = pw != nullptr ? pw : pb;
  W* o0 = static_cast<W*>(pw != nullptr ? dw : db);
  const float* p1 = pw != nullptr ? pb : nullptr;
  W* o1 = static_cast<W*>(pw != nullptr ? db : nullptr);
  const int tensors = p1 != nullptr ? 2 : 1;
  int tw_log2 = 5;
  while (tw_log2 > 2 && ceil_div(N, int64_t(1) << tw_log2) * tensors < 2 * int64_t(sm_count_cached())) --tw_log2;
  const dim3 grid(unsigned(std::min<int64_t>(ceil_div(N, int64_t(1) << tw_log2), kMaxGrid)), unsigned(tensors));
  FN_LAUNCH((ln::colsum_kernel<W>), grid, ln::kColsumThreads, 0, stream, p0, o0, p1, o1, P, N, tw_log2);
  FN_LAUNCH_CHECK("colsum_kernel (layer_norm dweight/dbias)");
}

}  // namespace

void layer_norm_fwd(const LayerNormFwdArgs& a, cudaStream_t stream) {
  if (a.M == 0 || a.N == 0) return;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "layer_norm_fwd", T, W, {
    constexpr int V = kVec16<T>;
    const bool vec_ok = a.N % V == 0 && a.x_row_stride % V == 0 && aligned16(a.x) &&
                        (a.residual == nullptr ||
                         (a.residual_row_stride % V == 0 && aligned16(a.residual))) &&
                        aligned16(a.weight) && aligned16(a.bias) && aligned16(a.out) &&
                        aligned16(a.xsum);
    const ln::FwdOp<T, W> op = fwd_op<T, W>(a);
    if (vec_ok) row::launch_fwd<ln::FwdOp<T, W>, V>(op, row::FwdShapes{}, stream, "layer_norm_fwd (row kernel)");
    else row::launch_fwd<ln::FwdOp<T, W>, 1>(op, row::FwdShapesScalar{}, stream, "layer_norm_fwd (row kernel)");
  });
}

size_t layer_norm_bwd_workspace_bytes(int64_t M, int64_t N) {
  if (M == 0 || N == 0) return 0;
  return 2 * align256(size_t(max_partials(M)) * size_t(N) * sizeof(float));
}

void layer_norm_bwd(const LayerNormBwdArgs& a, cudaStream_t stream) {
  if (a.M == 0 || a.N == 0) return;  // the caller zero-fills dweight/dbias for M == 0
  const bool wgrad = a.dweight != nullptr || a.dbias != nullptr;
  if (wgrad && a.workspace == nullptr)
    throw std::invalid_argument("layer_norm_bwd: workspace is null but weight gradients are wanted");
  const size_t part_bytes = align256(size_t(max_partials(a.M)) * size_t(a.N) * sizeof(float));
  char* ws = static_cast<char*>(a.workspace);
  float* pw = a.dweight != nullptr ? reinterpret_cast<float*>(ws) : nullptr;
  float* pb = a.dbias != nullptr ? reinterpret_cast<float*>(ws + part_bytes) : nullptr;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "layer_norm_bwd", T, W, {
    constexpr int V = kVec16<T>;
    const bool vec_ok = a.N % V == 0 && a.x_row_stride % V == 0 && aligned16(a.x) &&
                        aligned16(a.dy) && aligned16(a.dxsum) && aligned16(a.dx) &&
                        aligned16(a.weight);
    const unsigned P = vec_ok ? launch_bwd<T, W, V>(a, pw, pb, stream) : launch_bwd<T, W, 1>(a, pw, pb, stream);
    if (wgrad) launch_colsum<W>(pw, a.dweight, pb, a.dbias, P, a.N, stream);
  });
}

}  // namespace fusednorm
