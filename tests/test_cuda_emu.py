"""The CUDA backend's kernels (csrc/*/kernel.cuh through the csrc/*/launch.cu launchers) run on
the CPU by the SIMT emulator in csrc/emu, checked against float64.

Each launch runs three times, on freshly poisoned (0xFF: NaN in every float format) outputs
and workspaces, under different schedules (threads in step, first warp ahead, last warp ahead;
blocks forward and reverse): the runs must agree bit for bit (determinism, and no dependence on
the order threads run in: a missing barrier or an atomic accumulation shows here), every output
element must have been written, the guard bytes around every buffer must be intact, and inputs
are read-only pages (a write to one is reported).
Accuracy is the project's rule (tests/_util.py): error against float64 at most twice torch's own
error in the same dtype, plus a small atol scaled by the reference's magnitude.

The second half proves the checks have teeth: kernels with a deliberate bug (missing
__syncthreads, a shuffle from an exited lane, an out-of-bounds write, a missing write, ...) in
csrc/emu/selftest.cpp, each of which must be caught, plus semantics checks of the emulator
itself (shuffles, atomics, fp16/bf16 rounding, device queries).

Needs only a host C++ compiler (g++): the library is built once per source hash into
build/cuda_emu/ (csrc/emu/build.py).  FN_EMU_VARIANT=asan selects the AddressSanitizer build
(run under LD_PRELOAD=libasan; test_asan_subset does that for a few cases).
"""
import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
EMU_DIR = ROOT / "csrc" / "emu"
CXX = os.environ.get("CXX", "g++")
VARIANT = os.environ.get("FN_EMU_VARIANT", "release")
IN_ASAN = VARIANT == "asan"

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None,
                                reason=f"no host C++ compiler ({CXX!r} not found): the CUDA "
                                       "emulator (csrc/emu) compiles the kernels with it")

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
DT = {F32: 0, F16: 1, BF16: 2, F64: 3}
DTYPE_IDS = {F32: "fp32", F16: "fp16", BF16: "bf16"}
# The accuracy rule of tests/_util.py (copied, not imported: this file tests csrc/ and must not
# depend on the Python package, which is edited independently).
ATOL = {F32: 1e-5, F16: 1e-3, BF16: 8e-3, F64: 1e-6}


def _err(a, ref):
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def assert_accurate(ours, ref64, theirs, dtype, what):
    """ours, theirs in `dtype` (or fp32 statistics); ref64 the float64 reference."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(ours).any(), f"{what}: NaN in result"
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    bound = 2 * _err(theirs, ref64) + ATOL[dtype] * scale
    e = _err(ours, ref64)
    assert e <= bound, f"{what}: max error {e:.3g} > bound {bound:.3g} (torch's own: {_err(theirs, ref64):.3g})"


def _seed(*key):
    return zlib.crc32(repr(key).encode()) % 100003


def randn(*shape, dtype=F32, seed=0, offset=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


# ------------------------------------------------------------------------------ the library
def _load_build_module():
    spec = importlib.util.spec_from_file_location("fn_emu_build", EMU_DIR / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class EmuError(RuntimeError):
    KINDS = {1: "invalid argument", 2: "launch failure", 3: "unreported kernel fault",
             4: "unchecked launch", 5: "exception"}

    def __init__(self, code, message):
        self.code, self.message = code, message
        super().__init__(f"[{self.KINDS.get(code, code)}] {message}")


V, LL, I, FL = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "fn_layer_norm_fwd": [V, LL, V, LL, V, V, V, V, V, V, LL, LL, FL, I, I, I, LL],
    "fn_layer_norm_bwd": [V, V, V, LL, V, V, V, V, V, V, V, LL, LL, I, I, I, LL],
    "fn_group_norm_fwd": [V, V, V, V, V, V, V, LL, LL, LL, LL, FL, I, I, I, I, LL],
    "fn_group_norm_bwd": [V, V, V, V, V, V, V, V, V, V, LL, LL, LL, LL, I, I, I, I, LL],
    "fn_batch_norm_fwd": [V, V, V, V, V, V, V, V, V, I, I, V, FL, I, V, LL, LL, LL, FL, I, I, I, I, LL],
    "fn_instance_norm_running": [V, V, V, V, I, I, LL, LL, FL, FL, FL, LL],
    "fn_batch_norm_bwd": [V, V, V, V, V, V, V, V, V, LL, LL, LL, I, I, I, I, LL],
    "fn_layer_norm_2d_fwd": [V, V, V, V, V, V, LL, LL, LL, FL, I, I, I, LL],
    "fn_layer_norm_2d_bwd": [V, V, V, V, V, V, V, V, V, LL, LL, LL, I, I, I, LL],
    "fn_emu_selftest": [ctypes.c_char_p, V, LL, LL],
}
WS = {"fn_layer_norm_bwd_workspace_bytes": [LL, LL], "fn_layer_norm_2d_bwd_workspace_bytes": [LL, LL, LL, I],
      "fn_group_norm_fwd_workspace_bytes": [LL, LL, LL, I],
      "fn_group_norm_bwd_workspace_bytes": [LL, LL, LL, LL, I], "fn_batch_norm_fwd_workspace_bytes": [LL, LL, LL, I],
      "fn_batch_norm_bwd_workspace_bytes": [LL, LL, LL, I]}


class Buf:
    """A device buffer from fn_emu_alloc: guard bytes and PROT_NONE pages around it."""

    def __init__(self, emu, name, nbytes, offset=0):
        self.emu, self.name, self.nbytes = emu, name, int(nbytes)
        self.ptr = emu.lib.fn_emu_alloc(self.nbytes, offset, name.encode())
        assert self.ptr, f"fn_emu_alloc({nbytes}) failed"
        self.readonly = False

    def bytes(self):
        if self.nbytes == 0:
            return np.zeros(0, np.uint8)
        return np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def write(self, t):
        b = t.reshape(-1).contiguous().view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        assert b.size == self.nbytes, (self.name, b.size, self.nbytes)
        self.bytes()[:] = b

    def read(self, dtype, shape):
        raw = torch.from_numpy(self.bytes().copy())
        return raw.view(dtype).reshape(shape) if raw.numel() else torch.empty(shape, dtype=dtype)

    def poison(self):
        self.bytes()[:] = 0xFF

    def protect(self, readonly):
        self.readonly = readonly
        assert self.emu.lib.fn_emu_protect(self.ptr, int(readonly)) == 0


class Emu:
    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(str(path))
        for name, args in {**SIGNATURES, **WS}.items():
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_ulonglong if name in WS else ctypes.c_int
        lib.fn_emu_alloc.restype = ctypes.c_void_p
        lib.fn_emu_alloc.argtypes = [ctypes.c_ulonglong, ctypes.c_uint, ctypes.c_char_p]
        lib.fn_emu_free.argtypes = [V]
        lib.fn_emu_protect.argtypes = [V, I]
        lib.fn_emu_check_guards.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
        lib.fn_emu_set_config.argtypes = [ctypes.c_char_p, ctypes.c_double]
        lib.fn_emu_stat.argtypes = [ctypes.c_char_p]
        lib.fn_emu_stat.restype = ctypes.c_longlong
        for name in ("fn_emu_call_message", "fn_emu_error_message", "fn_emu_launch_log"):
            getattr(lib, name).restype = ctypes.c_char_p
        lib.fn_emu_device_attribute.argtypes = [I]
        self.launches = []  # every kernel launched by this session: (name, grid, block, smem)

    def config(self, **kv):
        for k, v in kv.items():
            if k == "schedule":  # thread/block order, and round robin or greedy warps
                order, _, greedy = v.partition("-")
                self.config(greedy_warps=int(greedy == "greedy"))
                v = {"forward": 0, "reverse": 1, "shuffled": 2}[order]
            assert self.lib.fn_emu_set_config(k.encode(), float(v)) == 0, k

    def reset_config(self):
        self.config(schedule="forward", seed=1, resident_blocks=1, approx_math=1, poison_shared=1,
                    allow_exit_before_barrier=0, strict_call_sites=1, strict_warp_sites=0, require_launch_check=1,
                    dry_run=0, timeout_s=120)

    def ws(self, name, *args):
        return int(getattr(self.lib, name)(*args))

    def call(self, name, *args):
        self.lib.fn_emu_reset()
        rc = getattr(self.lib, name)(*args)
        log = self.lib.fn_emu_launch_log().decode()
        self.last_log = [line.split("|") for line in log.splitlines() if line]
        self.launches += self.last_log
        if rc != 0:
            raise EmuError(rc, self.lib.fn_emu_call_message().decode())

    def guard_report(self):
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.fn_emu_check_guards(buf, len(buf))
        return n, buf.value.decode()


@pytest.fixture(scope="module")
def emu():
    # FN_EMU_LIB: a library built elsewhere (e.g. from a modified copy of csrc/, to see what the
    # suite catches); otherwise build (or reuse) the one for this checkout
    path = os.environ.get("FN_EMU_LIB") or _load_build_module().build(VARIANT)
    return Emu(path)


@pytest.fixture
def dev(emu):
    """Device buffers of one test; every buffer is freed (and its guards checked) afterwards."""
    emu.reset_config()
    d = Dev(emu)
    yield d
    d.free()
    emu.reset_config()


class Dev:
    def __init__(self, emu):
        self.emu, self.bufs = emu, []

    def _buf(self, name, nbytes, offset=0):
        b = Buf(self.emu, name, nbytes, offset)
        self.bufs.append(b)
        return b

    def input(self, name, t, offset=0):
        """t: a tensor whose memory order is the device layout (None: an absent input)."""
        if t is None:
            return None
        b = self._buf(name, t.numel() * t.element_size(), offset)
        b.write(t)
        b.protect(True)
        b.dtype, b.shape = t.dtype, tuple(t.shape)
        return b

    def output(self, name, dtype, shape, offset=0):
        shape = tuple(shape)
        b = self._buf(name, int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size(), offset)
        b.dtype, b.shape, b.kind = dtype, shape, "out"
        return b

    def workspace(self, nbytes):
        b = self._buf("workspace", nbytes)
        b.dtype, b.shape, b.kind = torch.uint8, (int(nbytes),), "ws"
        return b

    def free(self):
        n, report = self.emu.guard_report()
        for b in self.bufs:
            self.emu.lib.fn_emu_free(b.ptr)
        self.bufs = []
        assert n == 0, "guard bytes changed (out-of-bounds write):\n" + report


def ptr(b):
    return b.ptr if b is not None else None


def unwritten(b, raw):
    """Indices of elements still holding the 0xFF poison."""
    size = torch.empty(0, dtype=b.dtype).element_size()
    if raw.size == 0:
        return np.zeros(0, np.int64)
    words = raw.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])
    return np.nonzero(words == np.iinfo(words.dtype).max)[0]


SCHEDULES = ("forward", "forward-greedy", "reverse-greedy")


def run_checked(emu, outs, workspaces, name, *args, expect_written=True, inouts=()):
    """Launch under each schedule on poisoned outputs; returns {buffer name: tensor}.  Forward
    round robin keeps threads in step; greedy warps let the first (forward) or the last (reverse)
    warp run ahead as far as barriers allow, blocks in that order too.  inouts: (buffer, initial
    tensor) updated in place (running statistics): reset before each run, compared like outputs."""
    snaps = []
    outs = list(outs) + [b for b, _ in inouts]
    for schedule in SCHEDULES:
        for b in list(outs) + list(workspaces):
            b.poison()
        for b, init in inouts:
            b.write(init)
        emu.config(schedule=schedule)
        emu.call(name, *args)
        n, report = emu.guard_report()
        assert n == 0, f"{name} ({schedule} order): out-of-bounds write:\n{report}"
        snaps.append({b.name: b.bytes().copy() for b in outs})
    emu.config(schedule="forward")
    res = {}
    for b in outs:
        a = snaps[0][b.name]
        for k in range(1, len(SCHEDULES)):
            r = snaps[k][b.name]
            if not np.array_equal(a, r):
                diff = np.nonzero(a != r)[0]
                raise AssertionError(f"{name}: '{b.name}' differs between schedules {SCHEDULES[0]} and "
                                     f"{SCHEDULES[k]} (order-dependent or racy kernel) at bytes {diff[:8].tolist()}")
        if expect_written:
            missing = unwritten(b, a)
            assert missing.size == 0, (f"{name}: {missing.size} elements of '{b.name}' never written "
                                       f"(first {missing[:8].tolist()}; or computed from never-written "
                                       "memory: NaN payloads propagate the 0xFF poison)")
        res[b.name] = (torch.from_numpy(a).view(b.dtype).reshape(b.shape) if a.size
                       else torch.empty(b.shape, dtype=b.dtype))
    return res


# ================================================================ LayerNorm / RMSNorm
LN_N = [1, 37, 256, 1000, 1032, 4096, 8199, 16384, 20000]


def ln_case(emu, dev, *, M, N, dtype, wdtype, rms, weight, bias, residual, dxsum, x_pad=0, x_offset=0,
            offset=0.0, nan_row=None, bwd=True, kernel_eps=None):
    """One LayerNorm/RMSNorm configuration, forward and backward, checked against float64.
    kernel_eps: give the kernel another eps than the reference (a negative control)."""
    eps = 1e-5
    seed = _seed(M, N, dtype, wdtype, rms, weight, bias, residual, dxsum, x_pad, offset)
    stride = N + x_pad
    xfull = randn(M, stride, dtype=dtype, seed=seed, offset=offset)
    xfull[:, N:] = float("nan")  # row padding: a read past N would show as NaN
    if nan_row is not None:
        xfull[nan_row, N // 2] = float("nan")
    x = xfull[:, :N]
    r = randn(M, N, dtype=dtype, seed=seed + 1) if residual else None
    w = (randn(N, seed=seed + 2) * 0.5 + 1).to(wdtype) if weight else None
    b = randn(N, seed=seed + 3).to(wdtype) if bias else None
    # the kernel reads x with its row stride: the device buffer holds the padded rows
    bx = dev.input("x", xfull if M > 1 else x.contiguous(), offset=x_offset)
    x_row_stride = stride if M > 1 else N
    br, bw, bb = dev.input("residual", r), dev.input("weight", w), dev.input("bias", b)
    out = dev.output("out", dtype, (M, N))
    xsum = dev.output("xsum", dtype, (M, N)) if residual else None
    mean = dev.output("mean", F32, (M,)) if not rms else None
    rstd = dev.output("rstd", F32, (M,))
    outs = [o for o in (out, xsum, mean, rstd) if o is not None]
    res = run_checked(emu, outs, [], "fn_layer_norm_fwd", bx.ptr, x_row_stride, ptr(br), N, ptr(bw), ptr(bb),
                      out.ptr, ptr(xsum), ptr(mean), rstd.ptr, M, N, kernel_eps or eps, int(rms), DT[dtype],
                      DT[wdtype], 0)
    tag = f"LN M={M} N={N} {DTYPE_IDS[dtype]} w={DTYPE_IDS[wdtype]} rms={rms}"

    # The normalized input: x + residual rounded to x's dtype (what xsum holds).
    xin = (x.float() + r.float()).to(dtype) if residual else x
    if residual:
        assert torch.equal(res["xsum"].view(torch.int16 if dtype != F32 else torch.int32),
                           xin.contiguous().view(torch.int16 if dtype != F32 else torch.int32)), tag + " xsum"
    x64 = xin.double()
    w64 = w.double() if w is not None else None
    b64 = b.double() if b is not None else None
    wd = w.to(dtype) if w is not None else None
    bd = b.to(dtype) if b is not None else None
    if nan_row is not None:  # NaN in -> NaN out for that row only
        o = res["out"].float()
        assert torch.isnan(o[nan_row]).all(), tag + ": NaN did not propagate to its row"
        others = [i for i in range(M) if i != nan_row]
        assert not torch.isnan(o[others]).any(), tag + ": NaN leaked into other rows"
        return
    if rms:
        ref = F.rms_norm(x64, (N,), w64, eps)
        theirs = F.rms_norm(xin, (N,), wd, eps)
        rstd64 = torch.rsqrt(x64.pow(2).mean(-1) + eps)
        rstd_t = torch.rsqrt(xin.float().pow(2).mean(-1) + eps)
    else:
        ref = F.layer_norm(x64, (N,), w64, b64, eps)
        theirs = F.layer_norm(xin, (N,), wd, bd, eps)
        _, mean_t, rstd_t = torch.ops.aten.native_layer_norm(xin.float(), [N], None, None, eps)
        mean64 = x64.mean(-1)
        rstd64 = torch.rsqrt(x64.var(-1, unbiased=False) + eps)
        assert_accurate(res["mean"], mean64, mean_t.reshape(M), F32, tag + " mean")
    assert_accurate(res["rstd"], rstd64, rstd_t.reshape(M), F32, tag + " rstd")
    assert_accurate(res["out"], ref, theirs, dtype, tag + " out")
    if not bwd:
        return

    # ---- backward, with our forward statistics (as the autograd op passes them)
    dy = randn(M, N, dtype=dtype, seed=seed + 4)
    dxs = randn(M, N, dtype=dtype, seed=seed + 5) if dxsum else None
    bdy, bdxs = dev.input("dy", dy), dev.input("dxsum", dxs)
    # backward x: xsum when there was a residual (contiguous), else x with its stride
    if residual:
        bxin, xin_stride = dev.input("xin", xin.contiguous()), N
    else:
        bxin, xin_stride = bx, x_row_stride
    bmean = dev.input("mean_in", res["mean"]) if not rms else None
    brstd = dev.input("rstd_in", res["rstd"])
    dx = dev.output("dx", dtype, (M, N))
    dw = dev.output("dweight", wdtype, (N,)) if weight else None
    db = dev.output("dbias", wdtype, (N,)) if bias else None
    want = weight or bias
    ws = dev.workspace(emu.ws("fn_layer_norm_bwd_workspace_bytes", M, N)) if want else None
    outs = [o for o in (dx, dw, db) if o is not None]
    g = run_checked(emu, outs, [ws] if ws else [], "fn_layer_norm_bwd", bdy.ptr, ptr(bdxs), bxin.ptr, xin_stride,
                    ptr(bw), ptr(bmean), brstd.ptr, dx.ptr, ptr(dw), ptr(db), ptr(ws), M, N, int(rms),
                    DT[dtype], DT[wdtype], 0)

    def grads(xx, ww, bb, gy):
        xx = xx.detach().requires_grad_()
        leaves = [xx] + [p.detach().requires_grad_() for p in (ww, bb) if p is not None]
        ww = leaves[1] if ww is not None else None
        bb = leaves[-1] if bb is not None else None
        y = F.rms_norm(xx, (N,), ww, eps) if rms else F.layer_norm(xx, (N,), ww, bb, eps)
        return torch.autograd.grad(y, leaves, gy)

    ref_g = grads(x64, w64, b64, dy.double())
    th_g = grads(xin, wd, bd, dy)
    ref_dx = ref_g[0] + (dxs.double() if dxsum else 0)
    th_dx = (th_g[0].float() + dxs.float()).to(dtype) if dxsum else th_g[0]
    assert_accurate(g["dx"], ref_dx, th_dx, dtype, tag + " dx")
    k = 1
    for name, on in (("dweight", weight), ("dbias", bias)):
        if on:
            assert g[name].dtype == wdtype
            assert_accurate(g[name].to(dtype), ref_g[k], th_g[k], dtype, f"{tag} {name}")
            k += 1


def _ln_variants(dtype):
    mixed = F32 if dtype == F16 else dtype  # fp16 x with fp32 weights (the autocast norm)
    mixed_b = F32 if dtype == BF16 else dtype
    return [
        # LN, weight + bias, residual in, xsum out, dxsum in the backward
        dict(rms=False, weight=True, bias=True, residual=True, dxsum=True, wdtype=mixed),
        # RMS, weight, rows with a stride that is not a multiple of the vector width (scalar path)
        dict(rms=True, weight=True, bias=False, residual=False, dxsum=False, wdtype=mixed_b, x_pad=3),
        # LN without affine parameters (no weight-gradient workspace)
        dict(rms=False, weight=False, bias=False, residual=False, dxsum=False, wdtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("N", LN_N, ids=lambda n: f"N{n}")
def test_layer_norm(emu, dev, N, dtype):
    """N across the row shapes (a warp per row .. 16 warps, and the looped kernels past them)."""
    M = 37 if N == 1 else (7 if N <= 1032 else 3)
    for v in _ln_variants(dtype):
        ln_case(emu, dev, M=M, N=N, dtype=dtype, **v)


@pytest.mark.parametrize("M,N,dtype", [(1, 1000, BF16), (2201, 37, F32), (531, 1032, BF16)],
                         ids=["M1", "gridstride-small-N", "gridstride-large-N"])
def test_layer_norm_rows(emu, dev, M, N, dtype):
    """M = 1; and more row tiles than the persistent grids (132 SMs x resident CTAs, the backward
    at most 4 a SM): CTAs walk several tiles, the backward prefetching the next one, and
    accumulate the weight-gradient partials of several rows."""
    ln_case(emu, dev, M=M, N=N, dtype=dtype, wdtype=dtype, rms=False, weight=True, bias=True,
            residual=False, dxsum=False)


def test_layer_norm_misaligned(emu, dev):
    """x 2 bytes off a 16-byte boundary: the scalar path, where N alone would vectorize."""
    first = len(emu.launches)
    ln_case(emu, dev, M=5, N=1024, dtype=F16, wdtype=F16, rms=False, weight=True, bias=True,
            residual=False, dxsum=False, x_offset=2)
    names = [e[0] for e in emu.launches[first:]]
    assert any("row::fwd_kernel<fusednorm::ln::FwdOp<__half, __half>, 1," in n for n in names), names
    assert any("layer_norm_bwd_kernel<__half, __half, 1," in n for n in names), names


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("N", [1000, 4096])
def test_layer_norm_offset_data(emu, dev, rms, N):
    """mean 1e4, std 1 in fp32: E[x^2] - E[x]^2 would lose everything.  The rule holds for every
    output and statistic.  (rstd is at fp32's limit here: ours and torch's are both ~1e-4 off
    relative and which is closer varies row by row, so a handful of rows can land either side of
    2x; 17 rows compare the typical error.)"""
    ln_case(emu, dev, M=17, N=N, dtype=F32, wdtype=F32, rms=rms, weight=True, bias=not rms,
            residual=False, dxsum=False, offset=1e4)


def _two_pass_model(row, warps, vec, ldgs, eps=1e-5):
    """float32 model of row::fwd_kernel's statistics for one row spread over `warps` warps:
    thread r sums its slots it = 0..ldgs-1 (columns (it * 32 * warps + r) * vec ..), elements in
    order; a butterfly per warp; the warps' sums added in warp order; mean = sum * (1/N); then
    the same for (x - mean)^2; rstd = rsqrtf (exact mode)."""
    f = np.float32
    n = row.size
    rt = 32 * warps

    def row_sum(g):
        parts = []
        for r in range(rt):
            s = f(0)
            for it in range(ldgs):
                col = (it * rt + r) * vec
                if col < n:
                    for i in range(vec):
                        s = f(s + g(row[col + i]))
            parts.append(s)
        total = f(0)
        for w in range(warps):
            v = parts[32 * w:32 * w + 32]
            for m in (16, 8, 4, 2, 1):
                v = [f(v[lane] + v[lane ^ m]) for lane in range(32)]
            total = f(total + v[0])
        return total

    inv_n = f(1.0 / n)
    mean = f(row_sum(lambda x: x) * inv_n)
    q = row_sum(lambda x: f(f(x - mean) * f(x - mean)))
    return mean, f(1 / np.sqrt(np.float64(f(f(q * inv_n) + f(eps)))))


def test_layer_norm_stats_match_model(emu, dev):
    """The emulator runs the kernel's arithmetic exactly: mean and rstd equal an independent
    float32 model of the two-pass algorithm bit for bit (exact math: approx_math=0)."""
    emu.config(approx_math=0)
    M, N = 5, 1000
    x = randn(M, N, seed=11, offset=1e4)
    bx, out = dev.input("x", x), dev.output("out", F32, (M, N))
    mean, rstd = dev.output("mean", F32, (M,)), dev.output("rstd", F32, (M,))
    emu.call("fn_layer_norm_fwd", bx.ptr, N, None, 0, None, None, out.ptr, None, mean.ptr, rstd.ptr, M, N, 1e-5,
             0, 0, 0, 0)
    name, grid, block, _ = emu.last_log[0]
    assert "fwd_kernel<fusednorm::ln::FwdOp<float, float>, 4, fusednorm::row::Shape<1, 4, 4, 1> >" in name, name
    assert (grid, block) == ("5,1,1", "128,1,1")
    got_m, got_r = mean.read(F32, (M,)).numpy(), rstd.read(F32, (M,)).numpy()
    for r in range(M):
        m, s = _two_pass_model(x[r].numpy(), 4, 4, 4)
        assert got_m[r] == m and got_r[r] == s, (r, got_m[r], m, got_r[r], s)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_layer_norm_nan(emu, dev, dtype):
    ln_case(emu, dev, M=4, N=256, dtype=dtype, wdtype=dtype, rms=False, weight=True, bias=True,
            residual=False, dxsum=False, nan_row=2, bwd=False)
    ln_case(emu, dev, M=3, N=5000, dtype=dtype, wdtype=dtype, rms=True, weight=True, bias=False,
            residual=False, dxsum=False, nan_row=0, bwd=False)


# (x dtype, weight dtype) pairs the launcher instantiates, and the vector width of each x dtype
LN_PAIRS = [(F32, F32), (F16, F16), (F16, F32), (BF16, BF16), (BF16, F32)]
VEC = {F32: 4, F16: 8, BF16: 8}
CTYPE = {F32: "float", F16: "__half", BF16: "__nv_bfloat16"}
# Row lengths in vectors that pick every row shape (row.cuh): forward shapes hold 128 / 512 /
# 1024 / 2048 / 4096 vectors, then the looped kernel; backward 128 / 512 / 1024 / 2048, then
# looped.  The scalar path (VEC = 1) has fewer shapes: 128 / 512 / 4096 and 128 / 2048.
ROW_NVEC = {True: [100, 400, 900, 1800, 3000, 5000], False: [100, 400, 3000, 5000]}


@pytest.mark.parametrize("vector", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("dtype,wdtype", LN_PAIRS, ids=[f"{DTYPE_IDS[a]}-w{DTYPE_IDS[b]}" for a, b in LN_PAIRS])
def test_layer_norm_paths(emu, dev, dtype, wdtype, vector):
    """Every forward and backward row shape the launchers can choose, for each dtype pair and
    vector width: the row lengths give as many distinct kernels as there are shapes, and the
    launch log proves they were the ones of this pair and width."""
    v = VEC[dtype] if vector else 1
    fwd, bwd = set(), set()
    for k, nvec in enumerate(ROW_NVEC[vector]):
        first = len(emu.launches)
        # scalar: a row stride that is not a multiple of the vector width
        ln_case(emu, dev, M=2 if nvec > 1000 else 3, N=nvec * v, dtype=dtype, wdtype=wdtype, rms=k % 2 == 1,
                weight=True, bias=k % 2 == 0, residual=k % 3 == 0 and vector, dxsum=k % 3 == 1,
                x_pad=0 if vector else 1)
        names = [e[0] for e in emu.launches[first:]]
        op = f"<fusednorm::ln::FwdOp<{CTYPE[dtype]}, {CTYPE[wdtype]}>, {v},"
        fwd |= {n for n in names if f"row::fwd_kernel{op}" in n or f"row::fwd_looped_kernel{op}" in n}
        bwd |= {n for n in names if f"layer_norm_bwd_kernel<{CTYPE[dtype]}, {CTYPE[wdtype]}, {v}," in n
                or f"layer_norm_bwd_looped_kernel<{CTYPE[dtype]}, {CTYPE[wdtype]}, {v}," in n}
        assert any(f"colsum_kernel<{CTYPE[wdtype]}>" in n for n in names), names
    assert len(fwd) == len(ROW_NVEC[vector]), sorted(fwd)
    assert len(bwd) == len(ROW_NVEC[vector]) - 1, sorted(bwd)  # the last two lengths share the looped backward


def test_accuracy_rule_catches_a_wrong_result(emu, dev):
    """Negative control: eps 1e-3 instead of 1e-5 in the kernel (0.05% off in rstd for unit
    variance) must fail the comparison."""
    with pytest.raises(AssertionError, match="rstd: max error"):
        ln_case(emu, dev, M=7, N=256, dtype=F32, wdtype=F32, rms=False, weight=True, bias=True,
                residual=False, dxsum=False, kernel_eps=1e-3)


def test_layer_norm_degenerate(emu, dev):
    """M = 0 or N = 0 launch nothing and touch nothing; invalid combinations are refused."""
    x = dev.input("x", randn(4, 8))
    out, rstd, mean = dev.output("out", F32, (4, 8)), dev.output("rstd", F32, (4,)), dev.output("mean", F32, (4,))
    for M, N in ((0, 8), (4, 0), (0, 0)):
        for b in (out, rstd, mean):
            b.poison()
        emu.call("fn_layer_norm_fwd", x.ptr, 8, None, 0, None, None, out.ptr, None, mean.ptr, rstd.ptr, M, N,
                 1e-5, 0, 0, 0, 0)
        assert emu.last_log == [], f"M={M} N={N} launched {emu.last_log}"
        assert unwritten(out, out.bytes()).size == 32
        emu.call("fn_layer_norm_bwd", x.ptr, None, x.ptr, 8, None, mean.ptr, rstd.ptr, out.ptr, None, None, None,
                 M, N, 0, 0, 0, 0)
        assert emu.last_log == []
        assert emu.ws("fn_layer_norm_bwd_workspace_bytes", M, N) == 0
    w = dev.input("w", torch.ones(8))
    with pytest.raises(EmuError, match="workspace is null") as e:  # dbias wanted, no workspace
        emu.call("fn_layer_norm_bwd", x.ptr, None, x.ptr, 8, w.ptr, mean.ptr, rstd.ptr, out.ptr, out.ptr,
                 out.ptr, None, 4, 8, 0, 0, 0, 0)
    assert e.value.code == 1
    with pytest.raises(EmuError, match="weight dtype float16 must be x's dtype") as e:  # bf16 x, fp16 w
        emu.call("fn_layer_norm_fwd", x.ptr, 8, None, 0, w.ptr, None, out.ptr, None, mean.ptr, rstd.ptr, 4, 4,
                 1e-5, 0, DT[BF16], DT[F16], 0)
    assert e.value.code == 1
    with pytest.raises(EmuError, match="unsupported dtype"):
        emu.call("fn_layer_norm_fwd", x.ptr, 8, None, 0, None, None, out.ptr, None, mean.ptr, rstd.ptr, 4, 8,
                 1e-5, 0, 7, 7, 0)


def test_layer_norm_bwd_null_workspace_dweight_only(emu, dev):
    """RMSNorm's backward wants dweight and no dbias: a null workspace is refused (the check once
    looked at the partial pointers derived from it, and never fired for dweight alone)."""
    x = dev.input("x", randn(4, 8))
    w = dev.input("w", torch.ones(8))
    rstd = dev.input("rstd", torch.ones(4))
    dx, dw = dev.output("dx", F32, (4, 8)), dev.output("dw", F32, (8,))
    for b in (dx, dw):
        b.poison()
    with pytest.raises(EmuError, match="workspace is null") as e:
        emu.call("fn_layer_norm_bwd", x.ptr, None, x.ptr, 8, w.ptr, None, rstd.ptr, dx.ptr, dw.ptr, None, None,
                 4, 8, 1, 0, 0, 0)
    assert e.value.code == 1 and emu.last_log == []
    assert unwritten(dw, dw.bytes()).size == 8


# ======================================================================== layer_norm_2d
def ln2d_case(emu, dev, shape, dtype, wdtype, cl, weight=True, bias=True, offset=0.0, nan_at=None):
    """LayerNorm over the channels of (N, C, *spatial) at each position: forward (output and the
    (N, *spatial) statistics) and backward against float64, in the layout of x."""
    eps = 1e-6
    N, C = shape[:2]
    S = int(np.prod(shape[2:]))
    seed = _seed("ln2d", shape, dtype, wdtype, cl, weight, bias, offset)
    x = randn(*shape, dtype=dtype, seed=seed, offset=offset)
    if nan_at is not None:
        x[nan_at] = float("nan")
    w = (randn(C, seed=seed + 2) * 0.5 + 1).to(wdtype) if weight else None
    b = randn(C, seed=seed + 3).to(wdtype) if bias else None
    bx, bw, bb = dev.input("x", to_mem(x, cl)), dev.input("weight", w), dev.input("bias", b)
    out = dev.output("out", dtype, (x.numel(),))
    mean, rstd = dev.output("mean", F32, (N * S,)), dev.output("rstd", F32, (N * S,))
    res = run_checked(emu, [out, mean, rstd], [], "fn_layer_norm_2d_fwd", bx.ptr, ptr(bw), ptr(bb), out.ptr,
                      mean.ptr, rstd.ptr, N, C, S, eps, int(cl), DT[dtype], DT[wdtype], 0)
    tag = f"LN2d {shape} {DTYPE_IDS[dtype]} w={DTYPE_IDS[wdtype]} cl={cl}"
    y = from_mem(res["out"], shape, cl)
    perm = (0,) + tuple(range(2, len(shape))) + (1,)
    inv = [perm.index(i) for i in range(len(shape))]

    def fwd(xx, ww, bb):
        return F.layer_norm(xx.permute(*perm), (C,), ww, bb, eps).permute(*inv)

    if nan_at is not None:  # NaN in -> NaN at that position only
        yy = y.float().clone()
        pos = (nan_at[0], slice(None)) + tuple(nan_at[2:])
        assert torch.isnan(yy[pos]).all(), tag + ": NaN did not reach its position"
        yy[pos] = 0
        assert not torch.isnan(yy).any(), tag + ": NaN leaked to other positions"
        return
    x64 = x.double()
    w64 = w.double() if weight else None
    b64 = b.double() if bias else None
    wd = w.to(dtype) if weight else None
    bd = b.to(dtype) if bias else None
    assert_accurate(y, fwd(x64, w64, b64), fwd(x, wd, bd), dtype, tag + " out")
    xf = x.float()
    assert_accurate(res["mean"].reshape(N, S), x64.mean(1).reshape(N, S), xf.mean(1).reshape(N, S), F32,
                    tag + " mean")
    assert_accurate(res["rstd"].reshape(N, S), torch.rsqrt(x64.var(1, unbiased=False) + eps).reshape(N, S),
                    torch.rsqrt(xf.var(1, unbiased=False) + eps).reshape(N, S), F32, tag + " rstd")

    dy = randn(*shape, dtype=dtype, seed=seed + 4)
    bdy = dev.input("dy", to_mem(dy, cl))
    bm, br = dev.input("mean_in", res["mean"]), dev.input("rstd_in", res["rstd"])
    dx = dev.output("dx", dtype, (x.numel(),))
    dw = dev.output("dweight", wdtype, (C,)) if weight else None
    db = dev.output("dbias", wdtype, (C,)) if bias else None
    want = weight or bias
    ws = dev.workspace(emu.ws("fn_layer_norm_2d_bwd_workspace_bytes", N, C, S, int(cl))) if want else None
    outs = [o for o in (dx, dw, db) if o is not None]
    g = run_checked(emu, outs, [ws] if ws else [], "fn_layer_norm_2d_bwd", bdy.ptr, bx.ptr, ptr(bw), bm.ptr,
                    br.ptr, dx.ptr, ptr(dw), ptr(db), ptr(ws), N, C, S, int(cl), DT[dtype], DT[wdtype], 0)

    def grads(xx, ww, bb, gy):
        leaves = [t.detach().requires_grad_() for t in (xx, ww, bb) if t is not None]
        it = iter(leaves[1:])
        args = (leaves[0], next(it) if ww is not None else None, next(it) if bb is not None else None)
        return torch.autograd.grad(fwd(*args), leaves, gy)

    rg, tg = grads(x64, w64, b64, dy.double()), grads(x, wd, bd, dy)
    assert_accurate(from_mem(g["dx"], shape, cl), rg[0], tg[0], dtype, tag + " dx")
    k = 1
    for name, on in (("dweight", weight), ("dbias", bias)):
        if on:
            assert g[name].dtype == wdtype
            assert_accurate(g[name].to(dtype), rg[k], tg[k], dtype, f"{tag} {name}")
            k += 1


LN2D_CASES = [
    # shape, dtype, wdtype, channels_last
    ((2, 96, 14, 14), BF16, F32, False),   # ConvNeXt-like NCHW: S = 196, scalar (196 % 8)
    ((2, 96, 14, 14), BF16, F32, True),    # ... channels_last: LayerNorm rows of 96
    ((3, 40, 16, 20), F32, F32, False),    # vector NCHW, 2 tiles of 128 positions a sample
    ((2, 768, 8, 8), F16, F16, False),     # wide C: tiles of 8 lanes (64 KB), 8-row tile
    ((2, 24, 5, 6, 7), F16, F32, False),   # 5-D
    ((2, 24, 5, 6, 8), BF16, BF16, True),  # 5-D channels_last
    ((1, 3, 33, 1), F32, F32, False),      # C = 3, odd positions
]


@pytest.mark.parametrize("shape,dtype,wdtype,cl", LN2D_CASES,
                         ids=[f"{c[0]}-{DTYPE_IDS[c[1]]}-w{DTYPE_IDS[c[2]]}-{'cl' if c[3] else 'nchw'}"
                              for c in LN2D_CASES])
def test_layer_norm_2d(emu, dev, shape, dtype, wdtype, cl):
    ln2d_case(emu, dev, shape, dtype, wdtype, cl)


def test_layer_norm_2d_options(emu, dev):
    """Without affine parameters (no weight-gradient workspace), weight only, offset data
    (mean 1e4: the shifted sums keep the digits), NaN at one position."""
    for cl in (False, True):
        ln2d_case(emu, dev, (2, 16, 6, 8), F32, F32, cl, weight=False, bias=False)
        ln2d_case(emu, dev, (2, 16, 6, 8), BF16, BF16, cl, bias=False)
        ln2d_case(emu, dev, (2, 32, 9, 8), F32, F32, cl, offset=1e4)
        ln2d_case(emu, dev, (2, 8, 4, 8), BF16, BF16, cl, nan_at=(1, 3, 2, 5))


@pytest.mark.parametrize("vector", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("dtype,wdtype", LN_PAIRS, ids=[f"{DTYPE_IDS[a]}-w{DTYPE_IDS[b]}" for a, b in LN_PAIRS])
def test_layer_norm_2d_paths(emu, dev, dtype, wdtype, vector):
    """Every NCHW kernel instantiation (dtype pair x vector width), forward and backward with
    the column sum of the weight gradients."""
    S = 8 * VEC[dtype] if vector else 7 * 5
    first = len(emu.launches)
    ln2d_case(emu, dev, (2, 12, S), dtype, wdtype, False)
    names = " ".join(e[0] for e in emu.launches[first:])
    v = VEC[dtype] if vector else 1
    for kind in ("fwd", "bwd"):
        want = f"ln2d::{kind}_kernel<{CTYPE[dtype]}, {CTYPE[wdtype]}, {v}>"
        assert want in names, f"expected {want}: {names}"
    assert f"colsum_kernel<{CTYPE[wdtype]}>" in names


# ============================================================================ GroupNorm
def _cl_order(dim):
    return (0,) + tuple(range(2, dim)) + (1,)


def to_mem(t, cl):
    """The tensor's device memory order: NCHW as is, channels_last with C innermost."""
    return t.permute(*_cl_order(t.dim())).contiguous() if cl else t.contiguous()


def from_mem(flat, shape, cl):
    if not cl:
        return flat.reshape(shape)
    perm = _cl_order(len(shape))
    t = flat.reshape([shape[p] for p in perm])
    inv = [perm.index(i) for i in range(len(shape))]
    return t.permute(*inv)


def gn_case(emu, dev, shape, G, dtype, wdtype, cl, silu, affine=True, offset=0.0, nan_at=None):
    eps = 1e-5
    N, C = shape[:2]
    S = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    seed = _seed(shape, G, dtype, wdtype, cl, silu, affine, offset)
    x = randn(*shape, dtype=dtype, seed=seed, offset=offset)
    if nan_at is not None:
        x[nan_at] = float("nan")
    w = (randn(C, seed=seed + 2) * 0.5 + 1).to(wdtype) if affine else None
    b = randn(C, seed=seed + 3).to(wdtype) if affine else None
    bx, bw, bb = dev.input("x", to_mem(x, cl)), dev.input("weight", w), dev.input("bias", b)
    out = dev.output("out", dtype, (x.numel(),))
    mean, rstd = dev.output("mean", F32, (N, G)), dev.output("rstd", F32, (N, G))
    ws = dev.workspace(emu.ws("fn_group_norm_fwd_workspace_bytes", N, C, S, int(cl)))
    res = run_checked(emu, [out, mean, rstd], [ws], "fn_group_norm_fwd", bx.ptr, ptr(bw), ptr(bb), out.ptr,
                      mean.ptr, rstd.ptr, ws.ptr, N, C, S, G, eps, int(silu), int(cl), DT[dtype], DT[wdtype], 0)
    tag = f"GN {shape} G={G} {DTYPE_IDS[dtype]} w={DTYPE_IDS[wdtype]} cl={cl} silu={silu}"
    y = from_mem(res["out"], shape, cl)

    def fwd(xx, ww, bb):
        o = F.group_norm(xx, G, ww, bb, eps)
        return F.silu(o) if silu else o

    if nan_at is not None:
        n, c = nan_at[0], nan_at[1]
        g0 = c // (C // G) * (C // G)
        yg = y.float()[n, g0:g0 + C // G]
        assert torch.isnan(yg).all(), tag + ": NaN did not reach its whole group"
        yy = y.float().clone()
        yy[n, g0:g0 + C // G] = 0
        assert not torch.isnan(yy).any(), tag + ": NaN leaked out of its group"
        return
    x64 = x.double()
    w64, b64 = (w.double(), b.double()) if affine else (None, None)
    wd, bd = (w.to(dtype), b.to(dtype)) if affine else (None, None)
    assert_accurate(y, fwd(x64, w64, b64), fwd(x, wd, bd), dtype, tag + " out")
    xg = x64.reshape(N, G, -1)
    _, mean_t, rstd_t = torch.ops.aten.native_group_norm(x.float(), None, None, N, C, S, G, eps)
    assert_accurate(res["mean"], xg.mean(-1), mean_t.reshape(N, G), F32, tag + " mean")
    assert_accurate(res["rstd"], torch.rsqrt(xg.var(-1, unbiased=False) + eps), rstd_t.reshape(N, G), F32,
                    tag + " rstd")

    dy = randn(*shape, dtype=dtype, seed=seed + 4)
    bdy = dev.input("dy", to_mem(dy, cl))
    bm, br = dev.input("mean_in", res["mean"]), dev.input("rstd_in", res["rstd"])
    dx = dev.output("dx", dtype, (x.numel(),))
    dw = dev.output("dweight", wdtype, (C,)) if affine else None
    db = dev.output("dbias", wdtype, (C,)) if affine else None
    ws2 = dev.workspace(emu.ws("fn_group_norm_bwd_workspace_bytes", N, C, S, G, int(cl)))
    outs = [o for o in (dx, dw, db) if o is not None]
    g = run_checked(emu, outs, [ws2], "fn_group_norm_bwd", bdy.ptr, bx.ptr, ptr(bw), ptr(bb), bm.ptr, br.ptr,
                    dx.ptr, ptr(dw), ptr(db), ws2.ptr, N, C, S, G, int(silu), int(cl), DT[dtype], DT[wdtype], 0)

    def grads(xx, ww, bb, gy):
        leaves = [t.detach().requires_grad_() for t in (xx, ww, bb) if t is not None]
        args = leaves + [None] * (3 - len(leaves))
        return torch.autograd.grad(fwd(*args), leaves, gy)

    rg, tg = grads(x64, w64, b64, dy.double()), grads(x, wd, bd, dy)
    assert_accurate(from_mem(g["dx"], shape, cl), rg[0], tg[0], dtype, tag + " dx")
    if affine:
        assert_accurate(g["dweight"].to(dtype), rg[1], tg[1], dtype, tag + " dweight")
        assert_accurate(g["dbias"].to(dtype), rg[2], tg[2], dtype, tag + " dbias")


GN_CASES = [
    # shape, G, dtype, wdtype, channels_last, silu
    ((2, 6, 5, 3), 3, F32, F32, False, True),
    ((2, 6, 5, 7), 2, F16, F16, False, False),          # S odd: scalar NCHW path
    ((3, 8, 7, 9), 4, BF16, F32, True, True),           # channels_last, mixed weights
    ((2, 8, 3, 4, 5), 2, F16, F32, False, True),        # 5-D NCHW
    ((2, 8, 3, 4, 5), 4, BF16, BF16, True, False),      # 5-D channels_last
    ((2, 40, 17, 17), 8, F16, F16, True, True),         # CL: 2 row chunks, partial channel tile
    ((1, 4, 96, 96), 2, F32, F32, False, False),        # S > 8192: 2 chunks per (n, c), vector loads
    ((1, 4, 96, 96), 2, BF16, BF16, True, True),        # ... and channels_last
    ((4, 10, 33), 5, F32, F32, False, True),            # 3-D (N, C, L)
    ((3, 6, 1, 1), 3, BF16, F32, False, False),         # S = 1: the channels_last kernel
    ((2, 12), 3, F32, F32, False, True),                # 2-D (N, C)
]


@pytest.mark.parametrize("shape,G,dtype,wdtype,cl,silu", GN_CASES,
                         ids=[f"{c[0]}-G{c[1]}-{DTYPE_IDS[c[2]]}-w{DTYPE_IDS[c[3]]}-{'cl' if c[4] else 'nchw'}"
                              f"{'-silu' if c[5] else ''}" for c in GN_CASES])
def test_group_norm(emu, dev, shape, G, dtype, wdtype, cl, silu):
    gn_case(emu, dev, shape, G, dtype, wdtype, cl, silu)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_instance_norm(emu, dev, cl, dtype):
    """InstanceNorm = GroupNorm with G = C (per-(n, c) statistics), with and without affine."""
    gn_case(emu, dev, (2, 6, 9, 11), 6, dtype, dtype, cl, False, affine=True)
    gn_case(emu, dev, (3, 16, 5, 2, 3), 16, dtype, dtype, cl, False, affine=False)


def test_group_norm_offset_nan(emu, dev):
    for cl in (False, True):
        gn_case(emu, dev, (2, 32, 16, 16), 2, F32, F32, cl, False, offset=1e4)
        gn_case(emu, dev, (2, 8, 5, 5), 4, BF16, BF16, cl, True, nan_at=(1, 3, 2, 2))


def test_group_norm_degenerate(emu, dev):
    x = dev.input("x", randn(2, 4, 3))
    out, mean, rstd = dev.output("out", F32, (24,)), dev.output("mean", F32, (2, 2)), dev.output("rstd", F32, (2, 2))
    for N, C in ((0, 4), (2, 0)):
        G = 1 if C == 0 else 2
        emu.call("fn_group_norm_fwd", x.ptr, None, None, out.ptr, mean.ptr, rstd.ptr, None, N, C, 3, G,
                 1e-5, 0, 0, 0, 0, 0)
        emu.call("fn_group_norm_bwd", x.ptr, x.ptr, None, None, mean.ptr, rstd.ptr, out.ptr, None, None, None, N, C,
                 3, G, 0, 0, 0, 0, 0)
        assert emu.last_log == []
    assert unwritten(out, out.bytes()).size == 24
    with pytest.raises(EmuError, match="spatial size is 0"):
        emu.call("fn_group_norm_fwd", x.ptr, None, None, out.ptr, mean.ptr, rstd.ptr, None, 2, 4, 0, 2, 1e-5,
                 0, 0, 0, 0, 0)
    for G in (0, 3):
        with pytest.raises(EmuError, match=f"num_groups={G} must be positive and divide channels=4"):
            emu.call("fn_group_norm_fwd", x.ptr, None, None, out.ptr, mean.ptr, rstd.ptr, None, 2, 4, 3, G,
                     1e-5, 0, 0, 0, 0, 0)
        with pytest.raises(EmuError, match=f"num_groups={G}"):
            emu.call("fn_group_norm_bwd", x.ptr, x.ptr, None, None, mean.ptr, rstd.ptr, out.ptr, None, None,
                     None, 2, 4, 3, G, 0, 0, 0, 0, 0)
    assert emu.last_log == []


# GroupNorm on NCHW is the row pattern over groups of Cg * S elements: group lengths (in vectors)
# that pick every forward shape (128, 512, 2048 vectors, looped; scalar: 128, 4096, looped) and
# every backward shape (128, 512, 2048 -- the last without the prefetch --, looped; scalar: 128,
# 2048, looped).  Vector: S a multiple of the width; scalar: S odd.
GN_ROW_NVEC = {True: [100, 400, 1800, 5000], False: [51, 201, 2501]}


@pytest.mark.parametrize("vector", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("dtype,wdtype", LN_PAIRS, ids=[f"{DTYPE_IDS[a]}-w{DTYPE_IDS[b]}" for a, b in LN_PAIRS])
def test_group_norm_row_paths(emu, dev, dtype, wdtype, vector):
    """Every row kernel GroupNorm's NCHW path can choose, per dtype pair and vector width; two
    channels per group, so the per-channel weight-gradient sums split each row (and, looped,
    a channel spans chunks)."""
    v = VEC[dtype] if vector else 1
    fwd, bwd = set(), set()
    for k, n in enumerate(GN_ROW_NVEC[vector]):
        S = n * v // 2 if vector else n  # Cg = 2: a group is 2 * S elements
        first = len(emu.launches)
        gn_case(emu, dev, (1, 4, S), 2, dtype, wdtype, False, silu=k % 2 == 0, affine=k != 1)
        names = [e[0] for e in emu.launches[first:]]
        op = f"<fusednorm::gn::RowsFwdOp<{CTYPE[dtype]}, {CTYPE[wdtype]}>, {v},"
        fwd |= {m for m in names if f"row::fwd_kernel{op}" in m or f"row::fwd_looped_kernel{op}" in m}
        bw = f"<{CTYPE[dtype]}, {CTYPE[wdtype]}, {v},"
        bwd |= {m for m in names if f"gn::rows_bwd_kernel{bw}" in m or f"gn::rows_bwd_looped_kernel{bw}" in m}
        if k != 1:
            assert any(f"gn::grad_merge_kernel<{CTYPE[wdtype]}>" in m for m in names), names
    assert len(fwd) == len(GN_ROW_NVEC[vector]), sorted(fwd)
    assert len(bwd) == len(GN_ROW_NVEC[vector]), sorted(bwd)


@pytest.mark.parametrize("rdtype", [F32, F16, BF16, F64], ids=["fp32", "fp16", "bf16", "fp64"])
def test_instance_norm_running(emu, dev, rdtype):
    """InstanceNorm's running statistics from one batch's (N, C) statistics, in place, in the
    buffers' dtype: running <- (1 - m) running + m * batch average of the instance means and
    unbiased variances (1/rstd^2 - eps, clamped at 0, * S/(S-1))."""
    N, C, S, eps, m = 37, 45, 49, 1e-5, 0.1
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(N, C, generator=g)
    rstd = torch.rand(N, C, generator=g) * 2 + 0.5
    rstd[0, 0] = 1 / np.sqrt(eps) * 1.01  # a variance below 0 after - eps: clamped
    rm = torch.randn(C, generator=g, dtype=torch.float64).to(rdtype)
    rv = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(rdtype)
    bm, br = dev.input("mean", mean), dev.input("rstd", rstd)
    brm, brv = dev.output("running_mean", rdtype, (C,)), dev.output("running_var", rdtype, (C,))
    res = run_checked(emu, [], [], "fn_instance_norm_running", bm.ptr, br.ptr, brm.ptr, brv.ptr, DT[rdtype],
                      DT[rdtype], N, C, m, eps, S / (S - 1), 0, inouts=[(brm, rm), (brv, rv)])
    var64 = (rstd.double().reciprocal().square() - eps).clamp_min(0) * (S / (S - 1))
    ref_m = rm.double() * (1 - m) + mean.double().mean(0) * m
    ref_v = rv.double() * (1 - m) + var64.mean(0) * m
    var32 = (1 / (rstd * rstd) - eps).clamp_min(0) * (S / (S - 1))
    th_m = (rm.float() * (1 - m) + mean.mean(0) * m).to(rdtype)
    th_v = (rv.float() * (1 - m) + var32.mean(0) * m).to(rdtype)
    assert_accurate(res["running_mean"], ref_m, th_m, rdtype, "running_mean")
    assert_accurate(res["running_var"], ref_v, th_v, rdtype, "running_var")
    # one buffer only, and nothing to do
    res = run_checked(emu, [], [], "fn_instance_norm_running", bm.ptr, br.ptr, None, brv.ptr, DT[rdtype], DT[rdtype],
                      N, C, m, eps, S / (S - 1), 0, inouts=[(brv, rv)])
    assert torch.equal(res["running_var"], run_checked(emu, [], [], "fn_instance_norm_running", bm.ptr, br.ptr,
                                                       brm.ptr, brv.ptr, DT[rdtype], DT[rdtype], N, C, m, eps,
                                                       S / (S - 1), 0, inouts=[(brm, rm), (brv, rv)])["running_var"])
    emu.call("fn_instance_norm_running", bm.ptr, br.ptr, None, None, 0, 0, N, C, m, eps, 1.0, 0)
    assert emu.last_log == []


# ============================================================================ BatchNorm
def bn_case(emu, dev, shape, dtype, wdtype, cl, training, offset=0.0, affine=True, nan_at=None, rdtype=F32,
            momentum=0.1, track=True):
    """track: running statistics in rdtype and num_batches_tracked given (training updates them in
    place: momentum, or None for the cumulative average 1 / num_batches_tracked); eval always
    reads them."""
    eps = 1e-5
    N, C = shape[:2]
    S = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    seed = _seed(shape, dtype, wdtype, cl, training, offset, affine)
    x = randn(*shape, dtype=dtype, seed=seed, offset=offset)
    if nan_at is not None:
        x[nan_at] = float("nan")
    w = (randn(C, seed=seed + 2) * 0.5 + 1).to(wdtype) if affine else None
    b = randn(C, seed=seed + 3).to(wdtype) if affine else None
    rm = randn(C, seed=seed + 5, offset=offset).to(rdtype)
    rv = (torch.rand(C, generator=torch.Generator().manual_seed(seed + 6), dtype=torch.float64) + 0.5).to(rdtype)
    nbt0 = torch.tensor([3], dtype=torch.int64)
    bx, bw, bb = dev.input("x", to_mem(x, cl)), dev.input("weight", w), dev.input("bias", b)
    out = dev.output("out", dtype, (x.numel(),))
    tag = f"BN {shape} {DTYPE_IDS[dtype]} w={DTYPE_IDS[wdtype]} cl={cl} train={training}"
    mean, rstd = dev.output("mean", F32, (C,)), dev.output("rstd", F32, (C,))
    brm = brv = bnbt = var = ws = None
    inouts = []
    if training:
        var = dev.output("var", F32, (C,))
        ws = dev.workspace(emu.ws("fn_batch_norm_fwd_workspace_bytes", N, C, S, int(cl)))
        outs, wss = [out, mean, rstd, var], [ws]
        if track:
            brm, brv = dev.output("running_mean", rdtype, (C,)), dev.output("running_var", rdtype, (C,))
            bnbt = dev.output("num_batches_tracked", torch.int64, (1,))
            inouts = [(brm, rm), (brv, rv), (bnbt, nbt0)]
    else:  # eval: mean / rstd come from the running statistics, computed in the kernel
        brm, brv = dev.input("running_mean", rm), dev.input("running_var", rv)
        outs, wss = [out, mean, rstd], []
    mom = 0.0 if momentum is None else momentum
    res = run_checked(emu, outs, wss, "fn_batch_norm_fwd", bx.ptr, ptr(bw), ptr(bb), out.ptr, mean.ptr, rstd.ptr,
                      ptr(var), ptr(brm), ptr(brv), DT[rdtype], DT[rdtype], ptr(bnbt), mom, int(momentum is None),
                      ptr(ws), N, C, S, eps, int(training), int(cl), DT[dtype], DT[wdtype], 0, inouts=inouts)
    y = from_mem(res["out"], shape, cl)
    dims = [0] + list(range(2, len(shape)))
    if nan_at is not None:
        c = nan_at[1]
        assert torch.isnan(y.float().select(1, c)).all(), tag + ": NaN did not reach its channel"
        others = [k for k in range(C) if k != c]
        assert not torch.isnan(y.float()[:, others]).any(), tag + ": NaN leaked into other channels"
        return

    def fwd(xx, ww, bb, dt):
        if training:
            return F.batch_norm(xx, None, None, ww, bb, True, 0.1, eps)
        return F.batch_norm(xx, rm.to(dt), rv.to(dt), ww, bb, False, 0.1, eps)

    x64 = x.double()
    w64, b64 = (w.double(), b.double()) if affine else (None, None)
    wd, bd = (w.to(dtype), b.to(dtype)) if affine else (None, None)
    assert_accurate(y, fwd(x64, w64, b64, torch.float64), fwd(x, wd, bd, dtype), dtype, tag + " out")
    if training:
        xf = x.float()
        assert_accurate(res["mean"], x64.mean(dims), xf.mean(dims), F32, tag + " mean")
        var64 = x64.var(dims, unbiased=False)
        assert_accurate(res["var"], var64, xf.var(dims, unbiased=False), F32, tag + " var")
        assert_accurate(res["rstd"], torch.rsqrt(var64 + eps), torch.rsqrt(xf.var(dims, unbiased=False) + eps),
                        F32, tag + " rstd")
        if track:  # running <- (1 - f) running + f batch (unbiased variance), f = momentum or 1 / 4
            assert res["num_batches_tracked"].item() == 4, tag + " num_batches_tracked"
            f = momentum if momentum is not None else 1 / 4
            count = N * S
            ref_m = rm.double() * (1 - f) + x64.mean(dims) * f
            ref_v = rv.double() * (1 - f) + x64.var(dims, unbiased=True) * f
            th_m = (rm.float() * (1 - f) + xf.mean(dims) * f).to(rdtype)
            th_v = (rv.float() * (1 - f) + xf.var(dims, unbiased=False) * (count / (count - 1)) * f).to(rdtype)
            assert res["running_mean"].dtype == rdtype
            assert_accurate(res["running_mean"], ref_m, th_m, rdtype, tag + " running_mean")
            assert_accurate(res["running_var"], ref_v, th_v, rdtype, tag + " running_var")
        m_in, r_in = res["mean"], res["rstd"]
    else:
        assert torch.equal(res["mean"], rm.float()), tag + " eval mean = running_mean as fp32"
        assert_accurate(res["rstd"], torch.rsqrt(rv.double() + eps), torch.rsqrt(rv.float() + eps), F32,
                        tag + " eval rstd")
        m_in, r_in = res["mean"], res["rstd"]

    dy = randn(*shape, dtype=dtype, seed=seed + 4)
    bdy = dev.input("dy", to_mem(dy, cl))
    bm, br = dev.input("mean_in", m_in), dev.input("rstd_in", r_in)
    dx = dev.output("dx", dtype, (x.numel(),))
    dw = dev.output("dweight", wdtype, (C,)) if affine else None
    db = dev.output("dbias", wdtype if affine else dtype, (C,))
    ws2 = dev.workspace(emu.ws("fn_batch_norm_bwd_workspace_bytes", N, C, S, int(cl)))
    outs = [o for o in (dx, dw, db) if o is not None]
    g = run_checked(emu, outs, [ws2], "fn_batch_norm_bwd", bdy.ptr, bx.ptr, ptr(bw), bm.ptr, br.ptr, dx.ptr,
                    ptr(dw), db.ptr, ws2.ptr, N, C, S, int(training), int(cl), DT[dtype],
                    DT[wdtype if affine else dtype], 0)

    def grads(xx, ww, bb, gy, dt):
        xx = xx.detach().requires_grad_()
        ps = [p.detach().requires_grad_() for p in (ww, bb) if p is not None]
        ww, bb = (ps[0], ps[1]) if affine else (None, None)
        yy = fwd(xx, ww, bb, dt)
        gr = torch.autograd.grad(yy, [xx] + ps, gy)
        if not affine:  # dbias = sum(dy) is an output even without a bias
            gr = gr + (gy.sum(dims),)
        return gr

    rg, tg = grads(x64, w64, b64, dy.double(), torch.float64), grads(x, wd, bd, dy, dtype)
    assert_accurate(from_mem(g["dx"], shape, cl), rg[0], tg[0], dtype, tag + " dx")
    if affine:
        assert_accurate(g["dweight"].to(dtype), rg[1], tg[1], dtype, tag + " dweight")
    assert_accurate(g["dbias"].to(dtype), rg[-1], tg[-1].to(dtype), dtype, tag + " dbias")


BN_CASES = [
    # shape, dtype, wdtype, channels_last
    ((8, 16), F32, F32, False),            # 2-D (N, C): S = 1, folded into one (N, C) matrix
    ((37, 20), BF16, F32, False),
    ((2, 6, 9000), F32, F32, False),       # S > 8192: 2 chunks per (n, c)
    ((2, 24, 13, 11), F16, F16, False),    # S odd: scalar path
    ((2, 24, 13, 11), F16, F32, True),     # channels_last, C % 8 == 0: vector map
    ((3, 8, 2, 3, 5), BF16, BF16, False),  # 5-D
    ((3, 6, 2, 3, 5), BF16, BF16, True),   # 5-D channels_last, C % 8 != 0
    ((4, 5, 40, 40), F32, F32, True),      # channels_last, N*S = 6400 rows: 25 row chunks
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,dtype,wdtype,cl", BN_CASES,
                         ids=[f"{c[0]}-{DTYPE_IDS[c[1]]}-w{DTYPE_IDS[c[2]]}-{'cl' if c[3] else 'nchw'}"
                              for c in BN_CASES])
def test_batch_norm(emu, dev, shape, dtype, wdtype, cl, training):
    bn_case(emu, dev, shape, dtype, wdtype, cl, training)


def test_batch_norm_offset_nan_plain(emu, dev):
    for cl in (False, True):
        bn_case(emu, dev, (8, 4, 16, 16), F32, F32, cl, True, offset=1e4)
        bn_case(emu, dev, (4, 6, 5, 5), BF16, BF16, cl, True, nan_at=(2, 4, 1, 3))
    bn_case(emu, dev, (4, 6, 7), F32, F32, False, True, affine=False)  # no weight: dbias only
    bn_case(emu, dev, (4, 6, 7), F16, F16, False, False, affine=False)


@pytest.mark.parametrize("vector", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype,wdtype", LN_PAIRS, ids=[f"{DTYPE_IDS[a]}-w{DTYPE_IDS[b]}" for a, b in LN_PAIRS])
def test_channel_paths(emu, dev, dtype, wdtype, cl, vector):
    """BatchNorm (both layouts) and channels_last GroupNorm through every kernel instantiation of
    the channel patterns (channel.cuh) and their merges: dtype pair x layout x vector width (NCHW
    vectorizes when S % VEC == 0, channels_last when C % VEC == 0)."""
    v = VEC[dtype] if vector else 1
    C = 8 if vector else 6  # channels_last: C % VEC decides
    shape = (2, C, 4, 4) if (vector or cl) else (2, C, 3, 3)  # NCHW: S = 16 or 9
    first = len(emu.launches)
    gn_case(emu, dev, shape, 2, dtype, wdtype, cl, silu=vector)
    bn_case(emu, dev, shape, dtype, wdtype, cl, training=True)
    bn_case(emu, dev, shape, dtype, wdtype, cl, training=False)
    names = " ".join(e[0] for e in emu.launches[first:])
    T, W, lay = CTYPE[dtype], CTYPE[wdtype], "cl" if cl else "nchw"
    want = [f"reduce_{lay}_kernel<fusednorm::chan::ShiftedSumsOp<{T}>, {v}>",
            f"map_{lay}_kernel<fusednorm::bn::ApplyOp<{T}, {W}>, {v}>",
            f"reduce_{lay}_kernel<fusednorm::bn::GradSumsOp<{T}>, {v}>",
            f"map_{lay}_kernel<fusednorm::bn::DxOp<{T}, {W}>, {v}>",
            f"bn::stats_merge_kernel<{T}>", f"bn::grad_merge_kernel<{W}>"]
    if cl:
        want += [f"map_cl_kernel<fusednorm::gn::ClApplyOp<{T}, {W}>, {v}>",
                 f"reduce_cl_kernel<fusednorm::gn::ClGradSumsOp<{T}, {W}>, {v}>",
                 f"map_cl_kernel<fusednorm::gn::ClDxOp<{T}, {W}>, {v}>", f"gn::stats_merge_kernel<{T}>"]
    else:
        want += [f"row::fwd_kernel<fusednorm::gn::RowsFwdOp<{T}, {W}>, {v},", f"gn::rows_bwd_kernel<{T}, {W}, {v},"]
    for k in want:
        assert k in names, f"expected {k}"


def bn_fwd_call(emu, x, out, st, run=(None, None), nbt=None, momentum=0.1, ws=None, N=2, C=4, S=3, training=1,
                xdt=0, wdt=0, weight=None):
    emu.call("fn_batch_norm_fwd", x.ptr, weight, None, out.ptr, *(b.ptr for b in st), *run, 0, 0, nbt,
             0.0 if momentum is None else momentum, int(momentum is None), ws, N, C, S, 1e-5, training, 0, xdt, wdt, 0)


def test_batch_norm_degenerate(emu, dev):
    x = dev.input("x", randn(2, 4, 3))
    out = dev.output("out", F32, (24,))
    st = [dev.output(n, F32, (4,)) for n in ("mean", "rstd", "var")]
    rm, rv = dev.output("rm", F32, (4,)), dev.output("rv", F32, (4,))
    bn_fwd_call(emu, x, out, st, C=0)
    bn_fwd_call(emu, x, out, st, run=(rm.ptr, rv.ptr), N=0, training=0)
    emu.call("fn_batch_norm_bwd", x.ptr, x.ptr, None, st[0].ptr, st[1].ptr, out.ptr, None, st[2].ptr, None, 0, 4, 3,
             1, 0, 0, 0, 0)
    assert emu.last_log == []
    assert unwritten(out, out.bytes()).size == 24
    with pytest.raises(EmuError, match="training needs N \\* spatial >= 1"):
        bn_fwd_call(emu, x, out, st, N=0)
    with pytest.raises(EmuError, match="eval needs running_mean and running_var"):
        bn_fwd_call(emu, x, out, st, run=(rm.ptr, None), training=0)
    with pytest.raises(EmuError, match="momentum None needs num_batches_tracked"):
        bn_fwd_call(emu, x, out, st, run=(rm.ptr, rv.ptr), momentum=None)
    with pytest.raises(EmuError, match="weight dtype bfloat16 must be x's dtype"):
        bn_fwd_call(emu, x, out, st, run=(rm.ptr, rv.ptr), training=0, xdt=DT[F16], wdt=DT[BF16], weight=x.ptr)
    assert emu.last_log == []


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("rdtype", [F32, F16, BF16, F64], ids=["fp32", "fp16", "bf16", "fp64"])
def test_batch_norm_running(emu, dev, rdtype, momentum):
    """Training updates the running statistics in place, in their own dtype (computed in fp32,
    rounded once), and num_batches_tracked += 1 on the device; momentum None takes 1 / the new
    count.  Both layouts; bf16 x with fp32 weights."""
    for cl in (False, True):
        bn_case(emu, dev, (3, 16, 5, 4), BF16, F32, cl, True, rdtype=rdtype, momentum=momentum)
    bn_case(emu, dev, (3, 16, 5, 4), F32, F32, False, False, rdtype=rdtype)  # eval reads them


def test_batch_norm_untracked(emu, dev):
    """Training without running statistics (and without num_batches_tracked)."""
    bn_case(emu, dev, (4, 8, 6), F16, F16, False, True, track=False)
    bn_case(emu, dev, (4, 8, 6, 2), F16, F16, True, True, track=False)


# =============================================================== the checks have teeth
def selftest(emu, name, buf, n, arg=0):
    emu.call("fn_emu_selftest", name.encode(), buf.ptr if buf is not None else None, n, arg)


def expect_fault(emu, name, buf, n, match, arg=0, code=2):
    with pytest.raises(EmuError, match=match) as e:
        selftest(emu, name, buf, n, arg)
    assert e.value.code == code, e.value
    return e.value.message


needs_signals = pytest.mark.skipif(IN_ASAN, reason="fault capture by signal is not used under ASan")


def test_bug_missing_syncthreads(emu, dev):
    """s[t] written, s[t+1] read without __syncthreads: the read sees poisoned shared memory
    (and, with the barrier, the kernel passes)."""
    out = dev.output("out", F32, (128,))
    selftest(emu, "smem_sync", out, 128)
    assert torch.equal(out.read(F32, (128,)), (torch.arange(128) + 1).roll(-1).float())
    with pytest.raises(AssertionError, match="never written|differs between schedules"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"smem_missing_sync", out.ptr, 128, 0)
    emu.config(schedule="forward")
    selftest(emu, "smem_missing_sync", out, 128)
    got = out.read(F32, (128,))
    assert torch.isnan(got[:127]).all() and got[127] == 1, "reads before the writer ran see the NaN poison"


def test_bug_shared_race_order_dependent(emu, dev):
    """Every thread writes the same shared word: the result depends on thread order, which
    the forward/reverse double run exposes."""
    out = dev.output("out", F32, (64,))
    with pytest.raises(AssertionError, match="differs between schedules"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"smem_last_writer", out.ptr, 64, 0)


def test_bug_shared_memory_reused_without_barrier(emu, dev):
    """Shared memory rewritten for the next round while another warp may still read the last
    one (a missing trailing __syncthreads): threads kept in step never show it; a warp running
    ahead does, and the schedules disagree."""
    out = dev.output("out", F32, (2, 128))
    res = run_checked(emu, [out], [], "fn_emu_selftest", b"smem_reuse", out.ptr, 128, 0)
    assert torch.equal(res["out"], torch.tensor([[8128.0] * 128, [8128.0 + 12800] * 128]))
    emu.config(schedule="forward")
    selftest(emu, "smem_reuse_no_trailing_sync", out, 128)
    assert torch.equal(out.read(F32, (2, 128)), res["out"]), "in step, the race stays hidden"
    with pytest.raises(AssertionError, match="differs between schedules forward and forward-greedy"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"smem_reuse_no_trailing_sync", out.ptr, 128, 0)


def test_bug_uninitialized_shared_read(emu, dev):
    out = dev.output("out", F32, (256,))
    selftest(emu, "uninit_smem", out, 256)
    got = out.read(F32, (256,))
    assert torch.isnan(got[1::2]).all() and (got[0::2] == 1).all()


def test_bug_warp_race(emu, dev):
    """Warp-synchronous shared-memory reduction without __syncwarp (wrong since Volta)."""
    out = dev.output("out", F32, (1,))
    selftest(emu, "warp_race", out, 1)
    got = out.read(F32, (1,)).item()
    assert np.isnan(got), f"expected the poison to show, got {got} (race-free: sum(1..32) = 528)"


def test_bug_exit_before_barrier(emu, dev):
    out = dev.output("out", F32, (64,))
    msg = expect_fault(emu, "exit_then_barrier", out, 64,
                       "reached by 32 threads while 32 threads of the block have exited")
    assert "selftest.cpp" in msg
    emu.config(allow_exit_before_barrier=1)  # PTX semantics: released
    selftest(emu, "exit_then_barrier", out, 64)


def test_bug_divergent_barriers(emu, dev):
    out = dev.output("out", F32, (64,))
    msg = expect_fault(emu, "barrier_two_sites", out, 64, "threads wait at different barriers")
    assert "threads 0,2,4" in msg and "threads 1,3,5" in msg, msg
    expect_fault(emu, "barrier_vs_shuffle", out, 32, "deadlock: no thread can proceed")


def test_bug_shuffle_from_exited_lane(emu, dev):
    out = dev.output("out", F32, (32,))
    expect_fault(emu, "shfl_exited_lane", out, 32, "names lane 16, which has exited|exited while lane")
    expect_fault(emu, "shfl_outside_mask", out, 32, "reads lane 20, which is not in the mask")
    out48 = dev.output("out48", F32, (48,))
    expect_fault(emu, "shfl_partial_warp", out48, 48, "names lane 16, which does not exist")


def test_bug_out_of_bounds_write(emu, dev):
    """One element past the end lands in the guard bytes (found by the guard check); far past
    the end in the PROT_NONE page (reported by the emulator as the buffer's overrun)."""
    out = dev.output("out", F32, (300,))
    with pytest.raises(AssertionError, match=r"out-of-bounds write:\s+buffer 'out' \(1200 bytes\): "
                                             r"guard bytes changed at offsets \[1200, 1203\]"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"write_past_end", out.ptr, 300, 1)
    emu.lib.fn_emu_reset_guards()  # the overrun was deliberate


@needs_signals
def test_bug_out_of_bounds_far_and_null(emu, dev):
    out = dev.output("out", F32, (300,))
    # 500 floats past the end: beyond the guard bytes (< 256), inside the PROT_NONE page
    expect_fault(emu, "write_past_end", out, 300, r"out-of-bounds write to buffer 'out': byte 3196 of a 1200-byte",
                 arg=500)
    expect_fault(emu, "read_far", out, 300, r"out-of-bounds access to buffer 'out': byte 3200 of", arg=800)
    expect_fault(emu, "null_deref", out, 32, r"null pointer")
    ro = dev.input("ro", torch.zeros(64))
    expect_fault(emu, "write_all", ro, 64, "write to read-only buffer 'ro' at byte 0", arg=-1)


def test_bug_missing_write(emu, dev):
    out = dev.output("out", F32, (1000,))
    run_checked(emu, [out], [], "fn_emu_selftest", b"write_all", out.ptr, 1000, -1)
    with pytest.raises(AssertionError, match=r"1 elements of 'out' never written \(first \[777\];"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"write_all", out.ptr, 1000, 777)


def test_bug_nondeterministic_atomics(emu, dev):
    """A float sum by atomicAdd depends on the block order: the double run flags it."""
    out = dev.output("out", F32, (1,))
    with pytest.raises(AssertionError, match="differs between schedules"):
        run_checked(emu, [out], [], "fn_emu_selftest", b"atomic_float_sum", out.ptr, 64, 0)


def test_bug_unchecked_launch(emu, dev):
    out = dev.output("out", F32, (64,))
    msg = expect_fault(emu, "unchecked_launch", out, 64, "not followed by a launch-error check", code=4)
    assert "write_all" in msg


def test_bug_launch_configuration(emu, dev):
    out = dev.output("out", F32, (64,))
    expect_fault(emu, "block_too_big", out, 64, "invalid configuration argument")
    expect_fault(emu, "grid_y_too_big", out, 64, "invalid configuration argument")
    expect_fault(emu, "dyn_smem", out, 13000, "invalid argument")  # 52 KB without the opt-in


@needs_signals
def test_bug_traps_asserts_exceptions_stack(emu, dev):
    out = dev.output("out", F32, (64,))
    expect_fault(emu, "trap", out, 32, r"__trap\(\) called")
    expect_fault(emu, "assert", out, 32, r"assert\(out == nullptr\) failed")
    expect_fault(emu, "throw", out, 1, "C\\+\\+ exception escaped the kernel: thrown in device code")
    expect_fault(emu, "misaligned_atomic", out, 1, "misaligned 4-byte atomic")
    expect_fault(emu, "stack_overflow", out, 1, "stack overflow of the emulated thread")
    emu.config(timeout_s=1)
    out.bytes()[:] = 0
    expect_fault(emu, "spin_plain", out, 1, "ran longer than the watchdog")


def test_sticky_fault_until_reset(emu, dev):
    """After a kernel fault every launch fails (as a CUDA context does) until the reset."""
    out = dev.output("out", F32, (32,))
    expect_fault(emu, "shfl_exited_lane", out, 32, "exited")
    emu.lib.fn_emu_reset()
    selftest(emu, "write_all", out, 32, -1)


# ============================================================== emulator semantics checks
def test_shuffle_semantics(emu, dev):
    n = 64
    nslots = 22
    out = dev.output("out", torch.int32, (nslots, n))
    selftest(emu, "shuffles", out, n)
    got = out.read(torch.int32, (nslots, n)).numpy()
    t = np.arange(n)
    lane, warp = t % 32, t // 32
    v = 1000 * warp + lane

    def at(l):
        return 1000 * warp + l

    seg = lambda w: lane & ~(w - 1)  # noqa: E731
    exp = [
        at(np.full(n, 5)), at(np.full(n, 5)), at(seg(16) + 3), at(seg(8) + ((lane ^ 7) & 7)),
        np.where(lane - 1 >= 0, v - 1, v), np.where(lane - 3 >= seg(8), v - 3, v),
        np.where(lane + 2 <= 31, v + 2, v), np.where(lane + 5 <= seg(16) + 15, v + 5, v),
        at(lane ^ 1), at(lane ^ 16), np.where((lane ^ 8) <= seg(8) + 7, at(lane ^ 8), v),
    ]
    ballot = sum(1 << l for l in range(32) if l % 3 == 0)
    exp.append(np.full(n, ballot - (1 << 32) if ballot >= 1 << 31 else ballot))
    exp += [np.ones(n), np.zeros(n)]
    exp.append(np.array([sum(1000 * w + l for l in range(32)) for w in warp]))
    exp.append(np.full(n, 5 - 31))
    exp.append(np.full(n, 93))
    exp.append(np.array([sum(1 << l for l in range(32) if l % 4 == ln % 4) for ln in lane], dtype=np.int64))
    exp.append(np.where(lane < 16, at(np.full(n, 15)), at(np.full(n, 16))))
    odd = sum(1 << l for l in range(32) if l & 1)
    exp.append(np.where(lane < 16, odd & 0xFFFF, odd & 0xFFFF0000))
    exp.append(np.full(n, 0xFFFFFFFF))
    exp.append((2 * (at(lane ^ 2) + 0.5)).astype(np.int64))
    for k, e in enumerate(exp):
        e = (np.asarray(e, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        np.testing.assert_array_equal(got[k], e, err_msg=f"shuffle variant {k}")


def test_barrier_reductions(emu, dev):
    n = 96
    out = dev.output("out", torch.int32, (n, 4))
    selftest(emu, "sync_count", out, n)
    got = out.read(torch.int32, (n, 4))
    assert (got[:, 0] == 32).all() and (got[:, 1] == 1).all() and (got[:, 2] == 1).all() and (got[:, 3] == 0).all()


def test_atomics_and_last_block_pattern(emu, dev):
    buf = dev.output("out", torch.int32, (9,))
    b = buf.bytes().view(np.int32)
    b[:] = 0
    b[4] = 1000
    b[5] = 0
    selftest(emu, "atomics", buf, 96)  # 2 blocks x 96 threads
    got = buf.bytes().view(np.int32)
    assert got[0] == 2 * 192 and got[1] == 192 % 8 and got[2] == 95 and got[3] == 42
    assert got[4] == -95 and got[5] == -192 and buf.bytes()[32:36].view(np.float32)[0] == 96.0
    # the last block to take a ticket reduces the partials (sequential and interleaved blocks)
    n, grid = 5000, 7
    xs = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    for resident in (1, 3):
        emu.config(resident_blocks=resident)
        buf2 = dev.output(f"lb{resident}", F32, (n + grid + 2,))
        arr = buf2.bytes().view(np.float32)
        arr[:n] = xs
        arr[n + grid] = 0  # the ticket
        selftest(emu, "last_block_reduce", buf2, n, grid)
        assert abs(arr[n + grid + 1] - xs.astype(np.float64).sum()) < 1e-3
    emu.config(resident_blocks=1)


def test_grid_barrier_needs_resident_blocks(emu, dev):
    """All blocks wait for each other through an atomic counter: runs with every block resident,
    and is reported (not hung) when blocks run one at a time."""
    nb = 6
    out = dev.output("out", F32, (nb * 32 + 1,))
    out.bytes()[:] = 0
    emu.config(resident_blocks=nb)
    selftest(emu, "grid_barrier", out, nb)
    assert (out.bytes().view(np.float32)[: nb * 32] == nb).all()
    emu.config(resident_blocks=1)
    out.bytes()[:] = 0
    expect_fault(emu, "grid_barrier", out, nb, "spin-wait that cannot finish")


def test_interleaved_blocks_keep_their_shared_memory(emu, dev):
    """Five blocks resident and interleaved round by round (each with its own shared memory
    swapped in and out) give bit-identical results to one block at a time, for kernels that
    reduce through shared memory (LN rows; GN channels_last partials)."""
    x = dev.input("x", randn(9, 1000, seed=3))
    outs = [dev.output(n, F32, s) for n, s in (("out", (9, 1000)), ("mean", (9,)), ("rstd", (9,)))]
    xg = dev.input("xg", to_mem(randn(3, 40, 9, 9, seed=4), True))
    gouts = [dev.output(n, F32, s) for n, s in (("gout", (3 * 40 * 81,)), ("gmean", (3, 4)), ("grstd", (3, 4)))]
    gws = dev.workspace(emu.ws("fn_group_norm_fwd_workspace_bytes", 3, 40, 81, 1))
    results = []
    for resident in (1, 5):
        emu.config(resident_blocks=resident)
        for b in outs + gouts + [gws]:
            b.poison()
        emu.call("fn_layer_norm_fwd", x.ptr, 1000, None, 0, None, None, outs[0].ptr, None, outs[1].ptr, outs[2].ptr,
                 9, 1000, 1e-5, 0, 0, 0, 0)
        emu.call("fn_group_norm_fwd", xg.ptr, None, None, gouts[0].ptr, gouts[1].ptr, gouts[2].ptr, gws.ptr, 3, 40,
                 81, 4, 1e-5, 0, 1, 0, 0, 0)
        results.append([b.bytes().copy() for b in outs + gouts])
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    assert not any(unwritten(o, r).size for o, r in zip(outs + gouts, results[1]))


def test_dynamic_shared_memory(emu, dev):
    words = 40000  # 160 KB: needs the opt-in attribute
    out = dev.output("out", F32, (words,))
    selftest(emu, "dyn_smem", out, words, 1)
    assert np.array_equal(out.bytes().view(np.float32), np.arange(words, dtype=np.float32) * 2)
    expect_fault(emu, "dyn_smem", out, words, "dynamic shared memory written out of bounds", arg=2)


def test_indices_2d_3d(emu, dev):
    for arg, (g, b) in enumerate((((3, 2, 1), (5, 3, 1)), ((2, 3, 2), (4, 2, 3)))):
        nt, nb = int(np.prod(b)), int(np.prod(g))
        out = dev.output(f"idx{arg}", torch.int32, (nb * nt,))
        selftest(emu, "indices", out, nb * nt, arg)
        got = out.bytes().view(np.int32)
        for bz in range(g[2]):
            for by in range(g[1]):
                for bx in range(g[0]):
                    for tz in range(b[2]):
                        for ty in range(b[1]):
                            for tx in range(b[0]):
                                i = (bx + g[0] * (by + g[1] * bz)) * nt + tx + b[0] * (ty + b[1] * tz)
                                assert got[i] == (bx << 24) | (by << 20) | (bz << 16) | (tx << 8) | (ty << 4) | tz


def test_device_queries(emu, dev):
    out = dev.output("out", torch.int32, (16,))
    selftest(emu, "device_queries", out, 16)
    o = out.bytes().view(np.int32)
    assert list(o[:6]) == [0, 132, 48 * 1024, 227 * 1024, 65536, 2048]
    assert o[6] == 8 and o[7] == 2 and o[8] == 2 and o[9] == 132
    assert o[10] == 1 and o[12] == 1 and o[13] == 0  # unknown attribute: invalid value, cleared once read
    assert o[14] == 7 and o[15] == 0


def _ties_and_neighbours(values32):
    """fp32 midpoints of consecutive (non-negative, finite) values and the floats next to them,
    with both signs: every rounding decision of a narrowing conversion."""
    v = values32.astype(np.float64)
    mids = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact: the narrow types have <= 11 bits
    x = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0)), values32])
    return np.concatenate([x, -x])


def test_half_bfloat16_conversions_bit_exact(emu):
    """Round-to-nearest-even conversions against numpy (fp16) and torch (bf16): every fp16 value
    back to fp32, every rounding tie and its neighbours, random values; and double inputs."""
    lib = emu.lib
    P = np.ctypeslib.ndpointer
    lib.fn_emu_f32_to_f16.argtypes = [P(np.float32), P(np.uint16), ctypes.c_ulonglong, I]
    lib.fn_emu_f16_to_f32.argtypes = [P(np.uint16), P(np.float32), ctypes.c_ulonglong]
    lib.fn_emu_f32_to_bf16.argtypes = [P(np.float32), P(np.uint16), ctypes.c_ulonglong, I]
    lib.fn_emu_f64_to_f16.argtypes = [P(np.float64), P(np.uint16), ctypes.c_ulonglong]
    lib.fn_emu_f64_to_bf16.argtypes = [P(np.float64), P(np.uint16), ctypes.c_ulonglong]
    h = np.arange(65536, dtype=np.uint16)
    f = np.empty(65536, np.float32)
    lib.fn_emu_f16_to_f32(h, f, h.size)
    ref = h.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(f[~nan].view(np.uint32), ref[~nan].view(np.uint32)) and np.isnan(f[nan]).all()

    def to_bf16(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(BF16).view(torch.int16).numpy().view(np.uint16)

    rng = np.random.default_rng(1)
    rand = rng.integers(0, 2**32, 300000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rand = rand[~np.isnan(rand)]
    halves = np.append(np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32), np.float32(65536))
    bf = np.append((np.arange(0, 0x7F80, dtype=np.uint32) << 16).view(np.float32), np.float32(2.0**127 * 1.9921875))
    for x, conv, ref_fn in ((np.concatenate([_ties_and_neighbours(halves), rand]), lib.fn_emu_f32_to_f16,
                             lambda a: a.astype(np.float16).view(np.uint16)),
                            (np.concatenate([_ties_and_neighbours(bf), rand]), lib.fn_emu_f32_to_bf16, to_bf16)):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(x.size, np.uint16)
        conv(x, out, x.size, 0)
        with np.errstate(over="ignore"):
            want = ref_fn(x)
        bad = np.nonzero(out != want)[0]
        assert bad.size == 0, (f"{conv.__name__}: {bad.size} mismatches, e.g. {x[bad[:4]]} -> {out[bad[:4]]} "
                               f"vs {want[bad[:4]]}")
    # double -> half: numpy rounds doubles correctly (no double rounding through fp32)
    d = np.concatenate([rng.standard_normal(100000) * np.exp(rng.uniform(-25, 12, 100000)),
                        _ties_and_neighbours(halves).astype(np.float64) * (1 + 2.0**-40)])
    o16 = np.empty(d.size, np.uint16)
    lib.fn_emu_f64_to_f16(d, o16, d.size)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(o16, d.astype(np.float16).view(np.uint16))
    # double -> bf16 just above a tie: naive double -> float -> bf16 would round to even (down)
    mids = ((bf[1000:1010].astype(np.float64) + bf[1001:1011]) / 2)
    above = mids * (1 + 2.0**-40)
    ob = np.empty(above.size, np.uint16)
    lib.fn_emu_f64_to_bf16(above, ob, above.size)
    np.testing.assert_array_equal(ob, (bf[1001:1011].view(np.uint32) >> 16).astype(np.uint16))
    nan = np.array([np.nan, -np.nan], np.float32)
    o = np.empty(2, np.uint16)
    lib.fn_emu_f32_to_f16(nan, o, 2, 0)
    assert (o == 0x7FFF).all()  # CUDA's canonical NaN
    lib.fn_emu_f32_to_bf16(nan, o, 2, 0)
    assert (o == 0x7FFF).all()


def test_approximate_intrinsics(emu, dev):
    """rsqrtf, __expf, __fdividef within their documented ulp bounds -- and actually perturbed,
    so no test here can depend on exact results; IEEE ones exact."""
    n = 2000
    buf = dev.output("buf", F32, (8 * n,))
    v = np.exp(np.random.default_rng(2).uniform(-20, 11, n)).astype(np.float32)
    arr = buf.bytes().view(np.float32)
    arr[7 * n:] = v
    selftest(emu, "math", buf, n)
    res = arr[:7 * n].reshape(7, n).copy()

    def ulps(a, ref):
        return np.abs(a.astype(np.float64) - ref) / np.spacing(np.abs(ref.astype(np.float32))).astype(np.float64)

    v64 = v.astype(np.float64)
    u = ulps(res[0], 1 / np.sqrt(v64))
    assert 1.0 <= u.max() <= 2.6, u.max()  # CUDA allows 2 ulp (+ the correctly rounded 0.5)
    xe = (v * np.float32(1e-3)).astype(np.float64)
    assert (ulps(res[1], np.exp(xe)) <= 3 + np.floor(1.16 * np.abs(xe))).all()
    assert ulps(res[2], 1 / v64).max() <= 3.0
    assert np.array_equal(res[4], np.float32(1) / v)
    with np.errstate(over="ignore"):
        assert np.array_equal(res[5], v.astype(np.float16).astype(np.float32))
    emu.config(approx_math=0)
    selftest(emu, "math", buf, n)
    assert ulps(arr[:n], 1 / np.sqrt(v64)).max() <= 0.5 + 1e-9


# ================================================================= AddressSanitizer run
ASAN_SUBSET = [
    "test_layer_norm[N1000-bf16]", "test_layer_norm[N8199-fp32]", "test_layer_norm[N16384-fp16]",
    "test_layer_norm_rows[gridstride-small-N]",
    "test_group_norm[(2, 40, 17, 17)-G8-fp16-wfp16-cl-silu]", "test_group_norm[(1, 4, 96, 96)-G2-fp32-wfp32-nchw]",
    "test_batch_norm[(4, 5, 40, 40)-fp32-wfp32-cl-train]", "test_batch_norm[(2, 24, 13, 11)-fp16-wfp16-nchw-eval]",
    "test_layer_norm_2d[(2, 768, 8, 8)-fp16-wfp16-nchw]", "test_batch_norm_running[bf16-cumulative]",
    "test_bug_missing_syncthreads", "test_shuffle_semantics", "test_grid_barrier_needs_resident_blocks",
]


@pytest.mark.timeout(900)
def test_asan_subset():
    """A few cases of this file again with the emulator and kernels built with AddressSanitizer
    (out-of-bounds accesses inside buffers' slack, use-after-free, stack errors)."""
    if IN_ASAN:
        pytest.skip("already the ASan run")
    if os.environ.get("FN_EMU_SKIP_ASAN") == "1":
        pytest.skip("FN_EMU_SKIP_ASAN=1")
    libs = [subprocess.run([CXX, f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in ("libasan.so", "libstdc++.so")]
    if not all(os.path.isabs(p) and os.path.exists(p) for p in libs):
        pytest.skip(f"{CXX} has no libasan.so / libstdc++.so")
    _load_build_module().build("asan")
    # libstdc++ preloaded too: python does not link it, and ASan's __cxa_throw interceptor must
    # find the real one at startup (the launchers report errors by exceptions)
    env = dict(os.environ, FN_EMU_VARIANT="asan", LD_PRELOAD=" ".join(libs),
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:detect_stack_use_after_return=0")
    ids = [f"{__file__}::{t}" for t in ASAN_SUBSET]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *ids],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (p.stdout + p.stderr)[-6000:]
    assert p.returncode == 0, "ASan run failed:\n" + tail
    assert f"{len(ASAN_SUBSET)} passed" in p.stdout, tail
    assert "ERROR: AddressSanitizer" not in p.stderr, tail
    # and ASan has teeth here: a read 4 bytes past a buffer (inside its guard slack, which the
    # byte pattern cannot show) aborts the run with a report
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_cuda_emu as T; "
              "e = T.Emu(T._load_build_module().build('asan')); e.reset_config(); d = T.Dev(e); "
              "o = d.output('out', T.F32, (300,)); T.selftest(e, 'read_far', o, 300, 300)")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "AddressSanitizer: use-after-poison" in p.stderr, p.stderr[-3000:]


# ======================================================================= kernel coverage
def test_every_kernel_instantiation_launched(emu, request):
    """Every __global__ instantiation compiled into the library from csrc/*/kernel.cuh and
    csrc/include/ ran at least once in this session: no kernel path of the CUDA backend is
    untested.  (Runs last; only meaningful for a run of the whole file.)"""
    cfg = request.config
    if cfg.getoption("keyword") or cfg.getoption("markexpr") or any("::" in a for a in cfg.args):
        pytest.skip("needs a run of the whole file")
    if request.session.testsfailed:
        pytest.skip("other tests failed")
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    lib = emu.lib._name
    out = subprocess.run([nm, "-C", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    compiled = {ln.split(" ", 2)[2] for ln in out.splitlines() if len(ln.split(" ", 2)) == 3}
    compiled = {n for n in compiled if n.startswith("void fusednorm::") and "_kernel<" in n and "(" in n}
    launched = {e[0] for e in emu.launches}
    missing = sorted(compiled - launched)
    assert len(compiled) > 100, "kernel symbols not found"
    assert not missing, f"{len(missing)} of {len(compiled)} kernel instantiations never launched:\n" + "\n".join(missing)
