// Host-side interface of the CUDA launchers: plain C++ (no torch, no CUDA device code), shared
// by the launch .cu files and by csrc/binding.cpp.  Pointers are raw device pointers; every
// size is int64; optional tensors are nullptr.  Launchers throw std::runtime_error naming the
// kernel when a launch fails, std::invalid_argument for a combination they do not support.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace fusednorm {

// kFloat64 only for running statistics (BatchNorm/InstanceNorm buffers keep their dtype).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

// Fields every launcher's arguments share, written once (the Args structs derive from them, so
// a.N, a.x_dtype, ... read as before).
struct Dtypes {
  DType x_dtype = DType::kFloat32;  // x, outputs
  DType w_dtype = DType::kFloat32;  // weight, bias and their gradients: x's or float32
};
// (N, C, S) with S = prod(spatial), the channel norms' geometry: channels_last means element
// (n, c, s) lives at (n * S + s) * C + c, otherwise at (n * C + c) * S + s.
struct ChannelDims : Dtypes {
  int64_t N = 0, C = 0, S = 0;
  bool channels_last = false;
};

// The tensors every channel norm (LayerNorm2d, GroupNorm, BatchNorm) reads and writes, in the
// layout of ChannelDims; mean and rstd hold one value per set normalized together (LayerNorm2d:
// (N, S), GroupNorm: (N, G), BatchNorm: (C,)).
struct ChannelFwdArgs : ChannelDims {
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const void* bias = nullptr;      // (C,) or nullptr
  void* out = nullptr;             // layout of x
  float* mean = nullptr;
  float* rstd = nullptr;
};
struct ChannelBwdArgs : ChannelDims {
  const void* dy = nullptr;        // layout of x
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const float* mean = nullptr;     // the forward's statistics
  const float* rstd = nullptr;
  void* dx = nullptr;              // layout of x
  void* dweight = nullptr;         // (C,) or nullptr (not wanted)
  void* dbias = nullptr;           // (C,) or nullptr (not wanted)
  void* workspace = nullptr;       // the norm's *_bwd_workspace_bytes(...)
};

// ---------------------------------------------------------------- layer_norm (LN and RMS)
struct LayerNormFwdArgs : Dtypes {
  const void* x = nullptr;         // (M, N), unit column stride
  int64_t x_row_stride = 0;
  const void* residual = nullptr;  // (M, N) or nullptr, dtype of x
  int64_t residual_row_stride = 0;
  const void* weight = nullptr;    // (N,) w_dtype or nullptr
  const void* bias = nullptr;      // (N,) w_dtype or nullptr
  void* out = nullptr;             // (M, N) contiguous
  void* xsum = nullptr;            // (M, N) contiguous, written iff residual != nullptr
  float* mean = nullptr;           // (M,) or nullptr (rms)
  float* rstd = nullptr;           // (M,)
  int64_t M = 0, N = 0;
  float eps = 1e-5f;
  bool rms = false;
};
void layer_norm_fwd(const LayerNormFwdArgs& a, cudaStream_t stream);

struct LayerNormBwdArgs : Dtypes {
  const void* dy = nullptr;        // (M, N) contiguous
  const void* dxsum = nullptr;     // (M, N) contiguous or nullptr, added into dx
  const void* x = nullptr;         // (M, N), unit column stride
  int64_t x_row_stride = 0;
  const void* weight = nullptr;    // (N,) or nullptr
  const float* mean = nullptr;     // (M,) (ignored when rms)
  const float* rstd = nullptr;     // (M,)
  void* dx = nullptr;              // (M, N) contiguous
  void* dweight = nullptr;         // (N,) w_dtype or nullptr (not wanted)
  void* dbias = nullptr;           // (N,) w_dtype or nullptr (not wanted)
  void* workspace = nullptr;       // layer_norm_bwd_workspace_bytes(M, N) bytes
  int64_t M = 0, N = 0;
  bool rms = false;
};
size_t layer_norm_bwd_workspace_bytes(int64_t M, int64_t N);
void layer_norm_bwd(const LayerNormBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- layer_norm_2d
// LayerNorm over the C channels of (N, C, S) at each (n, s), either layout (ChannelDims).
struct LayerNorm2dFwdArgs : ChannelFwdArgs {  // mean, rstd: (N, S)
  float eps = 1e-6f;
};
void layer_norm_2d_fwd(const LayerNorm2dFwdArgs& a, cudaStream_t stream);

struct LayerNorm2dBwdArgs : ChannelBwdArgs {};  // workspace: only when dweight/dbias are wanted
size_t layer_norm_2d_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void layer_norm_2d_bwd(const LayerNorm2dBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- group_norm
struct GroupNormFwdArgs : ChannelFwdArgs {  // mean, rstd: (N, G)
  void* workspace = nullptr;       // group_norm_fwd_workspace_bytes(...)
  int64_t G = 1;
  float eps = 1e-5f;
  bool silu = false;
};
size_t group_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void group_norm_fwd(const GroupNormFwdArgs& a, cudaStream_t stream);

struct GroupNormBwdArgs : ChannelBwdArgs {
  const void* bias = nullptr;      // (C,) or nullptr (only read to recompute silu's input)
  int64_t G = 1;
  bool silu = false;
};
size_t group_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last);
void group_norm_bwd(const GroupNormBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- batch_norm
// mean (C,) written: the batch mean (training), running_mean as fp32 (eval); rstd (C,) written:
// 1 / sqrt(var + eps) of the batch / running variance.
struct BatchNormFwdArgs : ChannelFwdArgs {
  float* var = nullptr;            // (C,) written in training: the biased batch variance
  // Running statistics, (C,) dense, any float dtype of their own: training updates them in place
  // (each may be nullptr), eval reads them (both required).
  void* running_mean = nullptr;
  void* running_var = nullptr;
  DType running_mean_dtype = DType::kFloat32, running_var_dtype = DType::kFloat32;
  int64_t* num_batches_tracked = nullptr;  // 0-dim int64 or nullptr; training: += 1 on the device
  float momentum = 0.1f;
  bool cumulative = false;         // momentum None: factor 1 / num_batches_tracked (then required)
  void* workspace = nullptr;       // batch_norm_fwd_workspace_bytes(...) (training only)
  float eps = 1e-5f;
  bool training = true;
};
size_t batch_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void batch_norm_fwd(const BatchNormFwdArgs& a, cudaStream_t stream);

struct BatchNormBwdArgs : ChannelBwdArgs {
  bool training = true;
};
size_t batch_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void batch_norm_bwd(const BatchNormBwdArgs& a, cudaStream_t stream);

// ------------------------------------------------------- instance_norm running statistics
// running <- (1 - momentum) running + momentum * (mean over n of the instance mean / unbiased
// variance), the variance recovered as max(1/rstd^2 - eps, 0) * unbias (S / (S - 1)).
struct InstanceNormRunningArgs {
  const float* mean = nullptr;     // (N, C)
  const float* rstd = nullptr;     // (N, C)
  void* running_mean = nullptr;    // (C,) or nullptr, any float dtype, updated in place
  void* running_var = nullptr;
  DType running_mean_dtype = DType::kFloat32, running_var_dtype = DType::kFloat32;
  int64_t N = 0, C = 0;
  float momentum = 0.1f, eps = 1e-5f, unbias = 1.f;
};
void instance_norm_running(const InstanceNormRunningArgs& a, cudaStream_t stream);

}  // namespace fusednorm
