// Host launchers for LayerNorm / RMSNorm: pick the vector width (runtime alignment check),
// the per-thread item count and block size, launch, check the launch.
#include <algorithm>
#include <string>

#include "kernel.cuh"

namespace fusednorm {
namespace {

struct LnConfig {
  int items;    // VEC chunks per thread held in registers; 0 = looped path (any N)
  int threads;  // multiple of 32, <= ln::kMaxThreads
};

// Smallest items in `allowed` that lets one block of <= kMaxThreads cover the row.
LnConfig ln_config(int64_t N, int vec, int max_items) {
  const int64_t nvec = ceil_div(N, vec);
  for (int items = 1; items <= max_items; items *= 2) {
    const int64_t threads = ceil_div(ceil_div(nvec, items), 32) * 32;
    if (threads <= ln::kMaxThreads) return {items, int(std::max<int64_t>(threads, 32))};
  }
  return {0, ln::kMaxThreads};
}

// Number of backward blocks, each owning one fp32 partial row of dweight and of dbias.
// Enough blocks to fill the GPU; at most 2^24 partial floats per buffer (64 MiB).
int64_t ln_bwd_grid(int64_t M, int64_t N) {
  const int64_t per_sm = N <= 1024 ? 16 : 4;
  const int64_t cap = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(N, 1));
  return std::max<int64_t>(1, std::min({M, int64_t(sm_count()) * per_sm, cap}));
}

template <typename T, typename W, int VEC>
void launch_fwd(const LayerNormFwdArgs& a, cudaStream_t stream) {
  const LnConfig cfg = ln_config(a.N, VEC, 4);
  const unsigned grid = unsigned(std::min<int64_t>(a.M, kMaxGrid));
  switch (cfg.items) {
    case 1: FN_LAUNCH((ln::layer_norm_fwd_kernel<T, W, VEC, 1>), grid, cfg.threads, 0, stream, a); break;
    case 2: FN_LAUNCH((ln::layer_norm_fwd_kernel<T, W, VEC, 2>), grid, cfg.threads, 0, stream, a); break;
    case 4: FN_LAUNCH((ln::layer_norm_fwd_kernel<T, W, VEC, 4>), grid, cfg.threads, 0, stream, a); break;
    default: FN_LAUNCH((ln::layer_norm_fwd_kernel<T, W, VEC, 0>), grid, cfg.threads, 0, stream, a); break;
  }
  FN_LAUNCH_CHECK("layer_norm_fwd_kernel");
}

template <typename T, typename W, int VEC>
void launch_bwd(const LayerNormBwdArgs& a, float* dw_part, float* db_part, int64_t G,
                cudaStream_t stream) {
  const LnConfig cfg = ln_config(a.N, VEC, 4);
  const unsigned grid = unsigned(G);
  switch (cfg.items) {
    case 1: FN_LAUNCH((ln::layer_norm_bwd_kernel<T, W, VEC, 1>), grid, cfg.threads, 0, stream, a, dw_part, db_part); break;
    case 2: FN_LAUNCH((ln::layer_norm_bwd_kernel<T, W, VEC, 2>), grid, cfg.threads, 0, stream, a, dw_part, db_part); break;
    case 4: FN_LAUNCH((ln::layer_norm_bwd_kernel<T, W, VEC, 4>), grid, cfg.threads, 0, stream, a, dw_part, db_part); break;
    default: FN_LAUNCH((ln::layer_norm_bwd_kernel<T, W, VEC, 0>), grid, cfg.threads, 0, stream, a, dw_part, db_part); break;
  }
  FN_LAUNCH_CHECK("layer_norm_bwd_kernel");
}

template <typename W>
void launch_colsum(const float* part, int64_t rows, int64_t N, void* out, cudaStream_t stream) {
  const unsigned grid = unsigned(std::min<int64_t>(ceil_div(N, 32), 65535));
  FN_LAUNCH((ln::colsum_kernel<W>), grid, dim3(32, ln::kColsumRows), 0, stream, part, rows, N,
            static_cast<W*>(out));
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
    if (vec_ok) launch_fwd<T, W, V>(a, stream);
    else launch_fwd<T, W, 1>(a, stream);
  });
}

size_t layer_norm_bwd_workspace_bytes(int64_t M, int64_t N) {
  if (M == 0 || N == 0) return 0;
  return 2 * align256(size_t(ln_bwd_grid(M, N)) * size_t(N) * sizeof(float));
}

void layer_norm_bwd(const LayerNormBwdArgs& a, cudaStream_t stream) {
  if (a.M == 0 || a.N == 0) return;  // the caller zero-fills dweight/dbias for M == 0
  const int64_t G = ln_bwd_grid(a.M, a.N);
  const size_t part_bytes = align256(size_t(G) * size_t(a.N) * sizeof(float));
  char* ws = static_cast<char*>(a.workspace);
  float* dw_part = a.dweight ? reinterpret_cast<float*>(ws) : nullptr;
  float* db_part = a.dbias ? reinterpret_cast<float*>(ws + part_bytes) : nullptr;
  if ((dw_part || db_part) && ws == nullptr)
    throw std::invalid_argument("layer_norm_bwd: workspace is null but weight gradients are wanted");
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "layer_norm_bwd", T, W, {
    constexpr int V = kVec16<T>;
    const bool vec_ok = a.N % V == 0 && a.x_row_stride % V == 0 && aligned16(a.x) &&
                        aligned16(a.dy) && aligned16(a.dxsum) && aligned16(a.dx) &&
                        aligned16(a.weight);
    if (vec_ok) launch_bwd<T, W, V>(a, dw_part, db_part, G, stream);
    else launch_bwd<T, W, 1>(a, dw_part, db_part, G, stream);
    if (dw_part) launch_colsum<W>(dw_part, G, a.N, a.dweight, stream);
    if (db_part) launch_colsum<W>(db_part, G, a.N, a.dbias, stream);
  });
}

}  // namespace fusednorm
