// Argument checks for the torch-facing binding (host code, torch headers).  One message style:
//   "<op>: <argument> must be <expectation>, got <value>"
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "fusednorm.h"

namespace fusednorm {

inline bool is_norm_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fusednorm: dtype ", t, " is not supported; expected float32, float16 or bfloat16");
  }
  return DType::kFloat32;
}

}  // namespace fusednorm

// `t` must be a CUDA tensor on x's device.
#define FN_CHECK_DEVICE(where, name, t, x)                                                     \
  TORCH_CHECK((t).is_cuda() && (t).device() == (x).device(), where, ": ", name,               \
              " must be a CUDA tensor on ", (x).device(), ", got ", (t).device())

#define FN_CHECK_DTYPE(where, name, t, expected)                                               \
  TORCH_CHECK((t).scalar_type() == (expected), where, ": ", name, " must have dtype ",        \
              (expected), ", got ", (t).scalar_type())

#define FN_CHECK_NORM_DTYPE(where, name, t)                                                    \
  TORCH_CHECK(::fusednorm::is_norm_dtype((t).scalar_type()), where, ": ", name,               \
              " must be float32, float16 or bfloat16, got ", (t).scalar_type())

#define FN_CHECK_SIZES(where, name, t, expected)                                               \
  TORCH_CHECK((t).sizes() == at::IntArrayRef(expected), where, ": ", name, " must have shape ", \
              at::IntArrayRef(expected), ", got ", (t).sizes())

#define FN_CHECK_CONTIGUOUS(where, name, t)                                                    \
  TORCH_CHECK((t).is_contiguous(), where, ": ", name, " must be contiguous, got strides ",     \
              (t).strides())

// An optional per-feature parameter (weight, bias, running stats): shape (n,), contiguous,
// on x's device, dtype x's or float32.
#define FN_CHECK_PARAM(where, name, t, x, n)                                                   \
  do {                                                                                         \
    FN_CHECK_DEVICE(where, name, t, x);                                                        \
    TORCH_CHECK((t).dim() == 1 && (t).size(0) == (n), where, ": ", name, " must have shape (", \
                (n), ",), got ", (t).sizes());                                                 \
    FN_CHECK_CONTIGUOUS(where, name, t);                                                       \
    TORCH_CHECK((t).scalar_type() == (x).scalar_type() || (t).scalar_type() == at::kFloat,     \
                where, ": ", name, " must have x's dtype (", (x).scalar_type(),                \
                ") or float32, got ", (t).scalar_type());                                      \
  } while (0)
