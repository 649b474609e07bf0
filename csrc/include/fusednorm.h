// Host-side interface of the CUDA launchers: plain C++ (no torch, no CUDA device code), shared
// by the launch .cu files and by csrc/binding.cpp.  Pointers are raw device pointers; every
// size is int64; optional tensors are nullptr.  Launchers throw std::runtime_error naming the
// kernel when a launch fails, std::invalid_argument for a combination they do not support.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace fusednorm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

// ---------------------------------------------------------------- layer_norm (LN and RMS)
struct LayerNormFwdArgs {
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
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
void layer_norm_fwd(const LayerNormFwdArgs& a, cudaStream_t stream);

struct LayerNormBwdArgs {
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
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
size_t layer_norm_bwd_workspace_bytes(int64_t M, int64_t N);
void layer_norm_bwd(const LayerNormBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- group_norm
// x is (N, C, S) with S = prod(spatial); channels_last means element (n, c, s) lives at
// (n * S + s) * C + c, otherwise at (n * C + c) * S + s.
struct GroupNormFwdArgs {
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const void* bias = nullptr;      // (C,) or nullptr
  void* out = nullptr;             // layout of x
  float* mean = nullptr;           // (N, G)
  float* rstd = nullptr;           // (N, G)
  void* workspace = nullptr;       // group_norm_fwd_workspace_bytes(...)
  int64_t N = 0, C = 0, S = 0, G = 1;
  float eps = 1e-5f;
  bool silu = false;
  bool channels_last = false;
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
size_t group_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void group_norm_fwd(const GroupNormFwdArgs& a, cudaStream_t stream);

struct GroupNormBwdArgs {
  const void* dy = nullptr;        // layout of x
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const void* bias = nullptr;      // (C,) or nullptr (only read to recompute silu's input)
  const float* mean = nullptr;     // (N, G)
  const float* rstd = nullptr;     // (N, G)
  void* dx = nullptr;              // layout of x
  void* dweight = nullptr;         // (C,) or nullptr
  void* dbias = nullptr;           // (C,) or nullptr
  void* workspace = nullptr;       // group_norm_bwd_workspace_bytes(...)
  int64_t N = 0, C = 0, S = 0, G = 1;
  bool silu = false;
  bool channels_last = false;
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
size_t group_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last);
void group_norm_bwd(const GroupNormBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- batch_norm
// Same (N, C, S) geometry as group_norm.
struct BatchNormFwdArgs {
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const void* bias = nullptr;      // (C,) or nullptr
  void* out = nullptr;
  // training: outputs (C,) fp32 written here; eval: inputs, the running statistics as fp32
  // (mean and rstd; var unused).
  float* mean = nullptr;
  float* rstd = nullptr;
  float* var = nullptr;
  void* workspace = nullptr;       // batch_norm_fwd_workspace_bytes(...) (training only)
  int64_t N = 0, C = 0, S = 0;
  float eps = 1e-5f;
  bool training = true;
  bool channels_last = false;
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
size_t batch_norm_fwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void batch_norm_fwd(const BatchNormFwdArgs& a, cudaStream_t stream);

struct BatchNormBwdArgs {
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* weight = nullptr;    // (C,) or nullptr
  const float* mean = nullptr;     // (C,)
  const float* rstd = nullptr;     // (C,)
  void* dx = nullptr;
  void* dweight = nullptr;         // (C,) or nullptr
  void* dbias = nullptr;           // (C,) or nullptr
  void* workspace = nullptr;       // batch_norm_bwd_workspace_bytes(...)
  int64_t N = 0, C = 0, S = 0;
  bool training = true;
  bool channels_last = false;
  DType x_dtype = DType::kFloat32, w_dtype = DType::kFloat32;
};
size_t batch_norm_bwd_workspace_bytes(int64_t N, int64_t C, int64_t S, bool channels_last);
void batch_norm_bwd(const BatchNormBwdArgs& a, cudaStream_t stream);

}  // namespace fusednorm
