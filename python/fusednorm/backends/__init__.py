"""Backends: the functions every implementation (reference, Triton, CUDA) provides.

A backend is a Python module exposing ``SUPPORTED`` (a set of op names among "layer_norm",
"group_norm", "batch_norm", "layer_norm_2d"), optionally ``DTYPES`` (default fp32, fp16,
bf16) and, for each supported op, the functions below.  (``native.py``, torch's own kernels,
is the one exception: ``NATIVE = True``, differentiable torch ops that the functional layer
calls directly on both paths -- see that module.)  The functional
layer validates arguments, reshapes and picks the backend, and ``fusednorm/ops`` calls these
-- from the eager autograd.Function or from the torch.library op, the same calls either way;
nothing the contract excludes is passed, so backends do not re-validate user input, and
empty inputs (numel 0) never reach them.

Every eager call pays what a backend does around its kernels, so a kernel backend launches
only its own kernels: no torch kernels for casts, zero-fills, partial sums or running
statistics, and no host synchronization (tests/test_paths.py counts them).

All statistics are float32.  Outputs are in the input's dtype; weight/bias gradients in the
weight's / bias's dtype.  ``weight``/``bias`` may be None; when given they are dense 1-D
(C,) or (N,) vectors, both in x's dtype or both float32 (e.g. bf16 x with fp32 weight; the
functional layer casts rarer mixes to float32) -- a kernel specialization, not a cast.
Returned gradients for absent weight/bias are ``None``.

layer_norm  (also RMSNorm: ``rms=True``; LN over the last dim of a 2-D view)
-------------------------------------------------------------------------------
layer_norm_fwd(x, residual, weight, bias, eps: float, rms: bool)
    x:        (M, N), x.stride(1) == 1, row stride arbitrary (>= N)
    residual: None or (M, N) same dtype as x, stride(1) == 1
    weight, bias: None or (N,) contiguous (bias is always None when rms)
    -> out (M, N) contiguous, x.dtype
       xsum (M, N) contiguous x.dtype = x + residual when residual is given, else None
       mean (M,) fp32 (None when rms), rstd (M,) fp32
    LN:  y = (x - mean) * rstd * w + b,  rstd = 1/sqrt(var + eps), var biased
    RMS: y = x * rstd * w,               rstd = 1/sqrt(mean(x^2) + eps)
    (the normalized quantity is x + residual when residual is given)

layer_norm_bwd(dy, dxsum, x, weight, bias, mean, rstd, rms: bool)
    dy:    (M, N) contiguous, x.dtype
    dxsum: None or (M, N) contiguous: gradient arriving at the prenorm output x+residual,
           added into dx (fused)
    x:     (M, N) the normalized input (x + residual when there was a residual), stride(1)==1
    bias:  only its presence and dtype matter (dbias)
    -> dx (M, N) contiguous x.dtype, dweight (N,) or None, dbias (N,) or None
    Deterministic: dweight/dbias from fp32 per-program partials reduced in a second step
    (Triton: two launches in all, the second summing dweight and dbias together).

group_norm  (also InstanceNorm with num_groups = C)
---------------------------------------------------
group_norm_fwd(x, weight, bias, num_groups: int, eps: float, activation: str)
    x: (N, C, *spatial) with at least one of: x.is_contiguous(), or (x.dim() in (4, 5) and
       x.is_contiguous(memory_format=channels_last / channels_last_3d)).  C % num_groups == 0.
       N may be 0 (then mean/rstd are (0, G) and out is empty).
    weight, bias: None or (C,)
    activation: "" or "silu"  (silu applied after the affine)
    -> out: same shape, dtype and memory format (strides) as x
       mean (N, G) fp32, rstd (N, G) fp32

group_norm_bwd(dy, x, weight, bias, mean, rstd, num_groups: int, activation: str)
    dy: same shape and memory format as x
    -> dx (same memory format as x), dweight (C,) or None, dbias (C,) or None

instance_norm_running(mean, rstd, running_mean, running_var, momentum: float, eps: float,
                      spatial: int)
    InstanceNorm (group_norm with G = C) with running statistics: from one batch's (N, C)
    mean and rstd, update in place (either may be None; any floating dtype)
        running_mean <- (1 - momentum) * running_mean + momentum * mean over n of mean
        running_var  <- (1 - momentum) * running_var  + momentum * mean over n of the
                        unbiased variance (1/rstd^2 - eps, clamped at 0, * S / (S - 1))

layer_norm_2d  (LayerNorm over the channels of (N, C, *spatial): timm's LayerNorm2d)
--------------------------------------------------------------------------------
layer_norm_2d_fwd(x, weight, bias, eps: float)
    x: (N, C, *spatial), x.is_contiguous() or channels_last(_3d) (4-D/5-D); numel > 0
    weight, bias: None or (C,)
    At each (n, position) over the C channels:
        y = (x - mean) * rstd * w[c] + b[c],  rstd = 1/sqrt(var + eps), var biased
    -> out: same shape, dtype and memory format (strides) as x
       mean (N, *spatial) fp32, rstd (N, *spatial) fp32

layer_norm_2d_bwd(dy, x, weight, bias, mean, rstd)
    dy: same shape and memory format as x; bias: only its presence and dtype matter
    dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  g = dy * w[c]
    -> dx (memory format of x), dweight (C,) or None, dbias (C,) or None, deterministic
       (Triton: per-program fp32 partial rows, then a fixed-order column sum: two launches)

batch_norm  (BatchNorm1d/2d/3d: x is (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W))
---------------------------------------------------------------------------------------
batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float,
               momentum: float or None, num_batches_tracked)
    x: contiguous, or channels_last(_3d) for 4-D/5-D; N*spatial >= 2 when training
       (the functional layer raises for 1 value per channel; empty batches never arrive)
    training=True: batch statistics, and the running statistics updated in place, on the
       device (dense (C,) buffers, each may be None, any floating dtype, computed in fp32
       and rounded once):  num_batches_tracked (a 0-dim int64 tensor, or None) += 1 first;
       f = momentum, or 1 / num_batches_tracked when momentum is None (the modules'
       cumulative average; num_batches_tracked is then given);
       running_mean <- (1 - f) running_mean + f mean,
       running_var  <- (1 - f) running_var  + f var * n / (n - 1)
    training=False: normalize with running_mean/running_var, which are not modified
    -> out (same shape/memory format as x), mean (C,) fp32, rstd (C,) fp32, and var (C,)
       fp32 biased batch variance in training -- in eval mode: mean = running_mean as fp32,
       rstd = 1/sqrt(running_var + eps), var = None.  All fresh tensors (no aliasing).

batch_norm_bwd(dy, x, weight, mean, rstd, training: bool)
    training=True:  dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) per channel
    training=False: dx = rstd * w * dy
    -> dx (memory format of x), dweight (C,) or None, dbias (C,)  -- dbias is returned
       whenever weight is given or not; the op layer drops what it does not need.
"""
