// Torch-facing host code of the CUDA backend: op schemas (TORCH_LIBRARY(fusednorm_cuda)),
// CUDA implementations that check arguments, allocate outputs and workspaces with the caching
// allocator, and call the torch-free launchers with raw pointers on the current stream.
// Absent outputs (xsum without residual, mean for RMS, gradients of absent parameters) are
// returned as empty tensors (numel 0); the Python adapter turns them into None.
#include <Python.h>  // first, as Python requires; only for the module init below

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>

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

const void* ptr_or_null(const optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr() : nullptr;
}
bool given(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

Tensor empty_float(const Tensor& x, at::IntArrayRef sizes) {
  return at::empty(sizes, x.options().dtype(at::kFloat));
}
Tensor none_like(const Tensor& x) { return at::empty({0}, x.options()); }
Tensor workspace(const Tensor& x, size_t bytes) {
  return at::empty({int64_t(bytes)}, x.options().dtype(at::kByte));
}

// Weight/bias dtype W: weight's, else bias's, else x's; both given must agree.
at::ScalarType param_dtype(const char* where, const Tensor& x, const optional<Tensor>& w,
                           const optional<Tensor>& b) {
  if (given(w) && given(b))
    TORCH_CHECK(w->scalar_type() == b->scalar_type(), where, ": bias must have weight's dtype (",
                w->scalar_type(), "), got ", b->scalar_type());
  if (given(w)) return w->scalar_type();
  if (given(b)) return b->scalar_type();
  return x.scalar_type();
}

// ------------------------------------------------------------------------------ layer_norm
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_norm_fwd_cuda(const Tensor& x,
                                                          const optional<Tensor>& residual,
                                                          const optional<Tensor>& weight,
                                                          const optional<Tensor>& bias,
                                                          double eps, bool rms) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_fwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  TORCH_CHECK(x.dim() == 2, where, ": x must be 2-D (M, N), got shape ", x.sizes());
  const int64_t M = x.size(0), N = x.size(1);
  TORCH_CHECK(N <= 1 || x.stride(1) == 1, where, ": x must have unit column stride, got strides ", x.strides());
  TORCH_CHECK(M <= 1 || x.stride(0) >= N, where, ": x row stride must be >= N=", N, ", got ", x.stride(0));
  if (given(residual)) {
    FN_CHECK_DEVICE(where, "residual", *residual, x);
    FN_CHECK_DTYPE(where, "residual", *residual, x.scalar_type());
    FN_CHECK_SIZES(where, "residual", *residual, x.sizes());
    TORCH_CHECK(N <= 1 || residual->stride(1) == 1, where,
                ": residual must have unit column stride, got strides ", residual->strides());
    TORCH_CHECK(M <= 1 || residual->stride(0) >= N, where, ": residual row stride must be >= N=", N,
                ", got ", residual->stride(0));
  }
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, N);
  if (given(bias)) FN_CHECK_PARAM(where, "bias", *bias, x, N);
  TORCH_CHECK(!(rms && given(bias)), where, ": bias must be None when rms=True");
  const at::ScalarType wdt = param_dtype(where, x, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty({M, N}, x.options());
  Tensor xsum = given(residual) ? at::empty({M, N}, x.options()) : none_like(x);
  Tensor mean = rms ? empty_float(x, {0}) : empty_float(x, {M});
  Tensor rstd = empty_float(x, {M});
  if (M == 0) return {out, xsum, mean, rstd};
  TORCH_CHECK(N > 0, where, ": normalized size N must be >= 1, got 0");

  LayerNormFwdArgs a;
  a.x = x.data_ptr();
  a.x_row_stride = M <= 1 ? N : x.stride(0);
  a.residual = ptr_or_null(residual);
  a.residual_row_stride = given(residual) && M > 1 ? residual->stride(0) : N;
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.out = out.data_ptr();
  a.xsum = given(residual) ? xsum.data_ptr() : nullptr;
  a.mean = rms ? nullptr : mean.data_ptr<float>();
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

std::tuple<Tensor, Tensor, Tensor> layer_norm_bwd_cuda(const Tensor& dy_in,
                                                  const optional<Tensor>& dxsum_in,
                                                  const Tensor& x,
                                                  const optional<Tensor>& weight,
                                                  const optional<Tensor>& bias,
                                                  const optional<Tensor>& mean,
                                                  const Tensor& rstd, bool rms) {
  constexpr const char* where = "fusednorm_cuda::layer_norm_bwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  TORCH_CHECK(x.dim() == 2, where, ": x must be 2-D (M, N), got shape ", x.sizes());
  const int64_t M = x.size(0), N = x.size(1);
  TORCH_CHECK(N <= 1 || x.stride(1) == 1, where, ": x must have unit column stride, got strides ", x.strides());
  TORCH_CHECK(M <= 1 || x.stride(0) >= N, where, ": x row stride must be >= N=", N, ", got ", x.stride(0));
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
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, N);
  if (given(bias)) FN_CHECK_PARAM(where, "bias", *bias, x, N);
  FN_CHECK_DEVICE(where, "rstd", rstd, x);
  FN_CHECK_DTYPE(where, "rstd", rstd, at::kFloat);
  FN_CHECK_SIZES(where, "rstd", rstd, at::IntArrayRef({M}));
  FN_CHECK_CONTIGUOUS(where, "rstd", rstd);
  if (!rms) {
    TORCH_CHECK(given(mean), where, ": mean is required when rms=False");
    FN_CHECK_DEVICE(where, "mean", *mean, x);
    FN_CHECK_DTYPE(where, "mean", *mean, at::kFloat);
    FN_CHECK_SIZES(where, "mean", *mean, at::IntArrayRef({M}));
    FN_CHECK_CONTIGUOUS(where, "mean", *mean);
  }
  const at::ScalarType wdt = param_dtype(where, x, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty({M, N}, x.options());
  Tensor dweight = given(weight) ? at::empty({N}, x.options().dtype(wdt)) : none_like(x);
  Tensor dbias = given(bias) ? at::empty({N}, x.options().dtype(wdt)) : none_like(x);
  if (M == 0 || N == 0) {  // sums over no rows
    dweight.zero_();
    dbias.zero_();
    return {dx, dweight, dbias};
  }
  const bool want_wgrad = given(weight) || given(bias);
  Tensor ws = want_wgrad ? workspace(x, layer_norm_bwd_workspace_bytes(M, N)) : Tensor();

  LayerNormBwdArgs a;
  a.dy = dy.data_ptr();
  a.dxsum = dxsum.defined() ? dxsum.data_ptr() : nullptr;
  a.x = x.data_ptr();
  a.x_row_stride = M <= 1 ? N : x.stride(0);
  a.weight = ptr_or_null(weight);
  a.mean = rms ? nullptr : mean->data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dweight = given(weight) ? dweight.data_ptr() : nullptr;
  a.dbias = given(bias) ? dbias.data_ptr() : nullptr;
  a.workspace = want_wgrad ? ws.data_ptr() : nullptr;
  a.M = M;
  a.N = N;
  a.rms = rms;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::layer_norm_bwd(a, current_stream(x)); });
  return {dx, dweight, dbias};
}

// ------------------------------------------------------------- shared: (N, C, S) geometry
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
  TORCH_CHECK(false, where, ": x must be contiguous or channels_last (4-D/5-D), got shape ",
              x.sizes(), " strides ", x.strides());
  return g;
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

// ------------------------------------------------------------------------------ group_norm
bool parse_activation(const char* where, c10::string_view activation) {
  if (activation.empty()) return false;
  if (activation == "silu") return true;
  TORCH_CHECK_VALUE(false, where, ": activation must be \"\" or \"silu\", got \"",
                    std::string(activation), "\"");
  return false;
}

std::tuple<Tensor, Tensor, Tensor> group_norm_fwd_cuda(const Tensor& x, const optional<Tensor>& weight,
                                                  const optional<Tensor>& bias, int64_t num_groups,
                                                  double eps, c10::string_view activation) {
  constexpr const char* where = "fusednorm_cuda::group_norm_fwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  const Geom g = channel_geom(where, x);
  TORCH_CHECK(num_groups > 0 && g.C % num_groups == 0, where, ": num_groups=", num_groups,
              " must be positive and divide channels=", g.C);
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, g.C);
  if (given(bias)) FN_CHECK_PARAM(where, "bias", *bias, x, g.C);
  const bool silu = parse_activation(where, activation);
  const at::ScalarType wdt = param_dtype(where, x, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);  // same strides as x (dense): NCHW or channels_last
  Tensor mean = empty_float(x, {g.N, num_groups});
  Tensor rstd = empty_float(x, {g.N, num_groups});
  if (g.N == 0) return {out, mean, rstd};
  if (g.S == 0) {  // statistics of empty groups
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    return {out, mean, rstd};
  }
  Tensor ws = workspace(x, group_norm_fwd_workspace_bytes(g.N, g.C, g.S, g.cl));

  GroupNormFwdArgs a;
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.out = out.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.workspace = ws.data_ptr();
  a.N = g.N;
  a.C = g.C;
  a.S = g.S;
  a.G = num_groups;
  a.eps = float(eps);
  a.silu = silu;
  a.channels_last = g.cl;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::group_norm_fwd(a, current_stream(x)); });
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> group_norm_bwd_cuda(const Tensor& dy_in, const Tensor& x,
                                                  const optional<Tensor>& weight,
                                                  const optional<Tensor>& bias, const Tensor& mean,
                                                  const Tensor& rstd, int64_t num_groups,
                                                  c10::string_view activation) {
  constexpr const char* where = "fusednorm_cuda::group_norm_bwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  const Geom g = channel_geom(where, x);
  TORCH_CHECK(num_groups > 0 && g.C % num_groups == 0, where, ": num_groups=", num_groups,
              " must be positive and divide channels=", g.C);
  const Tensor dy = like_layout(where, dy_in, x);
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, g.C);
  if (given(bias)) FN_CHECK_PARAM(where, "bias", *bias, x, g.C);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"mean", mean}, {"rstd", rstd}}) {
    FN_CHECK_DEVICE(where, name, t, x);
    FN_CHECK_DTYPE(where, name, t, at::kFloat);
    FN_CHECK_SIZES(where, name, t, at::IntArrayRef({g.N, num_groups}));
    FN_CHECK_CONTIGUOUS(where, name, t);
  }
  const bool silu = parse_activation(where, activation);
  const at::ScalarType wdt = param_dtype(where, x, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  Tensor dweight = given(weight) ? at::empty({g.C}, x.options().dtype(wdt)) : none_like(x);
  Tensor dbias = given(bias) ? at::empty({g.C}, x.options().dtype(wdt)) : none_like(x);
  if (x.numel() == 0) {
    dweight.zero_();
    dbias.zero_();
    return {dx, dweight, dbias};
  }
  Tensor ws = workspace(x, group_norm_bwd_workspace_bytes(g.N, g.C, g.S, num_groups, g.cl));

  GroupNormBwdArgs a;
  a.dy = dy.data_ptr();
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dweight = given(weight) ? dweight.data_ptr() : nullptr;
  a.dbias = given(bias) ? dbias.data_ptr() : nullptr;
  a.workspace = ws.data_ptr();
  a.N = g.N;
  a.C = g.C;
  a.S = g.S;
  a.G = num_groups;
  a.silu = silu;
  a.channels_last = g.cl;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::group_norm_bwd(a, current_stream(x)); });
  return {dx, dweight, dbias};
}

// ------------------------------------------------------------------------------ batch_norm
std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_fwd_cuda(
    const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias,
    const optional<Tensor>& running_mean, const optional<Tensor>& running_var, bool training,
    double eps) {
  constexpr const char* where = "fusednorm_cuda::batch_norm_fwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  const Geom g = channel_geom(where, x);
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, g.C);
  if (given(bias)) FN_CHECK_PARAM(where, "bias", *bias, x, g.C);
  if (!training) {
    TORCH_CHECK(given(running_mean) && given(running_var), where,
                ": running_mean and running_var are required when training=False");
    FN_CHECK_PARAM(where, "running_mean", *running_mean, x, g.C);
    FN_CHECK_PARAM(where, "running_var", *running_var, x, g.C);
  }
  const at::ScalarType wdt = param_dtype(where, x, weight, bias);

  c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);
  Tensor mean, rstd, var;
  if (training) {
    mean = empty_float(x, {g.C});
    rstd = empty_float(x, {g.C});
    var = empty_float(x, {g.C});
    if (x.numel() == 0) {  // the op layer rejects this; statistics of nothing are NaN
      mean.fill_(std::numeric_limits<float>::quiet_NaN());
      rstd.fill_(std::numeric_limits<float>::quiet_NaN());
      var.fill_(std::numeric_limits<float>::quiet_NaN());
      return {out, mean, rstd, var};
    }
  } else {
    // Running statistics as fresh fp32 tensors (outputs must not alias inputs).
    mean = running_mean->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    var = running_var->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    rstd = (var + eps).rsqrt();
    if (x.numel() == 0) return {out, mean, rstd, var};
  }
  Tensor ws = training ? workspace(x, batch_norm_fwd_workspace_bytes(g.N, g.C, g.S, g.cl)) : Tensor();

  BatchNormFwdArgs a;
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.bias = ptr_or_null(bias);
  a.out = out.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.var = var.data_ptr<float>();
  a.workspace = training ? ws.data_ptr() : nullptr;
  a.N = g.N;
  a.C = g.C;
  a.S = g.S;
  a.eps = float(eps);
  a.training = training;
  a.channels_last = g.cl;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::batch_norm_fwd(a, current_stream(x)); });
  return {out, mean, rstd, var};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_bwd_cuda(const Tensor& dy_in, const Tensor& x,
                                                  const optional<Tensor>& weight,
                                                  const Tensor& mean, const Tensor& rstd,
                                                  bool training) {
  constexpr const char* where = "fusednorm_cuda::batch_norm_bwd";
  FN_CHECK_DEVICE(where, "x", x, x);
  FN_CHECK_NORM_DTYPE(where, "x", x);
  const Geom g = channel_geom(where, x);
  const Tensor dy = like_layout(where, dy_in, x);
  if (given(weight)) FN_CHECK_PARAM(where, "weight", *weight, x, g.C);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"mean", mean}, {"rstd", rstd}}) {
    FN_CHECK_DEVICE(where, name, t, x);
    FN_CHECK_DTYPE(where, name, t, at::kFloat);
    FN_CHECK_SIZES(where, name, t, at::IntArrayRef({g.C}));
    FN_CHECK_CONTIGUOUS(where, name, t);
  }
  const at::ScalarType wdt = given(weight) ? weight->scalar_type() : x.scalar_type();

  c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x);
  Tensor dweight = given(weight) ? at::empty({g.C}, x.options().dtype(wdt)) : none_like(x);
  Tensor dbias = at::empty({g.C}, x.options().dtype(wdt));
  if (x.numel() == 0) {
    dweight.zero_();
    dbias.zero_();
    return {dx, dweight, dbias};
  }
  Tensor ws = workspace(x, batch_norm_bwd_workspace_bytes(g.N, g.C, g.S, g.cl));

  BatchNormBwdArgs a;
  a.dy = dy.data_ptr();
  a.x = x.data_ptr();
  a.weight = ptr_or_null(weight);
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dweight = given(weight) ? dweight.data_ptr() : nullptr;
  a.dbias = dbias.data_ptr();
  a.workspace = ws.data_ptr();
  a.N = g.N;
  a.C = g.C;
  a.S = g.S;
  a.training = training;
  a.channels_last = g.cl;
  a.x_dtype = to_dtype(x.scalar_type());
  a.w_dtype = to_dtype(wdt);
  run_launcher(where, [&] { fusednorm::batch_norm_bwd(a, current_stream(x)); });
  return {dx, dweight, dbias};
}

}  // namespace
}  // namespace fusednorm

TORCH_LIBRARY(fusednorm_cuda, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, "
        "bool rms) -> (Tensor out, Tensor xsum, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor dy, Tensor? dxsum, Tensor x, Tensor? weight, Tensor? bias, "
        "Tensor? mean, Tensor rstd, bool rms) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("group_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, "
        "str activation) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("group_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
        "Tensor rstd, int num_groups, str activation) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("batch_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float eps) "
        "-> (Tensor out, Tensor mean, Tensor rstd, Tensor var)");
  m.def("batch_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, "
        "bool training) -> (Tensor dx, Tensor dweight, Tensor dbias)");
}

TORCH_LIBRARY_IMPL(fusednorm_cuda, CUDA, m) {
  m.impl("layer_norm_fwd", &fusednorm::layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &fusednorm::layer_norm_bwd_cuda);
  m.impl("group_norm_fwd", &fusednorm::group_norm_fwd_cuda);
  m.impl("group_norm_bwd", &fusednorm::group_norm_bwd_cuda);
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
