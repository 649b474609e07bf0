"""GPU smoke check of the CUDA backend (run on a CUDA machine from the repo root):
JIT-builds the extension from csrc/, then compares every op, forward and backward, with a
float64 torch reference on awkward shapes, and checks determinism and opcheck.
    python3 csrc/gpu_smoke.py          (TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 to build faster)
    python3 csrc/gpu_smoke.py --dry    the same cases with fusednorm.reference on the CPU in place
                                       of the extension: checks this script, not the kernels.  The
        4 bf16 residual RMS "rstd" rows fail there (~1e-3): the reference normalizes the unrounded
        fp32 x + residual, the kernels (CUDA and Triton) the xsum they store, rounded to x's dtype,
        which is what this script's float64 oracle does.
Exit status 1 if any comparison is out of tolerance."""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import fusednorm.reference.batch_norm  # noqa: E402,F401
import fusednorm.reference.group_norm  # noqa: E402,F401
from fusednorm import reference as oracle  # noqa: E402

DRY = "--dry" in sys.argv[1:]
t0 = time.time()
if DRY:
    be, dev = oracle, "cpu"
else:
    from fusednorm.backends import cuda as be  # noqa: E402

    reason = be.unavailable_reason()
    print(f"load/build: {time.time() - t0:.1f}s reason={reason}", flush=True)
    if reason:
        sys.exit(1)
    dev = "cuda"
TOL = {torch.float32: 2e-4, torch.float16: 8e-3, torch.bfloat16: 4e-2,
       torch.float64: 2e-4}  # fp64 running statistics: computed in fp32
fails = []


def cmp(name, got, ref, dt, scale=1.0):
    if got is None or ref is None:
        ok = got is None and ref is None
        print(f"{'ok ' if ok else 'BAD'} {name}: none-ness got={got is None} ref={ref is None}")
        if not ok:
            fails.append(name)
        return
    ref = ref.double()
    err = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    den = max(ref.abs().max().item() if ref.numel() else 1.0, 1.0)
    rel = err / den
    ok = rel <= TOL[dt] * scale and bool(torch.isfinite(got).all())
    if not ok:
        fails.append(name)
    print(f"{'ok ' if ok else 'BAD'} {name}: rel_err={rel:.2e}", flush=True)


def determinism(tag, first, second):
    """Two runs of a backward give bitwise the same gradients (no atomics in any sum)."""
    if not all(a is None and b is None or torch.equal(a, b) for a, b in zip(first, second)):
        fails.append(tag + " determinism")
        print("BAD determinism", tag)


def ln_case(M, N, dt, wdt, rms, residual, stride_pad=0, offset=0.0):
    tag = f"LN M={M} N={N} {dt} w={wdt} rms={rms} res={residual} pad={stride_pad}"
    base = torch.randn(M, N + stride_pad, device=dev) + offset
    x = base.to(dt)[:, :N]
    r = torch.randn(M, N, device=dev).to(dt) if residual else None
    w = (torch.rand(N, device=dev) + 0.5).to(wdt)
    b = None if rms else torch.randn(N, device=dev).to(wdt)
    out, xsum, mean, rstd = be.layer_norm_fwd(x, r, w, b, 1e-5, rms)
    xn = (x + r) if residual else x  # torch rounds x + r to dt, as the kernel does
    if residual:
        cmp(tag + " xsum", xsum, xn, dt)
    x64 = xn.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    if rms:
        ms = x64.pow(2).mean(-1, keepdim=True)
        rs = (ms + 1e-5).rsqrt()
        y = x64 * rs * w64
    else:
        mu = x64.mean(-1, keepdim=True)
        var = x64.var(-1, unbiased=False, keepdim=True)
        rs = (var + 1e-5).rsqrt()
        y = (x64 - mu) * rs * w64 + b64
        cmp(tag + " mean", mean, mu.squeeze(-1), torch.float32)
    cmp(tag + " rstd", rstd, rs.squeeze(-1), torch.float32)
    cmp(tag + " out", out, y, dt)
    dy = torch.randn(M, N, device=dev).to(dt)
    dxs = torch.randn(M, N, device=dev).to(dt) if residual else None
    xin = xsum if residual else x
    dx, dw, db = be.layer_norm_bwd(dy.contiguous(), dxs, xin, w, b, mean, rstd, rms)
    y.backward(dy.double())
    gx = x64.grad + (dxs.double() if residual else 0)
    cmp(tag + " dx", dx, gx, dt)
    cmp(tag + " dw", dw, w64.grad, dt, scale=4)
    cmp(tag + " db", db, b64.grad if b64 is not None else None, dt, scale=4)
    dx2, dw2, _ = be.layer_norm_bwd(dy.contiguous(), dxs, xin, w, b, mean, rstd, rms)
    if not (torch.equal(dx, dx2) and torch.equal(dw, dw2)):
        fails.append(tag + " determinism")
        print("BAD determinism", tag)


def gn_case(shape, G, dt, wdt, cl, act):
    tag = f"GN {shape} G={G} {dt} w={wdt} cl={cl} act={act!r}"
    x = torch.randn(*shape, device=dev).to(dt)
    if cl:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    C = shape[1]
    w = (torch.rand(C, device=dev) + 0.5).to(wdt)
    b = torch.randn(C, device=dev).to(wdt)
    out, mean, rstd = be.group_norm_fwd(x, w, b, G, 1e-5, act)
    assert out.stride() == x.stride(), tag
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = b.double().requires_grad_()
    y = F.group_norm(x64, G, w64, b64, 1e-5)
    if act == "silu":
        y = F.silu(y)
    xg = x.double().reshape(shape[0], G, -1)
    cmp(tag + " mean", mean, xg.mean(-1), torch.float32)
    cmp(tag + " rstd", rstd, (xg.var(-1, unbiased=False) + 1e-5).rsqrt(), torch.float32)
    cmp(tag + " out", out, y, dt)
    dy = torch.randn_like(x)
    dx, dw, db = be.group_norm_bwd(dy, x, w, b, mean, rstd, G, act)
    determinism(tag, (dx, dw, db), be.group_norm_bwd(dy, x, w, b, mean, rstd, G, act))
    y.backward(dy.double())
    cmp(tag + " dx", dx, x64.grad, dt)
    cmp(tag + " dw", dw, w64.grad, dt, scale=4)
    cmp(tag + " db", db, b64.grad, dt, scale=4)


def bn_case(shape, dt, wdt, cl, training, offset=0.0, rdt=torch.float32, momentum=0.1):
    tag = f"BN {shape} {dt} w={wdt} cl={cl} train={training} running={rdt} momentum={momentum}"
    x = (torch.randn(*shape, device=dev) + offset).to(dt)
    if cl:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    C = shape[1]
    w = (torch.rand(C, device=dev) + 0.5).to(wdt)
    b = torch.randn(C, device=dev).to(wdt)
    rm = (torch.randn(C, device=dev) + offset).to(rdt)
    rv = (torch.rand(C, device=dev) + 0.5).to(rdt)
    nbt = torch.tensor(3, device=dev, dtype=torch.int64)
    rm0, rv0 = rm.clone(), rv.clone()
    out, mean, rstd, var = be.batch_norm_fwd(x, w, b, rm, rv, training, 1e-5, momentum, nbt)
    assert out.stride() == x.stride(), tag
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = b.double().requires_grad_()
    # copies: in training F.batch_norm updates the buffers it is given (.double() of fp64 aliases)
    y = F.batch_norm(x64, rm0.double().clone(), rv0.double().clone(), w64, b64, training, 0.1, 1e-5)
    dims = [0] + list(range(2, x.dim()))
    if training:
        cmp(tag + " mean", mean, x.double().mean(dims), torch.float32)
        cmp(tag + " var", var, x.double().var(dims, unbiased=False), torch.float32)
        # running statistics and num_batches_tracked, updated in place on the device
        f = momentum if momentum is not None else 1 / 4
        cmp(tag + " running_mean", rm, rm0.double() * (1 - f) + x.double().mean(dims) * f, rdt)
        cmp(tag + " running_var", rv, rv0.double() * (1 - f) + x.double().var(dims, unbiased=True) * f, rdt)
        if nbt.item() != 4 or rm.dtype != rdt:
            fails.append(tag + " num_batches_tracked / dtype")
            print("BAD", tag, "num_batches_tracked", nbt.item())
        # and against the package's reference backend (same buffers, same update rule)
        rrm, rrv, rnbt = rm0.clone(), rv0.clone(), torch.tensor(3, device=dev, dtype=torch.int64)
        oracle.batch_norm.batch_norm_fwd(x, w, b, rrm, rrv, True, 1e-5, momentum, rnbt)
        cmp(tag + " running_mean vs reference", rm, rrm, rdt)
        cmp(tag + " running_var vs reference", rv, rrv, rdt)
    else:
        cmp(tag + " eval mean", mean, rm0.double(), torch.float32)
        cmp(tag + " eval rstd", rstd, (rv0.double() + 1e-5).rsqrt(), torch.float32)
        cmp(tag + " eval var", var, None, torch.float32)
        if not (torch.equal(rm, rm0) and torch.equal(rv, rv0) and nbt.item() == 3):
            fails.append(tag + " eval modified the running statistics")
    cmp(tag + " out", out, y, dt)
    dy = torch.randn_like(x)
    dx, dw, db = be.batch_norm_bwd(dy, x, w, mean, rstd, training)
    determinism(tag, (dx, dw, db), be.batch_norm_bwd(dy, x, w, mean, rstd, training))
    y.backward(dy.double())
    cmp(tag + " dx", dx, x64.grad, dt)
    cmp(tag + " dw", dw, w64.grad, dt, scale=4)
    cmp(tag + " db", db, b64.grad, dt, scale=4)


def ln2d_case(shape, dt, wdt, cl, offset=0.0):
    tag = f"LN2d {shape} {dt} w={wdt} cl={cl}"
    x = (torch.randn(*shape, device=dev) + offset).to(dt)
    if cl:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    C = shape[1]
    w = (torch.rand(C, device=dev) + 0.5).to(wdt)
    b = torch.randn(C, device=dev).to(wdt)
    out, mean, rstd = be.layer_norm_2d_fwd(x, w, b, 1e-6)
    assert out.stride() == x.stride(), tag
    perm = (0,) + tuple(range(2, x.dim())) + (1,)
    inv = [perm.index(i) for i in range(x.dim())]
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = b.double().requires_grad_()
    y = F.layer_norm(x64.permute(*perm), (C,), w64, b64, 1e-6).permute(*inv)
    cmp(tag + " mean", mean, x.double().mean(1), torch.float32)
    cmp(tag + " rstd", rstd, (x.double().var(1, unbiased=False) + 1e-6).rsqrt(), torch.float32)
    cmp(tag + " out", out, y, dt)
    dy = torch.randn_like(x)
    dx, dw, db = be.layer_norm_2d_bwd(dy, x, w, b, mean, rstd)
    determinism(tag, (dx, dw, db), be.layer_norm_2d_bwd(dy, x, w, b, mean, rstd))
    y.backward(dy.double())
    cmp(tag + " dx", dx, x64.grad, dt)
    cmp(tag + " dw", dw, w64.grad, dt, scale=4)
    cmp(tag + " db", db, b64.grad, dt, scale=4)


def in_running_case(N, C, S, rdt):
    tag = f"IN running N={N} C={C} S={S} {rdt}"
    mean = torch.randn(N, C, device=dev)
    rstd = torch.rand(N, C, device=dev) + 0.5
    rm = torch.randn(C, device=dev).to(rdt)
    rv = (torch.rand(C, device=dev) + 0.5).to(rdt)
    rm0, rv0 = rm.double(), rv.double()
    be.instance_norm_running(mean, rstd, rm, rv, 0.1, 1e-5, S)
    var = (rstd.double().reciprocal().square() - 1e-5).clamp_min(0) * (S / (S - 1))
    cmp(tag + " running_mean", rm, rm0 * 0.9 + mean.double().mean(0) * 0.1, rdt)
    cmp(tag + " running_var", rv, rv0 * 0.9 + var.mean(0) * 0.1, rdt)
    rrm, rrv = rm0.to(rdt), rv0.to(rdt)  # the package's reference, same buffers
    oracle.group_norm.instance_norm_running(mean, rstd, rrm, rrv, 0.1, 1e-5, S)
    cmp(tag + " running_mean vs reference", rm, rrm, rdt)
    cmp(tag + " running_var vs reference", rv, rrv, rdt)
    rm1 = torch.randn(C, device=dev).to(rdt)  # one buffer absent
    rm1_0 = rm1.double()
    be.instance_norm_running(mean, rstd, rm1, None, 0.1, 1e-5, S)
    cmp(tag + " running_mean only", rm1, rm1_0 * 0.9 + mean.double().mean(0) * 0.1, rdt)


torch.manual_seed(0)
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
for (M, N) in [(1, 1), (37, 199), (64, 1024), (3, 1128), (5, 20000), (2, 262144), (300, 64)]:
    for dt, wdt in [(f32, f32), (bf16, bf16), (bf16, f32), (f16, f32)]:
        ln_case(M, N, dt, wdt, rms=False, residual=False)
    ln_case(M, N, bf16, f32, rms=True, residual=True)
ln_case(17, 4096, bf16, bf16, rms=False, residual=True, stride_pad=8)
ln_case(17, 999, f32, f32, rms=True, residual=False, stride_pad=3)
ln_case(64, 4096, f32, f32, rms=False, residual=False, offset=1e4)
for shape, G in [((2, 64, 7, 9), 8), ((3, 6, 1, 1), 3), ((1, 32, 128, 128), 32), ((2, 8, 3, 4, 5), 4),
                 ((4, 10, 33), 10), ((2, 12), 3)]:
    for dt, wdt in [(f32, f32), (bf16, f32), (f16, f16)]:
        for cl in ([False, True] if len(shape) in (4, 5) else [False]):
            gn_case(shape, G, dt, wdt, cl, "silu" if dt != f16 else "")
for shape in [(8, 16), (4, 16, 9000), (2, 24, 13, 11), (3, 8, 2, 3, 5), (64, 32, 56, 56)]:
    for dt, wdt in [(f32, f32), (bf16, f32), (f16, f16)]:
        for cl in ([False, True] if len(shape) in (4, 5) else [False]):
            for training in (True, False):
                bn_case(shape, dt, wdt, cl, training)
bn_case((16, 8, 32, 32), f32, f32, False, True, offset=1e4)
for rdt in (f32, bf16, torch.float64):
    for momentum in (0.1, None):
        bn_case((8, 24, 7, 7), bf16, f32, True, True, rdt=rdt, momentum=momentum)
        bn_case((8, 24, 7, 7), f32, f32, False, True, rdt=rdt, momentum=momentum)
for N, C, S, rdt in [(4, 16, 49, f32), (37, 64, 1024, bf16), (1, 3, 2, f16)]:
    in_running_case(N, C, S, rdt)
for shape in [(2, 96, 14, 14), (4, 192, 28, 28), (2, 768, 7, 7), (2, 24, 5, 6, 8), (3, 5, 1, 1)]:
    for dt, wdt in [(f32, f32), (bf16, f32), (f16, f16)]:
        for cl in ([False, True] if len(shape) in (4, 5) else [False]):
            ln2d_case(shape, dt, wdt, cl)
ln2d_case((2, 64, 16, 16), f32, f32, False, offset=1e4)

# opcheck: schema, fake kernels, dispatch consistency
from torch.library import opcheck  # noqa: E402

if DRY:
    print(f"total {time.time() - t0:.1f}s; failures: {len(fails)} (dry run: no opcheck)")
    for f in fails:
        print("FAIL", f)
    sys.exit(1 if fails else 0)
x = torch.randn(8, 64, device=dev)
w = torch.rand(64, device=dev)
for name, args in [
    ("layer_norm_fwd", (x, None, w, None, 1e-5, False)),
    ("group_norm_fwd", (torch.randn(2, 8, 4, 4, device=dev), w[:8], None, 4, 1e-5, "silu")),
    ("layer_norm_2d_fwd", (torch.randn(2, 8, 4, 4, device=dev), w[:8], None, 1e-6)),
    ("batch_norm_fwd", (torch.randn(2, 8, 4, 4, device=dev), w[:8], None, None, None, True, 1e-5, 0.1, None)),
    ("batch_norm_fwd", (torch.randn(2, 8, 4, 4, device=dev), w[:8], None, torch.zeros(8, device=dev),
                        torch.ones(8, device=dev), True, 1e-5, None,
                        torch.tensor(2, device=dev, dtype=torch.int64))),
    ("batch_norm_fwd", (torch.randn(2, 8, 4, 4, device=dev), w[:8], None, torch.zeros(8, device=dev),
                        torch.ones(8, device=dev), False, 1e-5, 0.1, None)),
    ("layer_norm_fwd", (x.bfloat16(), x.bfloat16(), w, None, 1e-5, True)),
    ("layer_norm_bwd", (x, None, x, w, w, x[:, 0].contiguous(), x[:, 1].abs().contiguous(), False)),
    ("layer_norm_2d_fwd", (torch.randn(2, 8, 4, 4, device=dev).to(memory_format=torch.channels_last),
                           None, w[:8], 1e-6)),
    ("layer_norm_2d_bwd", (torch.randn(2, 8, 4, 4, device=dev), torch.randn(2, 8, 4, 4, device=dev), w[:8],
                           w[:8], torch.randn(2, 4, 4, device=dev), torch.rand(2, 4, 4, device=dev) + 0.5)),
    ("group_norm_bwd", (torch.randn(2, 8, 4, 4, device=dev), torch.randn(2, 8, 4, 4, device=dev), w[:8], w[:8],
                        torch.randn(2, 4, device=dev), torch.rand(2, 4, device=dev) + 0.5, 4, "silu")),
    ("batch_norm_bwd", (torch.randn(2, 8, 4, 4, device=dev), torch.randn(2, 8, 4, 4, device=dev), w[:8],
                        torch.randn(8, device=dev), torch.rand(8, device=dev) + 0.5, True)),
    ("instance_norm_running", (torch.randn(2, 8, device=dev), torch.rand(2, 8, device=dev) + 0.5,
                               torch.zeros(8, device=dev), torch.ones(8, device=dev), 0.1, 1e-5, 16)),
]:
    try:
        opcheck(getattr(torch.ops.fusednorm_cuda, name), args,
                test_utils=("test_schema", "test_faketensor"))
        print("ok  opcheck", name)
    except Exception as e:  # noqa: BLE001
        fails.append("opcheck " + name)
        print("BAD opcheck", name, type(e).__name__, str(e)[:500])

print(f"total {time.time() - t0:.1f}s; failures: {len(fails)}")
for f in fails:
    print("FAIL", f)
sys.exit(1 if fails else 0)
