"""Reading SASS without a GPU: the offline evidence for the kernels' design.

``cuobjdump -sass`` (shipped inside the Triton wheel, triton/backends/nvidia/bin) disassembles
a cubin -- Triton's ``compiled.asm["cubin"]`` or nvcc's ``-cubin`` output.  From it:

* spills: ``STL``/``LDL`` (local-memory stores/loads).  Counted directly: the stack size in
  the metadata misses spills below the register cap (seen with a 16-warp LN backward).
* vector width of global loads: ``LDG.E.128`` is a 16-byte load (``.64`` 8 bytes, no suffix
  4 bytes, ``.U16``/``.U8`` scalars).  Checked inside *main loops*: the address ranges
  closed by a backward branch.
* divisions: an IEEE fp32 division is a CALL to a subroutine (or the inline
  ``MUFU.RCP`` + refinement ``FFMA`` + ``FCHK`` slow-path check); ``FCHK`` marks each one.
* occupancy: CTAs per SM from registers, warps and shared memory, the arithmetic the
  hardware does (sm_80 / sm_90 limits below).
"""
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _tool(name):
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", name)


def sass_of_cubin(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout


@dataclass(frozen=True)
class Instr:
    addr: int
    op: str        # opcode with modifiers, e.g. "LDG.E.128.CONSTANT"
    args: str


def functions(sass: str) -> dict:
    """kernel/function name -> its instructions (a cubin may hold several)."""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = _INSTR.search(line)
        if m and name is not None:
            out[name].append(Instr(int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


def instructions(sass: str) -> list:
    """The instructions of a cubin's only (or first) function."""
    fns = functions(sass)
    return next(iter(fns.values())) if fns else []


def spills(instrs) -> int:
    """Local-memory loads and stores: register spills (and stack arrays, which the kernels
    here never use)."""
    return sum(1 for i in instrs if i.op.split(".")[0] in ("STL", "LDL"))


def loops(instrs):
    """(first, last) address of every loop: a branch whose target is at or before it."""
    out = []
    for i in instrs:
        if i.op.split(".")[0] in ("BRA", "JMP") and not i.op.startswith("BRA.DIV"):
            m = re.search(r"0x([0-9a-f]+)", i.args)
            if m and int(m.group(1), 16) <= i.addr:
                out.append((int(m.group(1), 16), i.addr))
    return out


def global_loads(instrs, lo=None, hi=None):
    """Opcodes of the global loads (LDG) between addresses lo and hi (inclusive)."""
    return [i.op for i in instrs if i.op.startswith("LDG")
            and (lo is None or lo <= i.addr <= hi)]


def load_bits(op: str) -> int:
    """Width in bits of an LDG opcode."""
    for bits in (128, 64):
        if f".{bits}" in op:
            return bits
    if ".U16" in op or ".S16" in op:
        return 16
    if ".U8" in op or ".S8" in op:
        return 8
    return 32


def main_loop_loads(instrs):
    """[(loop range, [LDG opcodes])] for every loop that loads from global memory."""
    out = []
    for lo, hi in loops(instrs):
        lds = global_loads(instrs, lo, hi)
        if lds:
            out.append(((lo, hi), lds))
    return out


def narrow_loop_loads(instrs, min_bits=128):
    """Global loads inside loops narrower than ``min_bits`` -- what a vectorized main loop
    must not have."""
    return [(rng, op) for rng, lds in main_loop_loads(instrs) for op in lds
            if load_bits(op) < min_bits]


def divisions(instrs, lo=None, hi=None) -> int:
    """IEEE fp32 divisions (each has an FCHK range check) between lo and hi."""
    return sum(1 for i in instrs if i.op.startswith("FCHK")
               and (lo is None or lo <= i.addr <= hi))


# per-SM limits (CUDA occupancy calculator): registers, warps, CTAs, shared memory bytes
_LIMITS = {80: (65536, 64, 32, 164 * 1024), 90: (65536, 64, 32, 228 * 1024)}


def ctas_per_sm(regs: int, num_warps: int, shared: int = 0, arch: int = 90) -> int:
    """Resident CTAs per SM the resources allow.  Registers are allocated per warp in units
    of 256 (8 per thread rounded up); each CTA also reserves 1 KB of shared memory."""
    reg_file, max_warps, max_ctas, smem = _LIMITS[arch]
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = reg_file // (regs_per_warp * num_warps)
    by_warps = max_warps // num_warps
    by_smem = smem // (shared + 1024)
    return max(0, min(by_regs, by_warps, max_ctas, by_smem))
