"""CPU-side checks of the CUDA backend: the kernels and the binding compile (csrc/check_compile.sh
with nvcc), the offline evidence for the kernels' design read from their SASS (no spills; 128-bit
loads in the main loops of every vector path, channels_last included; no division in the
LayerNorm forward), the launch plans for the benchmark shapes (kernel, registers, CTAs per SM,
grid) printed as a table, the backend reports why it is unavailable instead of failing at import,
and the fake kernels give the shapes/dtypes the binding allocates.

The sources compile once per session (the module fixture `compiled`, both architectures in one
object per launcher); cuobjdump comes with the Triton wheel (tests/_sass.py), the launch plans
from the launchers themselves, run by the CPU emulator in dry-run mode with ptxas's register
counts (csrc/emu)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "csrc" / "check_compile.sh"
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    objdir = tmp_path_factory.mktemp("cuda_objects")
    env = dict(os.environ, PYTHON=sys.executable, FN_KEEP_OBJ=str(objdir))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc, objdir


@pytest.mark.timeout(900)
def test_cuda_sources_compile(compiled):
    proc, _ = compiled
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    assert proc.returncode == 0, f"check_compile.sh exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "check_compile: OK" in proc.stdout
    # every launcher was compiled for both architectures and reported its kernels
    for arch in ARCHS:
        assert f"{arch} regs=" in proc.stdout
    assert "kernels with spills: 0" in proc.stdout


# ------------------------------------------------------------------------------ SASS
def _demangle(names):
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt not found")
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.split("\n")[:len(names)]


def _short(name):
    """'void fusednorm::row::fwd_kernel<...>(args)' -> 'row::fwd_kernel<...>'."""
    name = re.sub(r"^void ", "", name).replace("fusednorm::", "")
    depth = 0
    for i, ch in enumerate(name):  # cut the parameter list (the parenthesis at template depth 0)
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name


@pytest.fixture(scope="module")
def sass(compiled):
    """{arch: {short kernel name: [Instr]}} and {arch: {full demangled name: (regs, smem)}}."""
    proc, objdir = compiled
    if proc.returncode != 0:
        pytest.skip("the sources did not compile")
    try:
        import _sass
        cuobjdump = _sass._tool("cuobjdump")
    except ImportError as e:
        pytest.skip(f"no cuobjdump (it ships with the Triton wheel): {e}")
    if not os.path.exists(cuobjdump):
        pytest.skip(f"no cuobjdump at {cuobjdump}")
    code, resources = {a: {} for a in ARCHS}, {a: {} for a in ARCHS}
    objs = sorted(objdir.glob("*.o"))
    assert len(objs) == 4, objs

    def disassemble(job):
        obj, arch = job
        return arch, subprocess.run([cuobjdump, "-sass", "-arch", arch, str(obj)], capture_output=True, text=True,
                                    check=True).stdout

    from concurrent.futures import ThreadPoolExecutor  # ~16 s of cuobjdump, spread over the cores

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = list(pool.map(disassemble, [(obj, arch) for obj in objs for arch in ARCHS]))
    parsed = [(arch, _sass.functions(text)) for arch, text in texts]
    full = iter(_demangle([m for _, fns in parsed for m in fns]))  # one c++filt for all
    for arch, fns in parsed:
        for ins in fns.values():
            code[arch][_short(next(full))] = ins
    for obj in objs:
        # ptxas -v: registers and static shared memory per kernel and architecture
        fn = arch = None
        for line in (objdir / (obj.stem + ".log")).read_text(errors="replace").splitlines():
            m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
            if m:
                fn, arch = m.groups()
                continue
            m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
            if m and fn:
                resources[arch][fn] = (int(m.group(1)), int(m.group(2) or 0))
                fn = None
    for arch in ARCHS:
        names = list(resources[arch])
        resources[arch] = dict(zip(_demangle(names), resources[arch].values()))
    return code, resources


def _vec(name):
    """The vector width template argument of a kernel of the patterns (1: the scalar path)."""
    dt = r"(?:__half|__nv_bfloat16|float)"
    for pat in (r"FwdOp<[^>]*>, (\d+),", rf"_kernel<{dt}, {dt}, (\d+)[,>]", r"Op<[^>]*>, (\d+)>"):
        m = re.search(pat, name)
        if m:
            return int(m.group(1))
    return None


def _ldgs(name):
    m = re.search(r"Shape<\d+, \d+, (\d+)", name)
    return int(m.group(1)) if m else 0


# Narrow (< 128-bit) global loads a vector path's main loop may hold, by design: per-row or
# per-channel scalars, never the tensor data (a 16-bit tensor loaded element by element would
# be 8 narrow loads per vector: 8 * LDGS and more).
def _narrow_allowed(name):
    if "ln::layer_norm_bwd_kernel" in name:
        return 2                    # mean[row], rstd[row] of the prefetched row
    if "gn::RowsFwdOp" in name:
        return 4 * _ldgs(name)      # w[c], b[c] per slot (a vector lies in one channel), on the
                                    # SiLU and the plain path
    if "gn::rows_bwd" in name:
        return 6 * _ldgs(name) + 2  # w[c], b[c] per slot, both passes; mean, rstd per row
    if "map_nchw_kernel" in name:
        return 16                   # a plane's coefficients, per (plane, chunk) item
    if "ln2d::fwd" in name:
        return 16                   # w[c], b[c] of the 4 channels in flight (data: 32 and more)
    if "ln2d::bwd" in name:
        return 12                   # w[c] of the 2 channels in flight, their partial-row updates
    return 0


VECTOR_FAMILIES = ("row::fwd_kernel<", "row::fwd_looped_kernel<", "ln::layer_norm_bwd_kernel<",
                   "ln::layer_norm_bwd_looped_kernel<", "gn::rows_bwd_kernel<", "gn::rows_bwd_looped_kernel<",
                   "chan::reduce_cl_kernel<", "chan::reduce_nchw_kernel<", "chan::map_cl_kernel<",
                   "chan::map_nchw_kernel<", "ln2d::fwd_kernel<", "ln2d::bwd_kernel<")


def _main_loops(instrs):
    """The loops that hold 128-bit global loads in their own body (not in a nested loop) and
    contain no other such loop: where a kernel streams its tensors."""
    import _sass

    loops = _sass.loops(instrs)

    def own(lo, hi):
        inner = [(a, b) for a, b in loops if lo <= a and b <= hi and (a, b) != (lo, hi)]
        return [i.op for i in instrs if i.op.startswith("LDG") and lo <= i.addr <= hi
                and not any(a <= i.addr <= b for a, b in inner)]

    with128 = [(lo, hi) for lo, hi in loops if any(_sass.load_bits(o) == 128 for o in own(lo, hi))]
    out = []
    for lo, hi in with128:
        if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in with128):
            out.append(own(lo, hi))
    return out


def _family(name):
    """'chan::reduce_cl_kernel<bn::GradSumsOp<__half>, 8>' -> 'chan::reduce_cl_kernel<bn::GradSumsOp> v8'."""
    head = name.split("<", 1)[0]
    m = re.match(r"[^<]*<(?:fusednorm::)?([a-z0-9]+::[A-Za-z]+)", name)
    op = f"<{m.group(1)}>" if m and head.startswith(("row::", "chan::")) else ""
    m = re.search(r"Shape<(\d+), (\d+), (\d+)", name)
    shape = f" {m.group(1)}x{m.group(2)}w x{m.group(3)}" if m else ""
    return f"{head}{op}{shape} v{_vec(name) or 1}"


def evidence_table(code, resources, arch="sm_90"):
    """One line per kernel family (dtype instantiations together): instantiations, max registers,
    spill instructions, 128-bit loads / narrow loads in the main loops (min over the family), and
    IEEE divisions anywhere -- the offline evidence, printed by the SASS tests."""
    import _sass

    regs = {_short(n): r for n, (r, _) in resources[arch].items()}
    fams = {}
    for name, ins in code[arch].items():
        loops = _main_loops(ins)
        wide = min((sum(_sass.load_bits(o) == 128 for o in ops) for ops in loops), default=0)
        narrow = max((sum(_sass.load_bits(o) < 128 for o in ops) for ops in loops), default=0)
        f = fams.setdefault(_family(name), [0, 0, 0, None, 0, 0])
        f[0] += 1
        f[1] = max(f[1], regs.get(name, 0))
        f[2] += _sass.spills(ins)
        f[3] = wide if f[3] is None else min(f[3], wide)
        f[4] = max(f[4], narrow)
        f[5] += _sass.divisions(ins)
    width = max(map(len, fams))
    lines = [f"{'kernel family (' + arch + ')':<{width}} {'n':>3} {'regs':>4} {'spill':>5} {'LDG128':>6} "
             f"{'narrow':>6} {'div':>4}"]
    for k in sorted(fams):
        n, r, sp, w, na, dv = fams[k]
        lines.append(f"{k:<{width}} {n:>3} {r:>4} {sp:>5} {w:>6} {na:>6} {dv:>4}")
    return "\n".join(lines)


def test_sass_no_spills(sass):
    """No local-memory traffic (STL/LDL) in any kernel, for either architecture: ptxas's spill
    report misses stack arrays, the SASS does not."""
    import _sass

    code, resources = sass
    print("\n" + evidence_table(code, resources))
    bad = [(arch, n, _sass.spills(ins)) for arch in ARCHS for n, ins in code[arch].items() if _sass.spills(ins)]
    assert len(code["sm_90"]) > 250, len(code["sm_90"])
    assert not bad, bad


def test_sass_main_loops_load_128_bits(sass):
    """Every vector path (row pattern, channel patterns in both layouts, forward and backward)
    streams its tensors with 16-byte loads (LDG.E.128) in its main loop; narrow loads there are
    at most the design's per-row / per-channel scalars."""
    import _sass

    code, _ = sass
    checked = 0
    for arch in ARCHS:
        for name, ins in code[arch].items():
            if not name.startswith(VECTOR_FAMILIES) or (_vec(name) or 1) == 1:
                continue
            loops = _main_loops(ins)
            assert loops, f"{arch} {name}: no main loop with 128-bit loads"
            for ops in loops:
                narrow = [o for o in ops if _sass.load_bits(o) < 128]
                assert len(narrow) <= _narrow_allowed(name), f"{arch} {name}: narrow loads {narrow}"
            checked += 1
    cl = [n for n in code["sm_90"] if ("reduce_cl_kernel" in n or "map_cl_kernel" in n) and (_vec(n) or 1) > 1]
    assert len(cl) >= 20, cl  # channels_last: BatchNorm and GroupNorm, reductions and maps
    assert checked > 200, checked


def test_sass_layer_norm_forward_has_no_division(sass):
    """The LayerNorm/RMSNorm forward (every shape, cached and looped) computes its statistics
    without an IEEE division anywhere (each has an FCHK range check): sums times 1/N."""
    import _sass

    code, _ = sass
    fwd = {(arch, n): ins for arch in ARCHS for n, ins in code[arch].items()
           if n.startswith(("row::fwd_kernel<ln::FwdOp", "row::fwd_looped_kernel<ln::FwdOp"))}
    assert len(fwd) == 2 * 5 * 10, len(fwd)  # 5 dtype pairs x (6 vector + 4 scalar) kernels, 2 arches
    bad = [(k, _sass.divisions(ins)) for k, ins in fwd.items() if _sass.divisions(ins)]
    assert not bad, bad


# ---------------------------------------------------------------- launch plans (table)
BF16, F32 = 2, 0
BENCH = [  # (op, shape, x dtype, channels_last)
    *[("layer_norm", (16384, n), BF16, False) for n in (1024, 4096, 8192, 16384)],
    *[("rms_norm", (16384, n), BF16, False) for n in (1024, 4096, 8192, 16384)],
    *[("group_norm", (32, 320, 64, 64), dt, cl) for dt in (BF16, F32) for cl in (False, True)],
    *[("instance_norm", (32, 64, 128, 128), BF16, cl) for cl in (False, True)],
    *[("batch_norm", (256, 256, 28, 28), dt, cl) for dt in (BF16, F32) for cl in (False, True)],
    *[("layer_norm_2d", (32, 192, 56, 56), BF16, cl) for cl in (False, True)],  # ConvNeXt-T stage 2
]


def _plan(emu, op, shape, dt, cl):
    """(pass, launch log) of the forward and backward of one benchmark case, run dry."""
    p = lambda k: 0x100000000 * k  # noqa: E731  (distinct, 256-byte aligned, never touched)
    out = []

    def call(kind, name, *args):
        emu.call(name, *args)
        out.append((kind, emu.last_log))

    if op in ("layer_norm", "rms_norm"):
        M, N = shape
        rms = int(op == "rms_norm")
        call("fwd", "fn_layer_norm_fwd", p(1), N, None, 0, p(2), None if rms else p(3), p(4), None,
             None if rms else p(5), p(6), M, N, 1e-5, rms, dt, dt, 0)
        call("bwd", "fn_layer_norm_bwd", p(7), None, p(1), N, p(2), None if rms else p(5), p(6), p(8), p(9),
             None if rms else p(10), p(11), M, N, rms, dt, dt, 0)
    elif op in ("group_norm", "instance_norm"):
        N, C = shape[:2]
        S = shape[2] * shape[3]
        G = 32 if op == "group_norm" else C
        call("fwd", "fn_group_norm_fwd", p(1), p(2), p(3), p(4), p(5), p(6), p(7), N, C, S, G, 1e-5, 0, int(cl),
             dt, dt, 0)
        call("bwd", "fn_group_norm_bwd", p(8), p(1), p(2), p(3), p(5), p(6), p(9), p(10), p(11), p(12), N, C, S, G,
             0, int(cl), dt, dt, 0)
    elif op == "layer_norm_2d":
        N, C = shape[:2]
        S = shape[2] * shape[3]
        call("fwd", "fn_layer_norm_2d_fwd", p(1), p(2), p(3), p(4), p(5), p(6), N, C, S, 1e-6, int(cl), dt, dt, 0)
        call("bwd", "fn_layer_norm_2d_bwd", p(7), p(1), p(2), p(5), p(6), p(8), p(9), p(10), p(11), N, C, S, int(cl),
             dt, dt, 0)
    else:
        N, C = shape[:2]
        S = shape[2] * shape[3]
        call("fwd", "fn_batch_norm_fwd", p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), p(9), F32, F32, p(10), 0.1,
             0, p(11), N, C, S, 1e-5, 1, int(cl), dt, dt, 0)
        call("bwd", "fn_batch_norm_bwd", p(12), p(1), p(2), p(5), p(6), p(13), p(14), p(15), p(16), N, C, S, 1,
             int(cl), dt, dt, 0)
    return out


def test_launch_plans_for_the_benchmark_shapes(sass, tmp_path):
    """The launchers' own plans for the benchmark shapes (the emulator runs them dry, answering
    occupancy queries with ptxas's sm_90 registers and shared memory), with registers and CTAs
    per SM: printed as the offline evidence table, and the design's grid rules checked."""
    import _sass
    import test_cuda_emu as T

    code, resources = sass
    lib = Path(T._load_build_module().build(T.VARIANT))
    fresh = tmp_path / lib.name  # a copy: its own launch caches (resident CTAs per kernel)
    shutil.copy(lib, fresh)
    emu = T.Emu(fresh)
    emu.lib.fn_emu_set_kernel_resources.argtypes = [T.ctypes.c_char_p, T.I, T.I]
    for name, (regs, smem) in resources["sm_90"].items():
        emu.lib.fn_emu_set_kernel_resources(name.encode(), regs, smem)
    emu.reset_config()
    emu.config(dry_run=1)
    sms = 132
    rows = []
    for op, shape, dt, cl in BENCH:
        for kind, log in _plan(emu, op, shape, dt, cl):
            for name, grid, block, smem in log:
                regs, static = resources["sm_90"].get(name, (0, 0))
                threads = 1
                for d in block.split(","):
                    threads *= int(d)
                ctas = _sass.ctas_per_sm(regs, (threads + 31) // 32, static + int(smem))
                g = [int(v) for v in grid.split(",")]
                rows.append((f"{op} {'x'.join(map(str, shape))} {'bf16' if dt == BF16 else 'fp32'}"
                             f"{' cl' if cl else ''} {kind}", _short(name), regs, ctas, g[0] * g[1] * g[2], threads,
                             int(smem)))
    emu.config(dry_run=0)
    width = max(len(r[1]) for r in rows)
    print(f"\n{'case':<38} {'kernel':<{width}} {'regs':>4} {'CTA/SM':>6} {'grid':>7} {'thr':>4} {'dsmem':>6}")
    for case, kern, regs, ctas, grid, thr, smem in rows:
        print(f"{case:<38} {kern:<{width}} {regs:>4} {ctas:>6} {grid:>7} {thr:>4} {smem:>6}")
    for case, kern, regs, ctas, grid, thr, smem in rows:
        assert regs > 0 and ctas >= 1, (case, kern)
        if kern.startswith(("row::", "ln::layer_norm_bwd", "gn::rows_bwd", "ln2d::")):  # persistent: one wave
            assert grid <= sms * ctas, (case, kern, grid, ctas)
        if kern.startswith(("ln::layer_norm_bwd", "ln2d::bwd")):  # 1 to 4 partial rows per SM
            assert grid <= sms * 4, (case, kern, grid)
        if kern.startswith("ln::colsum_kernel") and case.startswith(("layer_norm ", "rms_norm ")):
            assert grid >= sms, (case, kern, grid)  # dweight and dbias: one launch, >= 132 blocks
        if kern.startswith("chan::reduce"):  # a few blocks per SM, not one per plane
            assert grid <= 4 * sms * 2, (case, kern, grid)


# ------------------------------------------------------------------- the Python adapter
def test_unavailable_reason_without_cuda():
    from fusednorm.backends import cuda

    assert cuda.SUPPORTED >= {"layer_norm", "group_norm", "batch_norm"}
    if torch.version.cuda is None:
        assert cuda.unavailable_reason() == "torch has no CUDA (torch.version.cuda is None)"
        with pytest.raises(RuntimeError, match="torch has no CUDA"):
            cuda.layer_norm_fwd(torch.randn(2, 8), None, None, None, 1e-5, False)
        with pytest.raises(RuntimeError, match="torch has no CUDA"):
            cuda.instance_norm_running(torch.randn(2, 8), torch.rand(2, 8), None, None, 0.1, 1e-5, 4)
    elif not torch.cuda.is_available():
        assert cuda.unavailable_reason() == "no CUDA device"
    else:
        reason = cuda.unavailable_reason()
        assert reason is None or "extension not built" in reason, reason


def test_fake_kernels_shapes():
    from fusednorm.backends import cuda

    x = torch.empty(6, 40, device="meta", dtype=torch.bfloat16)
    w = torch.empty(40, device="meta", dtype=torch.float32)
    out, xsum, mean, rstd = cuda.FAKES["layer_norm_fwd"](x, x, w, None, 1e-5, True)
    assert out.shape == (6, 40) and out.dtype == torch.bfloat16 and xsum.shape == (6, 40)
    assert mean.numel() == 0 and rstd.shape == (6,) and rstd.dtype == torch.float32
    dx, dw, db = cuda.FAKES["layer_norm_bwd"](x, None, x, w, None, None, rstd, True)
    assert dx.shape == (6, 40) and dw.dtype == torch.float32 and db.numel() == 0

    x4 = torch.empty(2, 8, 3, 5, device="meta").to(memory_format=torch.channels_last)
    out, mean, rstd = cuda.FAKES["group_norm_fwd"](x4, None, None, 4, 1e-5, "silu")
    assert out.stride() == x4.stride() and mean.shape == (2, 4)
    rm = torch.empty(8, device="meta", dtype=torch.bfloat16)
    nbt = torch.empty((), device="meta", dtype=torch.int64)
    out, mean, rstd, var = cuda.FAKES["batch_norm_fwd"](x4, None, None, rm, rm, True, 1e-5, None, nbt)
    assert out.stride() == x4.stride() and var.shape == (8,) and mean.dtype == torch.float32
    out, mean, rstd, var = cuda.FAKES["batch_norm_fwd"](x4, None, None, rm, rm, False, 1e-5, 0.1, None)
    assert mean.shape == (8,) and rstd.shape == (8,) and var.numel() == 0
    dx, dw, db = cuda.FAKES["batch_norm_bwd"](x4, x4, None, mean, rstd, True)
    assert dw.numel() == 0 and db.shape == (8,) and db.dtype == x4.dtype
    assert cuda.FAKES["instance_norm_running"](mean.view(2, 4), rstd.view(2, 4), rm[:4], None, 0.1, 1e-5, 15) is None
    out, mean, rstd = cuda.FAKES["layer_norm_2d_fwd"](x4, None, rm, 1e-6)
    assert out.stride() == x4.stride() and mean.shape == rstd.shape == (2, 3, 5) and mean.dtype == torch.float32
    dx, dw, db = cuda.FAKES["layer_norm_2d_bwd"](x4, x4, None, rm, mean, rstd)
    assert dx.stride() == x4.stride() and dw.numel() == 0 and db.shape == (8,) and db.dtype == torch.bfloat16


# ------------------------------------------------- binding.cpp's schemas vs the Python side
def _binding_schemas():
    """{op name: schema string} from the m.def(...) calls of csrc/binding.cpp (adjacent string
    literals joined, as the C++ compiler does)."""
    src = (ROOT / "csrc" / "binding.cpp").read_text()
    body = src[src.index("TORCH_LIBRARY(fusednorm_cuda"):]
    body = body[:body.index("TORCH_LIBRARY_IMPL")]
    defs = {}
    for call in re.findall(r"m\.def\(((?:\s*\"(?:[^\"\\]|\\.)*\"\s*)+)\)", body):
        schema = "".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", call))
        defs[schema[:schema.index("(")]] = schema
    impls = re.findall(r"m\.impl\(\"(\w+)\"", src)
    return defs, impls


# Meta arguments for each contract function of backends/cuda.py (the shapes the contract passes).
def _contract_calls():
    meta = dict(device="meta")
    x = torch.empty(6, 40, dtype=torch.bfloat16, **meta)
    w40 = torch.empty(40, dtype=torch.float32, **meta)
    st6 = torch.empty(6, **meta)
    x4 = torch.empty(2, 8, 3, 5, **meta).to(memory_format=torch.channels_last)
    w8 = torch.empty(8, **meta)
    st24 = torch.empty(2, 4, **meta)
    st_pos = torch.empty(2, 3, 5, **meta)
    st8 = torch.empty(8, **meta)
    rm = torch.empty(8, dtype=torch.bfloat16, **meta)
    nbt = torch.empty((), dtype=torch.int64, **meta)
    return [
        ("layer_norm_fwd", (x, x, w40, w40, 1e-5, False), 4),
        ("layer_norm_fwd", (x, None, w40, None, 1e-5, True), 4),
        ("layer_norm_bwd", (x, x, x, w40, w40, st6, st6, False), 3),
        ("layer_norm_bwd", (x, None, x, w40, None, None, st6, True), 3),
        ("layer_norm_2d_fwd", (x4, w8, w8, 1e-6), 3),
        ("layer_norm_2d_bwd", (x4, x4, w8, None, st_pos, st_pos), 3),
        ("group_norm_fwd", (x4, w8, w8, 4, 1e-5, "silu"), 3),
        ("group_norm_bwd", (x4, x4, None, w8, st24, st24, 4, ""), 3),
        ("batch_norm_fwd", (x4, w8, w8, rm, rm, True, 1e-5, None, nbt), 4),
        ("batch_norm_fwd", (x4, None, None, rm, rm, False, 1e-5, 0.1, None), 4),
        ("batch_norm_bwd", (x4, x4, w8, st8, st8, True), 3),
        ("instance_norm_running", (st24, st24, rm[:4], None, 0.1, 1e-5, 15), None),
    ]


def test_binding_schemas_match_the_python_side():
    """Without the extension the fakes never meet the real schemas, so: every op csrc/binding.cpp
    defines has an impl and a fake whose parameters are the schema's arguments (names, order),
    and the contract functions of backends/cuda.py, run against those schemas (defined here in a
    scratch torch.library namespace, with the fakes as their kernels, on meta tensors), pass
    arguments the schemas accept and get back the return arity they unpack."""
    import inspect

    from fusednorm.backends import cuda

    defs, impls = _binding_schemas()
    assert len(defs) == 9, sorted(defs)
    assert sorted(impls) == sorted(defs)
    assert set(cuda.FAKES) == set(defs)
    n_returns = {}
    for name, schema in defs.items():
        parsed = torch._C.parse_schema("fusednorm_cuda::" + schema)
        params = list(inspect.signature(cuda.FAKES[name]).parameters)
        assert params == [a.name for a in parsed.arguments], (name, params, schema)
        assert all(str(r.type) == "Tensor" for r in parsed.returns), schema
        n_returns[name] = len(parsed.returns)
    # the fakes' return arity, checked before the dispatcher sees them (a wrong arity from a
    # fake crashes the process there instead of raising)
    for name, args, n_out in _contract_calls():
        res = cuda.FAKES[name](*args)
        assert (res is None) if n_returns[name] == 0 else len(res) == n_returns[name] == n_out, (name, res)

    ns = "fusednorm_cuda_schema_test"
    lib = torch.library.Library(ns, "FRAGMENT")
    try:
        for name, schema in defs.items():
            lib.define(schema)
            torch.library.register_fake(f"{ns}::{name}", cuda.FAKES[name], lib=lib)
        ops = getattr(torch.ops, ns)
        called = set()
        for name, args, n_out in _contract_calls():
            res = getattr(ops, name)(*args)  # the real schema checks the argument types
            if n_out is None:
                assert res is None, name
            else:
                assert isinstance(res, (tuple, list)) and len(res) == n_out, (name, res)
            called.add(name)
        assert called == set(defs)

        # the adapter's own calls (argument conversion, unpacking) through the same schemas
        orig = cuda._ops
        cuda._ops = lambda: ops
        try:
            for name, args, n_out in _contract_calls():
                kwargs = {}
                if name == "batch_norm_fwd":
                    args, kwargs = args[:7], dict(momentum=args[7], num_batches_tracked=args[8])
                res = getattr(cuda, name)(*args, **kwargs)
                assert (res is None) if n_out is None else len(res) in (3, 4), name
        finally:
            cuda._ops = orig
    finally:
        lib._destroy()
