// Torch-facing host code of the CUDA backend: op schemas (TORCH_LIBRARY(fusednorm_cuda)),
// CUDA implementations that check arguments, allocate outputs and workspaces with the caching
// allocator, and call the torch-free launchers with raw pointers on the current stream.  No
// torch kernel runs around the launchers (running statistics, eval statistics, weight
// gradients: all written by the extension's kernels).
// Absent outputs (xsum without residual, mean for RMS, gradients of absent parameters, var in
// eval) are returned as empty tensors (numel 0); the Python adapter turns them into None.
#include <Python.h>  // first, as Python requires; only for the module init below

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "check.h"
#include "fusednorm.h"

namespace fusednorm {
namespace {

using at::Tensor;
using c10::optional;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

cudaStream_t current_stream(const Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
}

// Launchers report unsupported combinations as std::invalid_argument and failed launches as
// std::runtime_error (with the kernel's name); surface both as torch errors.
template <typename F>
void run_launcher(const char* where, F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, where, ": ", e.what());
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, where, ": ", e.what());
  }
}

bool given(const optional<Tensor>& t) { return t.has_value() && t->defined(); }
void* ptr_or_null(const optional<Tensor>& t) { return given(t) ? t->data_ptr() : nullptr; }
template <typename P>
P* ptr_or_null(const Tensor& t) { return t.defined() && t.numel() > 0 ? static_cast<P*>(t.data_ptr()) : nullptr; }

Tensor empty_float(const Tensor& x, at::IntArrayRef sizes) { return at::empty(sizes, x.options().dtype(at::kFloat)); }
Tensor none_like(const Tensor& x) { return at::empty({0}, x.options()); }
Tensor workspace(const Tensor& x, size_t bytes) { return at::empty({int64_t(bytes)}, x.options().dtype(at::kByte)); }
void* ws_ptr(const Tensor& ws) { return ws.numel() > 0 ? ws.data_ptr() : nullptr; }

// ------------------------------------------------------------------------------ checks
void check_x(const char* where, const Tensor& x) {
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
}

// weight/bias of n features; returns their dtype W: weight's, else bias's, else x's (both given
// must agree).
at::ScalarType check_affine(const char* where, const Tensor& x, int64_t n, const optional<Tensor>& w,
                            const optional<Tensor>& b) {
  if (given(w)) FN_CHECK_PARAM(where, "weight", *w, x, n);
  if (given(b)) FN_CHECK_PARAM(where, "bias", *b, x, n);
  if (given(w) && given(b))
    TORCH_CHECK(w->scalar_type() == b->scalar_type(), where, ": bias must have weight's dtype (",
                w->scalar_type(), "), got ", b->scalar_type());
  if (given(w)) return w->scalar_type();
  if (given(b)) return b->scalar_type();
  return x.scalar_type();
}

// fp32 statistics saved by the forward: contiguous, of the given shape.
void check_stats(const char* where, const char* name, const Tensor& t, const Tensor& x, at::IntArrayRef shape) {
  FN_CHECK_DEVICE(where, name, t, x);
  FN_CHECK_DTYPE(where, name, t, at::kFloat);
  FN_CHECK_SIZES(where, name, t, shape);
  FN_CHECK_CONTIGUOUS(where, name, t);
}

// Running statistics: dense (C,) in any float dtype of their own, on x's device.
DType check_running(const char* where, const char* name, const Tensor& t, const Tensor& x, int64_t C) {
  FN_CHECK_DEVICE(where, name, t, x);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, where, ": ", name, " must have shape (", C, ",), got ", t.sizes());
  FN_CHECK_CONTIGUOUS(where, name, t);
  TORCH_CHECK(is_norm_dtype(t.scalar_type()) || t.scalar_type() == at::kDouble, where, ": ", name,
              " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  return t.scalar_type() == at::kDouble ? DType::kFloat64 : to_dtype(t.scalar_type());
}

// dy in x's memory layout (the contract promises it; otherwise one explicit copy, here).
Tensor like_layout(const char* where, const Tensor& dy, const Tensor& x) {
  FN_CHECK_DEVICE(where, "dy", dy, x);
  FN_CHECK_DTYPE(where, "dy", dy, x.scalar_type());
  FN_CHECK_SIZES(where, "dy", dy, x.sizes());
  if (dy.strides() == x.strides()) return dy;
  Tensor t = at::empty_like(x);
  t.copy_(dy);
  return t;
}

// dweight / dbias for the parameters given (empty for the absent), in their dtype.
struct WGrads {
  Tensor dw, db;
};
WGrads alloc_wgrads(const Tensor& x, int64_t n, bool want_w, bool want_b, at::ScalarType wdt) {
  return {want_w ? at::empty({n}, x.options().dtype(wdt)) : none_like(x),
          want_b ? at::empty({n}, x.options().dtype(wdt)) : none_like(x)};
}

// ------------------------------------------------------------------------------ layer_norm
// (M, N) view with unit column stride; returns the row stride the kernels use.
int64_t check_rows(const char* where, const char* name, const Tensor& t, int64_t M, int64_t N) {
  TORCH_CHECK(N <= 1 || t.stride(1) == 1, where, ": ", name, " must have unit column stride, got strides ",
              t.strides());
  TORCH_CHECK(M <= 1 || t.stride(0) >= N, where, ": ", name, " row stride must be >= N=", N, ", got ", t.stride(0));
  return M <= 1 ? N : t.stride(0);
}

Tensor4 layer_norm_fwd_cuda(const Tensor& x, const optional<Tensor>& residual, const optional<Tensor>& weight,
                            const optional<Tensor>& bias, double eps, bool rms) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_fwd";
  check_x(where, x);
  TORCH_CHECK(x.dim() == 2, where, ": x must be 2-D (M, N), got shape ", x.sizes());
  const int64_t M = x.size(0), N = x.size(1);
  LayerNormFwdArgs a;
  a.x_row_stride = check_rows(where, "x", x, M, N);
  if (given(residual)) {
    FN_CHECK_DEVICE(where, "residual", *residual, x);
    FN_CHECK_DTYPE(where, "residual", *residual, x.scalar_type());
    FN_CHECK_SIZES(where, "residual", *residual, x.sizes());
    a.residual_row_stride = check_rows(where, "residual", *residual, M, N);
  }
  const at::ScalarType wdt = check_affine(where, x, N, weight, bias);
  TORCH_CHECK(!(rms && given(bias)), where, ": bias must be None when rms=True");

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty({M, N}, x.options());
  Tensor xsum = given(residual) ? at::empty({M, N}, x.options()) : none_like(x);
  Tensor mean = empty_float(x, {rms ? 0 : M});
  Tensor rstd = empty_float(x, {M});
  if (M == 0) return {out, xsum, mean, rstd};
  TORCH_CHECK(N > 0, where, ": normalized size N must be >= 1, got 0");
  a.x = x.data_ptr();
  a.residual = ptr_or_null(residual);
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.out = out.data_ptr();
  a.xsum = ptr_or_null<void>(xsum);
  a.mean = ptr_or_null<float>(mean);
  a.rstd = rstd.data_ptr<float>();
  a.M = M;
  a.N = N;
  a.eps = float(eps);
  a.rms = rms;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::layer_norm_fwd(a, current_stream(x)); });
  return {out, xsum, mean, rstd};
}

Tensor3 layer_norm_bwd_cuda(const Tensor& dy_in, const optional<Tensor>& dxsum_in, const Tensor& x,
                            const optional<Tensor>& weight, const optional<Tensor>& bias,
                            const optional<Tensor>& mean, const Tensor& rstd, bool rms) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_bwd";
  check_x(where, x);
  TORCH_CHECK(x.dim() == 2, where, ": x must be 2-D (M, N), got shape ", x.sizes());
  const int64_t M = x.size(0), N = x.size(1);
  LayerNormBwdArgs a;
  a.x_row_stride = check_rows(where, "x", x, M, N);
  FN_CHECK_DEVICE(where, "dy", dy_in, x);
  FN_CHECK_DTYPE(where, "dy", dy_in, x.scalar_type());
  FN_CHECK_SIZES(where, "dy", dy_in, x.sizes());
  // The contract promises contiguous gradients; .contiguous() is then free, and keeps any
  // other caller correct.
  const Tensor dy = dy_in.contiguous();
  Tensor dxsum;
  if (given(dxsum_in)) {
    FN_CHECK_DEVICE(where, "dxsum", *dxsum_in, x);
    FN_CHECK_DTYPE(where, "dxsum", *dxsum_in, x.scalar_type());
    FN_CHECK_SIZES(where, "dxsum", *dxsum_in, x.sizes());
    dxsum = dxsum_in->contiguous();
  }
  const at::ScalarType wdt = check_affine(where, x, N, weight, bias);
  check_stats(where, "rstd", rstd, x, {M});
  if (!rms) {
    TORCH_CHECK(given(mean), where, ": mean is required when rms=False");
    check_stats(where, "mean", *mean, x, {M});
  }

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty({M, N}, x.options());
  WGrads g = alloc_wgrads(x, N, given(weight), given(bias), wdt);
  if (M == 0 || N == 0) {  // sums over no rows (no kernel covers them)
    g.dw.zero_();
    g.db.zero_();
    return {dx, g.dw, g.db};
  }
  const bool want_wgrad = given(weight) || given(bias);
  Tensor ws = want_wgrad ? workspace(x, layer_norm_bwd_workspace_bytes(M, N)) : Tensor();
  a.dy = dy.data_ptr();
  a.dxsum = dxsum.defined() ? dxsum.data_ptr() : nullptr;
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.mean = rms ? nullptr : mean->data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dweight = ptr_or_null<void>(g.dw);
  a.dbias = ptr_or_null<void>(g.db);
  a.workspace = want_wgrad ? ws.data_ptr() : nullptr;
  a.M = M;
  a.N = N;
  a.rms = rms;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::layer_norm_bwd(a, current_stream(x)); });
  return {dx, g.dw, g.db};
}

// ------------------------------------------------------------- channel norms: (N, C, S)
struct Geom {
  int64_t N, C, S;
  bool cl;
};

Geom channel_geom(const char* where, const Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, where, ": x must be (N, C, *spatial), got shape ", x.sizes());
  Geom g{x.size(0), x.size(1), 1, false};
  for (int64_t d = 2; d < x.dim(); ++d) g.S *= x.size(d);
  if (x.is_contiguous()) return g;
  if ((x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
      (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))) {
    g.cl = true;
    return g;
  }
  TORCH_CHECK(false, where, ": x must be contiguous or channels_last (4-D/5-D), got shape ", x.sizes(),
              " strides ", x.strides());
  return g;
}

// The launchers' shared fields of the channel norms.
void fill_geom(ChannelDims& a, const Geom& g, const Tensor& x, at::ScalarType wdt) {
  a.N = g.N;
  a.C = g.C;
  a.S = g.S;
  a.channels_last = g.cl;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
}

// The backward of an empty x: dx as it is, the weight gradients sums over nothing (no kernel
// covers them).
Tensor3 zero_wgrads(const Tensor& dx, WGrads& w) {
  w.dw.zero_();
  w.db.zero_();
  return {dx, w.dw, w.db};
}

// The fields every channel norm's forward shares: the geometry, x and its affine parameters, out
// and the statistics.
void fill_fwd(ChannelFwdArgs& a, const Geom& g, const Tensor& x, at::ScalarType wdt, const optional<Tensor>& weight,
              const optional<Tensor>& bias, const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  fill_geom(a, g, x, wdt);
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.out = out.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
}

// ... and its backward's: the geometry, dy, x, the weight, the statistics, dx and the weight
// gradients wanted.
void fill_bwd(ChannelBwdArgs& a, const Geom& g, const Tensor& x, at::ScalarType wdt, const Tensor& dy,
              const optional<Tensor>& weight, const Tensor& mean, const Tensor& rstd, const Tensor& dx,
              const WGrads& w) {
  fill_geom(a, g, x, wdt);
  a.dy = dy.data_ptr();
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dweight = ptr_or_null<void>(w.dw);
  a.dbias = ptr_or_null<void>(w.db);
}

// --------------------------------------------------------------------------- layer_norm_2d
// Statistics (N, *spatial): the shape of x without its channel dim.
std::vector<int64_t> position_shape(const Tensor& x) {
  std::vector<int64_t> s{x.size(0)};
  for (int64_t d = 2; d < x.dim(); ++d) s.push_back(x.size(d));
  return s;
}

Tensor3 layer_norm_2d_fwd_cuda(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                               double eps) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_2d_fwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);
  Tensor mean = empty_float(x, position_shape(x));
  Tensor rstd = empty_float(x, position_shape(x));
  if (x.numel() == 0) return {out, mean, rstd};  // never through the contract
  LayerNorm2dFwdArgs a;
  fill_fwd(a, g, x, wdt, weight, bias, out, mean, rstd);
  a.eps = float(eps);
  run_launcher(where, [&] { fusednorm::layer_norm_2d_fwd(a, current_stream(x)); });
  return {out, mean, rstd};
}

Tensor3 layer_norm_2d_bwd_cuda(const Tensor& dy_in, const Tensor& x, const optional<Tensor>& weight,
                               const optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_2d_bwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  const Tensor dy = like_layout(where, dy_in, x);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, bias);
  check_stats(where, "mean", mean, x, position_shape(x));
  check_stats(where, "rstd", rstd, x, position_shape(x));

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  WGrads w = alloc_wgrads(x, g.C, given(weight), given(bias), wdt);
  if (x.numel() == 0) return zero_wgrads(dx, w);
  const bool want_wgrad = given(weight) || given(bias);
  Tensor ws = want_wgrad ? workspace(x, layer_norm_2d_bwd_workspace_bytes(g.N, g.C, g.S, g.cl)) : Tensor();
  LayerNorm2dBwdArgs a;
  fill_bwd(a, g, x, wdt, dy, weight, mean, rstd, dx, w);
  a.workspace = want_wgrad ? ws_ptr(ws) : nullptr;
  run_launcher(where, [&] { fusednorm::layer_norm_2d_bwd(a, current_stream(x)); });
  return {dx, w.dw, w.db};
}

// ------------------------------------------------------------------------------ group_norm
bool parse_activation(const char* where, c10::string_view activation) {
  if (activation.empty()) return false;
  if (activation == "silu") return true;
  TORCH_CHECK_VALUE(false, where, ": activation must be \"\" or \"silu\", got \"", std::string(activation), "\"");
  return false;
}

void check_groups(const char* where, const Geom& g, int64_t num_groups) {
  TORCH_CHECK(num_groups > 0 && g.C % num_groups == 0, where, ": num_groups=", num_groups,
              " must be positive and divide channels=", g.C);
}

Tensor3 group_norm_fwd_cuda(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                            int64_t num_groups, double eps, c10::string_view activation) {
  constexpr const char* where = "fusednorm_cuda::group_norm_fwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  check_groups(where, g, num_groups);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, bias);
  const bool silu = parse_activation(where, activation);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);  // same strides as x (dense): NCHW or channels_last
  Tensor mean = empty_float(x, {g.N, num_groups});
  Tensor rstd = empty_float(x, {g.N, num_groups});
  if (g.N == 0) return {out, mean, rstd};
  if (g.S == 0) {  // statistics of empty groups (never through the contract: numel 0 stays out)
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    return {out, mean, rstd};
  }
  Tensor ws = workspace(x, group_norm_fwd_workspace_bytes(g.N, g.C, g.S, g.cl));
  GroupNormFwdArgs a;
  fill_fwd(a, g, x, wdt, weight, bias, out, mean, rstd);
  a.workspace = ws_ptr(ws);
  a.G = num_groups;
  a.eps = float(eps);
  a.silu = silu;
  run_launcher(where, [&] { fusednorm::group_norm_fwd(a, current_stream(x)); });
  return {out, mean, rstd};
}

Tensor3 group_norm_bwd_cuda(const Tensor& dy_in, const Tensor& x, const optional<Tensor>& weight,
                            const optional<Tensor>& bias, const Tensor& mean, const Tensor& rstd,
                            int64_t num_groups, c10::string_view activation) {
  constexpr const char* where = "fusednorm_cuda::group_norm_bwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  check_groups(where, g, num_groups);
  const Tensor dy = like_layout(where, dy_in, x);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, bias);
  check_stats(where, "mean", mean, x, {g.N, num_groups});
  check_stats(where, "rstd", rstd, x, {g.N, num_groups});
  const bool silu = parse_activation(where, activation);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  WGrads w = alloc_wgrads(x, g.C, given(weight), given(bias), wdt);
  if (x.numel() == 0) return zero_wgrads(dx, w);
  Tensor ws = workspace(x, group_norm_bwd_workspace_bytes(g.N, g.C, g.S, num_groups, g.cl));
  GroupNormBwdArgs a;
  fill_bwd(a, g, x, wdt, dy, weight, mean, rstd, dx, w);
  a.bias = ptr_or_null(bias);  // silu's input is recomputed
  a.workspace = ws_ptr(ws);
  a.G = num_groups;
  a.silu = silu;
  run_launcher(where, [&] { fusednorm::group_norm_bwd(a, current_stream(x)); });
  return {dx, w.dw, w.db};
}

void instance_norm_running_cuda(const Tensor& mean, const Tensor& rstd, const optional<Tensor>& running_mean,
                                const optional<Tensor>& running_var, double momentum, double eps, int64_t spatial) {
  constexpr const char* where = "fusednorm_cuda::instance_norm_running";
  TORCH_CHECK(mean.dim() == 2, where, ": mean must be (N, C), got shape ", mean.sizes());
  TORCH_CHECK(mean.is_cuda(), where, ": mean must be a CUDA tensor, got ", mean.device());
  const int64_t N = mean.size(0), C = mean.size(1);
  check_stats(where, "mean", mean, mean, {N, C});
  check_stats(where, "rstd", rstd, mean, {N, C});
  TORCH_CHECK(spatial > 1, where, ": spatial must be > 1 (the unbiased variance divides by spatial - 1), got ",
              spatial);
  InstanceNormRunningArgs a;
  if (given(running_mean)) a.running_mean_dtype = check_running(where, "running_mean", *running_mean, mean, C);
  if (given(running_var)) a.running_var_dtype = check_running(where, "running_var", *running_var, mean, C);
  c10::cuda::CUDAGuard guard(mean.device());
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.running_mean = ptr_or_null(running_mean);
  a.running_var = ptr_or_null(running_var);
  a.N = N;
  a.C = C;
  a.momentum = float(momentum);
  a.eps = float(eps);
  a.unbias = float(double(spatial) / double(spatial - 1));
  run_launcher(where, [&] { fusednorm::instance_norm_running(a, current_stream(mean)); });
}

// ------------------------------------------------------------------------------ batch_norm
Tensor4 batch_norm_fwd_cuda(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
                            const optional<Tensor>& running_mean, const optional<Tensor>& running_var,
                            bool training, double eps, optional<double> momentum,
                            const optional<Tensor>& num_batches_tracked) {
  constexpr const char* where = "fusednorm_cuda::batch_norm_fwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, bias);
  BatchNormFwdArgs a;
  if (!training)
    TORCH_CHECK(given(running_mean) && given(running_var), where,
                ": running_mean and running_var are required when training=False");
  if (given(running_mean)) a.running_mean_dtype = check_running(where, "running_mean", *running_mean, x, g.C);
  if (given(running_var)) a.running_var_dtype = check_running(where, "running_var", *running_var, x, g.C);
  if (given(num_batches_tracked)) {
    FN_CHECK_DEVICE(where, "num_batches_tracked", *num_batches_tracked, x);
    FN_CHECK_DTYPE(where, "num_batches_tracked", *num_batches_tracked, at::kLong);
    TORCH_CHECK(num_batches_tracked->numel() == 1, where, ": num_batches_tracked must hold one value, got shape ",
                num_batches_tracked->sizes());
  }
  TORCH_CHECK(!(training && !momentum.has_value() && (given(running_mean) || given(running_var)) &&
                !given(num_batches_tracked)),
              where, ": num_batches_tracked is required when momentum is None (the cumulative average)");

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);
  Tensor mean = empty_float(x, {g.C});
  Tensor rstd = empty_float(x, {g.C});
  Tensor var = training ? empty_float(x, {g.C}) : empty_float(x, {0});
  if (x.numel() == 0) {  // never through the contract (empty batches stay out)
    if (training) {
      mean.fill_(std::numeric_limits<float>::quiet_NaN());
      rstd.fill_(std::numeric_limits<float>::quiet_NaN());
      var.fill_(std::numeric_limits<float>::quiet_NaN());
    } else if (g.C > 0) {  // eval statistics of the running buffers, no kernel to compute them
      mean.copy_(*running_mean);
      rstd.copy_((running_var->to(at::kFloat) + eps).rsqrt());
    }
    return {out, mean, rstd, var};
  }
  Tensor ws = training ? workspace(x, batch_norm_fwd_workspace_bytes(g.N, g.C, g.S, g.cl)) : Tensor();
  fill_fwd(a, g, x, wdt, weight, bias, out, mean, rstd);
  a.var = ptr_or_null<float>(var);
  a.running_mean = ptr_or_null(running_mean);
  a.running_var = ptr_or_null(running_var);
  a.num_batches_tracked = training && given(num_batches_tracked) ? num_batches_tracked->data_ptr<int64_t>() : nullptr;
  a.momentum = float(momentum.value_or(0.0));
  a.cumulative = !momentum.has_value();
  a.workspace = training ? ws_ptr(ws) : nullptr;
  a.eps = float(eps);
  a.training = training;
  run_launcher(where, [&] { fusednorm::batch_norm_fwd(a, current_stream(x)); });
  return {out, mean, rstd, var};
}

Tensor3 batch_norm_bwd_cuda(const Tensor& dy_in, const Tensor& x, const optional<Tensor>& weight,
                            const Tensor& mean, const Tensor& rstd, bool training) {
  constexpr const char* where = "fusednorm_cuda::batch_norm_bwd";
  check_x(where, x);
  const Geom g = channel_geom(where, x);
  const Tensor dy = like_layout(where, dy_in, x);
  const at::ScalarType wdt = check_affine(where, x, g.C, weight, c10::nullopt);
  check_stats(where, "mean", mean, x, {g.C});
  check_stats(where, "rstd", rstd, x, {g.C});

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  WGrads w = alloc_wgrads(x, g.C, given(weight), true, wdt);  // dbias always (the contract)
  if (x.numel() == 0) return zero_wgrads(dx, w);
  Tensor ws = workspace(x, batch_norm_bwd_workspace_bytes(g.N, g.C, g.S, g.cl));
  BatchNormBwdArgs a;
  fill_bwd(a, g, x, wdt, dy, weight, mean, rstd, dx, w);
  a.dbias = w.db.data_ptr();  // always (the contract)
  a.workspace = ws_ptr(ws);
  a.training = training;
  run_launcher(where, [&] { fusednorm::batch_norm_bwd(a, current_stream(x)); });
  return {dx, w.dw, w.db};
}

}  // namespace
}  // namespace fusednorm

TORCH_LIBRARY(fusednorm_cuda, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, "
        "bool rms) -> (Tensor out, Tensor xsum, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor dy, Tensor? dxsum, Tensor x, Tensor? weight, Tensor? bias, "
        "Tensor? mean, Tensor rstd, bool rms) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("layer_norm_2d_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps) "
        "-> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("layer_norm_2d_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
        "Tensor rstd) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("group_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, "
        "str activation) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("group_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
        "Tensor rstd, int num_groups, str activation) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  // Called directly from Python (backends/cuda.py), never traced: the running buffers are
  // updated in place, as the schema declares.
  m.def("instance_norm_running(Tensor mean, Tensor rstd, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, float momentum, float eps, int spatial) -> ()");
  m.def("batch_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float eps, float? momentum, "
        "Tensor(c!)? num_batches_tracked) -> (Tensor out, Tensor mean, Tensor rstd, Tensor var)");
  m.def("batch_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, "
        "bool training) -> (Tensor dx, Tensor dweight, Tensor dbias)");
}

TORCH_LIBRARY_IMPL(fusednorm_cuda, CUDA, m) {
  m.impl("layer_norm_fwd", &fusednorm::layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &fusednorm::layer_norm_bwd_cuda);
  m.impl("layer_norm_2d_fwd", &fusednorm::layer_norm_2d_fwd_cuda);
  m.impl("layer_norm_2d_bwd", &fusednorm::layer_norm_2d_bwd_cuda);
  m.impl("group_norm_fwd", &fusednorm::group_norm_fwd_cuda);
  m.impl("group_norm_bwd", &fusednorm::group_norm_bwd_cuda);
  m.impl("instance_norm_running", &fusednorm::instance_norm_running_cuda);
  m.impl("batch_norm_fwd", &fusednorm::batch_norm_fwd_cuda);
  m.impl("batch_norm_bwd", &fusednorm::batch_norm_bwd_cuda);
}

// `import fusednorm._C` loads this library, which registers the ops above; the module itself
// is empty.  (The JIT build loads the library with torch.ops.load_library instead.)
#ifdef TORCH_EXTENSION_NAME
#define FN_CONCAT_(a, b) a##b
#define FN_CONCAT(a, b) FN_CONCAT_(a, b)
#define FN_STR_(a) #a
#define FN_STR(a) FN_STR_(a)
PyMODINIT_FUNC FN_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, FN_STR(TORCH_EXTENSION_NAME),
                                      "fusednorm CUDA ops (registered in torch.ops.fusednorm_cuda)",
                                      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
#endif
