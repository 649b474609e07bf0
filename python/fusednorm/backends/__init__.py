"""Backends: the functions every implementation (torch reference, Triton, CUDA) provides.

A backend is a Python module exposing ``SUPPORTED`` (a set of op names among "layer_norm",
"group_norm", "batch_norm") and, for each supported op, the functions below.  The op layer
(``fusednorm/ops``) validates arguments, reshapes, picks the backend and calls these; it never
passes anything the contract excludes, so backends do not re-validate user input.

All statistics are float32.  Outputs are in the input's dtype; weight/bias gradients in the
weight's dtype.  ``weight``/``bias`` may be None; they may have a dtype other than x (e.g. bf16
x with fp32 weight).  Returned gradients for absent weight/bias are ``None``.

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
    -> dx (M, N) contiguous x.dtype, dweight (N,) or None, dbias (N,) or None
    Deterministic: dweight/dbias from fp32 per-program partials reduced in a second step.

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

batch_norm  (BatchNorm1d/2d/3d: x is (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W))
---------------------------------------------------------------------------------------
batch_norm_fwd(x, weight, bias, running_mean, running_var, training: bool, eps: float)
    x: contiguous, or channels_last(_3d) for 4-D/5-D; N*spatial >= 1 when training
       (the op layer handles empty batches and the 1-value-per-channel error itself)
    training=True: batch statistics; running_mean/var are NOT touched here (the op layer
       updates them from the returned mean and var, on the device, no host sync)
    training=False: normalize with running_mean/running_var (fp32 or x-like dtype, (C,))
    -> out (same shape/memory format as x), mean (C,) fp32, rstd (C,) fp32,
       var (C,) fp32 biased batch variance (training) -- in eval mode: the running
       statistics as fp32 (mean = running_mean, rstd = 1/sqrt(running_var + eps), var =
       running_var)

batch_norm_bwd(dy, x, weight, mean, rstd, training: bool)
    training=True:  dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) per channel
    training=False: dx = rstd * w * dy
    -> dx (memory format of x), dweight (C,) or None, dbias (C,)  -- dbias is returned
       whenever weight is given or not; the op layer drops what it does not need.
"""
