// Host launchers for layer_norm_2d: channels_last through the LayerNorm launchers (rows of C),
// NCHW through the channel-strided kernels (tile sizing, persistent grid, partial rows and their
// column sum).
#include <algorithm>
#include <string>

#include "../layer_norm/kernel.cuh"  // ln::colsum_kernel
#include "kernel.cuh"
#include "launch.cuh"

namespace fusednorm {
namespace {

constexpr int kPartialsPerSm = 4;    // CTAs per SM at most: one partial row each
constexpr int64_t kTileBytes = 64 * 1024;  // a tile's x: the resident CTAs' tiles stay in L2

// tx lanes along the positions: up to 32 (512 bytes of a bf16 plane per channel), fewer when the
// positions run out or the tile (C channels) would pass kTileBytes; at least 8.
template <int VEC>
ln2d::Tiling tiling(int64_t N, int64_t C, int64_t S, size_t elem) {
  ln2d::Tiling t;
  t.N = N;
  t.C = C;
  t.S = S;
  t.tx = 32;
  while (t.tx > 8 && (int64_t(t.tx / 2) * VEC >= S || int64_t(t.tx) * VEC * C * int64_t(elem) > kTileBytes)) t.tx /= 2;
  t.ty = ln2d::kThreads / t.tx;
  t.tile_s = int64_t(t.tx) * VEC;
  t.tiles_per_n = ceil_div(S, t.tile_s);
  return t;
}

int64_t max_partials(int64_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(tiles, int64_t(sm_count_cached()) * kPartialsPerSm));
}

// The most tiles tiling() can give, over every vector width (tx >= 8, VEC >= 1): sizes workspaces.
int64_t max_tiles(int64_t N, int64_t S) { return N * ceil_div(S, 8); }

template <typename T>
bool vec_ok(int64_t S, std::initializer_list<const void*> ptrs) {
  for (const void* q : ptrs)
    if (!aligned16(q)) return false;
  return S % kVec16<T> == 0;
}

// channels_last (or S == 1): the LayerNorm arguments of the rows of C channels, less those only
// one direction has.
template <typename RowArgs, typename Args>
RowArgs as_rows(const Args& a) {
  RowArgs r;
  r.x = a.x;
  r.x_row_stride = a.C;
  r.weight = a.weight;
  r.mean = a.mean;
  r.rstd = a.rstd;
  r.M = a.N * a.S;
  r.N = a.C;
  r.x_dtype = a.x_dtype;
  r.w_dtype = a.w_dtype;
  return r;
}

}  // namespace

void layer_norm_2d_fwd(const LayerNorm2dFwdArgs& a, cudaStream_t stream) {
  if (a.N == 0 || a.C == 0 || a.S == 0) return;
  if (a.channels_last || a.S == 1) {  // rows of C contiguous channels: LayerNorm
    LayerNormFwdArgs r = as_rows<LayerNormFwdArgs>(a);
    r.bias = a.bias;
    r.out = a.out;
    r.eps = a.eps;
    return layer_norm_fwd(r, stream);
  }
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "layer_norm_2d_fwd", T, W, {
    const ln2d::Args<T, W> args{static_cast<const T*>(a.x), nullptr, static_cast<T*>(a.out),
                                static_cast<const W*>(a.weight), static_cast<const W*>(a.bias),
                                a.mean, a.rstd, a.eps, float(1.0 / double(a.C))};
    with_vec<T>(vec_ok<T>(a.S, {a.x, a.out}), [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const ln2d::Tiling t = tiling<VEC>(a.N, a.C, a.S, sizeof(T));
      constexpr auto kernel = &ln2d::fwd_kernel<T, W, VEC>;
      const unsigned grid = persistent_grid<kernel>(ln2d::kThreads, 0, t.tiles());
      FN_LAUNCH((ln2d::fwd_kernel<T, W, VEC>), grid, ln2d::kThreads, 0, stream, args, t);
      FN_LAUNCH_CHECK("ln2d::fwd_kernel");
    });
  });
}

size_t layer_norm_2d_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last) {
  if (N == 0 || C == 0 || S == 0) return 0;
  if (channels_last || S == 1) return layer_norm_bwd_workspace_bytes(N * S, C);
  return 2 * align256(size_t(max_partials(max_tiles(N, S))) * size_t(C) * sizeof(float));
}

void layer_norm_2d_bwd(const LayerNorm2dBwdArgs& a, cudaStream_t stream) {
  if (a.N == 0 || a.C == 0 || a.S == 0) return;  // the caller zero-fills dweight/dbias
  if (a.channels_last || a.S == 1) {
    LayerNormBwdArgs r = as_rows<LayerNormBwdArgs>(a);
    r.dy = a.dy;
    r.dx = a.dx;
    r.dweight = a.dweight;
    r.dbias = a.dbias;
    r.workspace = a.workspace;
    return layer_norm_bwd(r, stream);
  }
  const bool wgrad = a.dweight != nullptr || a.dbias != nullptr;
  if (wgrad && a.workspace == nullptr)
    throw std::invalid_argument("layer_norm_2d_bwd: workspace is null but weight gradients are wanted");
  const size_t part_bytes = align256(size_t(max_partials(max_tiles(a.N, a.S))) * size_t(a.C) * sizeof(float));
  char* ws = static_cast<char*>(a.workspace);
  float* pw = a.dweight != nullptr ? reinterpret_cast<float*>(ws) : nullptr;
  float* pb = a.dbias != nullptr ? reinterpret_cast<float*>(ws + part_bytes) : nullptr;
  FN_DISPATCH_XW(a.x_dtype, a.w_dtype, "layer_norm_2d_bwd", T, W, {
    const ln2d::Args<T, W> args{static_cast<const T*>(a.x), static_cast<const T*>(a.dy), static_cast<T*>(a.dx),
                                static_cast<const W*>(a.weight), nullptr, const_cast<float*>(a.mean),
                                const_cast<float*>(a.rstd), 0.f, float(1.0 / double(a.C))};
    with_vec<T>(vec_ok<T>(a.S, {a.x, a.dy, a.dx}), [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const ln2d::Tiling t = tiling<VEC>(a.N, a.C, a.S, sizeof(T));
      constexpr auto kernel = &ln2d::bwd_kernel<T, W, VEC>;
      const unsigned grid = persistent_grid<kernel>(ln2d::kThreads, 0, t.tiles(), kPartialsPerSm);
      FN_LAUNCH((ln2d::bwd_kernel<T, W, VEC>), grid, ln2d::kThreads, 0, stream, args, t, pw, pb);
      FN_LAUNCH_CHECK("ln2d::bwd_kernel");
      if (wgrad) {  // one launch for both column sums (LayerNorm's)
        const float* p0 = pw != nullptr ? pw : pb;
        W* o0 = static_cast<W*>(pw != nullptr ? a.dweight : a.dbias);
        const float* p1 = pw != nullptr ? pb : nullptr;
        W* o1 = static_cast<W*>(pw != nullptr ? a.dbias : nullptr);
        const int tensors = p1 != nullptr ? 2 : 1;
        int tw_log2 = 5;
        while (tw_log2 > 2 && ceil_div(a.C, int64_t(1) << tw_log2) * tensors < 2 * int64_t(sm_count_cached()))
          --tw_log2;
        const dim3 cgrid(unsigned(std::min<int64_t>(ceil_div(a.C, int64_t(1) << tw_log2), kMaxGrid)),
                         unsigned(tensors));
        FN_LAUNCH((ln::colsum_kernel<W>), cgrid, ln::kColsumThreads, 0, stream, p0, o0, p1, o1, int64_t(grid), a.C,
                  tw_log2);
        FN_LAUNCH_CHECK("colsum_kernel (layer_norm_2d dweight/dbias)");
      }
    });
  });
}

}  // namespace fusednorm
