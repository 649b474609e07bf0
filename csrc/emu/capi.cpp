// C ABI over fusednorm's host launchers (csrc/include/fusednorm.h) for ctypes: scalar
// arguments in, the launcher's own argument struct filled here (so a change to the structs
// breaks this file's compile instead of silently shifting a ctypes layout).
//
// Every entry point returns 0 on success, or:
//   1  std::invalid_argument from the launcher (unsupported combination)
//   2  std::runtime_error from the launcher (a failed launch: its FN_LAUNCH_CHECK fired)
//   3  an emulator fault the launcher did not report (it never checked the launch)
//   4  a launch that was not followed by a launch-error check (STYLE: check every launch)
//   5  any other exception
// and fn_emu_call_message() says what happened (the launcher's text and the emulator's detail).
#include <mutex>
#include <string>

#include "cuda_emu.h"
#include "fusednorm.h"

namespace fn_emu {
void begin_call();
std::string end_call_lint();
cudaError_t sticky_error();
const std::string& fault_message();
}  // namespace fn_emu

namespace {

std::recursive_mutex g_mu;
std::string g_msg;

fusednorm::DType dt(int d) { return static_cast<fusednorm::DType>(d); }
cudaStream_t stream_of(long long s) { return reinterpret_cast<cudaStream_t>(s); }

template <class F>
int guarded(F&& f) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  g_msg.clear();
  fn_emu::begin_call();
  int rc = 0;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    g_msg = e.what();
    rc = 1;
  } catch (const std::runtime_error& e) {
    g_msg = e.what();
    rc = 2;
  } catch (const std::exception& e) {
    g_msg = e.what();
    rc = 5;
  }
  const std::string lint = fn_emu::end_call_lint();
  if (fn_emu::sticky_error() != cudaSuccess) {
    if (rc == 0) {
      rc = 3;
      g_msg = "the launcher returned normally but a kernel faulted";
    }
    g_msg += "\n" + fn_emu::fault_message();
  } else if (rc == 2 && !fn_emu::fault_message().empty()) {
    g_msg += "\n" + fn_emu::fault_message();
  }
  if (rc == 0 && !lint.empty()) {
    rc = 4;
    g_msg = lint;
  }
  return rc;
}

}  // namespace

extern "C" {

const char* fn_emu_call_message() { return g_msg.c_str(); }

int fn_layer_norm_fwd(const void* x, long long x_row_stride, const void* residual, long long residual_row_stride,
                      const void* weight, const void* bias, void* out, void* xsum, float* mean, float* rstd,
                      long long M, long long N, float eps, int rms, int x_dtype, int w_dtype, long long stream) {
  return guarded([&] {
    fusednorm::LayerNormFwdArgs a;
    a.x = x;
    a.x_row_stride = x_row_stride;
    a.residual = residual;
    a.residual_row_stride = residual_row_stride;
    a.weight = weight;
    a.bias = bias;
    a.out = out;
    a.xsum = xsum;
    a.mean = mean;
    a.rstd = rstd;
    a.M = M;
    a.N = N;
    a.eps = eps;
    a.rms = rms != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::layer_norm_fwd(a, stream_of(stream));
  });
}

unsigned long long fn_layer_norm_bwd_workspace_bytes(long long M, long long N) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::layer_norm_bwd_workspace_bytes(M, N);
}

int fn_layer_norm_bwd(const void* dy, const void* dxsum, const void* x, long long x_row_stride, const void* weight,
                      const float* mean, const float* rstd, void* dx, void* dweight, void* dbias, void* workspace,
                      long long M, long long N, int rms, int x_dtype, int w_dtype, long long stream) {
  return guarded([&] {
    fusednorm::LayerNormBwdArgs a;
    a.dy = dy;
    a.dxsum = dxsum;
    a.x = x;
    a.x_row_stride = x_row_stride;
    a.weight = weight;
    a.mean = mean;
    a.rstd = rstd;
    a.dx = dx;
    a.dweight = dweight;
    a.dbias = dbias;
    a.workspace = workspace;
    a.M = M;
    a.N = N;
    a.rms = rms != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::layer_norm_bwd(a, stream_of(stream));
  });
}

int fn_layer_norm_2d_fwd(const void* x, const void* weight, const void* bias, void* out, float* mean, float* rstd,
                         long long N, long long C, long long S, float eps, int cl, int x_dtype, int w_dtype,
                         long long stream) {
  return guarded([&] {
    fusednorm::LayerNorm2dFwdArgs a;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.out = out;
    a.mean = mean;
    a.rstd = rstd;
    a.N = N;
    a.C = C;
    a.S = S;
    a.eps = eps;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::layer_norm_2d_fwd(a, stream_of(stream));
  });
}

unsigned long long fn_layer_norm_2d_bwd_workspace_bytes(long long N, long long C, long long S, int cl) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::layer_norm_2d_bwd_workspace_bytes(N, C, S, cl != 0);
}

int fn_layer_norm_2d_bwd(const void* dy, const void* x, const void* weight, const float* mean, const float* rstd,
                         void* dx, void* dweight, void* dbias, void* workspace, long long N, long long C, long long S,
                         int cl, int x_dtype, int w_dtype, long long stream) {
  return guarded([&] {
    fusednorm::LayerNorm2dBwdArgs a;
    a.dy = dy;
    a.x = x;
    a.weight = weight;
    a.mean = mean;
    a.rstd = rstd;
    a.dx = dx;
    a.dweight = dweight;
    a.dbias = dbias;
    a.workspace = workspace;
    a.N = N;
    a.C = C;
    a.S = S;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::layer_norm_2d_bwd(a, stream_of(stream));
  });
}

unsigned long long fn_group_norm_fwd_workspace_bytes(long long N, long long C, long long S, int cl) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::group_norm_fwd_workspace_bytes(N, C, S, cl != 0);
}

int fn_group_norm_fwd(const void* x, const void* weight, const void* bias, void* out, float* mean, float* rstd,
                      void* workspace, long long N, long long C, long long S, long long G, float eps, int silu,
                      int cl, int x_dtype, int w_dtype, long long stream) {
  return guarded([&] {
    fusednorm::GroupNormFwdArgs a;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.out = out;
    a.mean = mean;
    a.rstd = rstd;
    a.workspace = workspace;
    a.N = N;
    a.C = C;
    a.S = S;
    a.G = G;
    a.eps = eps;
    a.silu = silu != 0;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::group_norm_fwd(a, stream_of(stream));
  });
}

unsigned long long fn_group_norm_bwd_workspace_bytes(long long N, long long C, long long S, long long G, int cl) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::group_norm_bwd_workspace_bytes(N, C, S, G, cl != 0);
}

int fn_group_norm_bwd(const void* dy, const void* x, const void* weight, const void* bias, const float* mean,
                      const float* rstd, void* dx, void* dweight, void* dbias, void* workspace, long long N,
                      long long C, long long S, long long G, int silu, int cl, int x_dtype, int w_dtype,
                      long long stream) {
  return guarded([&] {
    fusednorm::GroupNormBwdArgs a;
    a.dy = dy;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.mean = mean;
    a.rstd = rstd;
    a.dx = dx;
    a.dweight = dweight;
    a.dbias = dbias;
    a.workspace = workspace;
    a.N = N;
    a.C = C;
    a.S = S;
    a.G = G;
    a.silu = silu != 0;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::group_norm_bwd(a, stream_of(stream));
  });
}

unsigned long long fn_batch_norm_fwd_workspace_bytes(long long N, long long C, long long S, int cl) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::batch_norm_fwd_workspace_bytes(N, C, S, cl != 0);
}

int fn_batch_norm_fwd(const void* x, const void* weight, const void* bias, void* out, float* mean, float* rstd,
                      float* var, void* running_mean, void* running_var, int rm_dtype, int rv_dtype,
                      long long* num_batches_tracked, float momentum, int cumulative, void* workspace, long long N,
                      long long C, long long S, float eps, int training, int cl, int x_dtype, int w_dtype,
                      long long stream) {
  return guarded([&] {
    fusednorm::BatchNormFwdArgs a;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.out = out;
    a.mean = mean;
    a.rstd = rstd;
    a.var = var;
    a.running_mean = running_mean;
    a.running_var = running_var;
    a.running_mean_dtype = dt(rm_dtype);
    a.running_var_dtype = dt(rv_dtype);
    a.num_batches_tracked = reinterpret_cast<int64_t*>(num_batches_tracked);
    a.momentum = momentum;
    a.cumulative = cumulative != 0;
    a.workspace = workspace;
    a.N = N;
    a.C = C;
    a.S = S;
    a.eps = eps;
    a.training = training != 0;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::batch_norm_fwd(a, stream_of(stream));
  });
}

int fn_instance_norm_running(const float* mean, const float* rstd, void* running_mean, void* running_var,
                             int rm_dtype, int rv_dtype, long long N, long long C, float momentum, float eps,
                             float unbias, long long stream) {
  return guarded([&] {
    fusednorm::InstanceNormRunningArgs a;
    a.mean = mean;
    a.rstd = rstd;
    a.running_mean = running_mean;
    a.running_var = running_var;
    a.running_mean_dtype = dt(rm_dtype);
    a.running_var_dtype = dt(rv_dtype);
    a.N = N;
    a.C = C;
    a.momentum = momentum;
    a.eps = eps;
    a.unbias = unbias;
    fusednorm::instance_norm_running(a, stream_of(stream));
  });
}

unsigned long long fn_batch_norm_bwd_workspace_bytes(long long N, long long C, long long S, int cl) {
  std::lock_guard<std::recursive_mutex> lk(g_mu);
  return fusednorm::batch_norm_bwd_workspace_bytes(N, C, S, cl != 0);
}

int fn_batch_norm_bwd(const void* dy, const void* x, const void* weight, const float* mean, const float* rstd,
                      void* dx, void* dweight, void* dbias, void* workspace, long long N, long long C, long long S,
                      int training, int cl, int x_dtype, int w_dtype, long long stream) {
  return guarded([&] {
    fusednorm::BatchNormBwdArgs a;
    a.dy = dy;
    a.x = x;
    a.weight = weight;
    a.mean = mean;
    a.rstd = rstd;
    a.dx = dx;
    a.dweight = dweight;
    a.dbias = dbias;
    a.workspace = workspace;
    a.N = N;
    a.C = C;
    a.S = S;
    a.training = training != 0;
    a.channels_last = cl != 0;
    a.x_dtype = dt(x_dtype);
    a.w_dtype = dt(w_dtype);
    fusednorm::batch_norm_bwd(a, stream_of(stream));
  });
}

// Self-test kernels (selftest.cpp) run through the same bracketing.
int fn_emu_selftest_impl(const char* name, void* out, long long n, long long arg);
int fn_emu_selftest(const char* name, void* out, long long n, long long arg) {
  return guarded([&] {
    if (fn_emu_selftest_impl(name, out, n, arg) != 0)
      throw std::invalid_argument(std::string("unknown self-test ") + name);
  });
}

}  // extern "C"
