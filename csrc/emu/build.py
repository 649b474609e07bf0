"""Build the CPU-emulated CUDA backend: csrc/*/launch.cu + the emulator into one shared library.

    python csrc/emu/build.py [--variant release|asan] [--force] [-v]

prints the library's path.  tests/test_cuda_emu.py calls build() directly.  The result is cached
under <repo>/build/cuda_emu/<variant>-<hash>/ (FN_EMU_BUILD_DIR overrides the root), keyed by
the contents of every file under csrc/ that goes into it, the compiler's version and the flags,
so a test session builds once and a source edit rebuilds.  Translation units compile in
parallel (one process per core).

Extern `__shared__` arrays become undefined thread-local symbols under the emulator (cuda_emu.h
maps __shared__ to thread_local); this script defines them all as aliases of one dynamic
shared-memory buffer in a generated assembly file, which is what CUDA does with them.
"""
import argparse
import concurrent.futures
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent
ROOT = CSRC.parent
CXX = os.environ.get("CXX", "g++")
DYN_SMEM_BYTES = 227 * 1024 + 4096  # the opt-in maximum plus the checked canary

COMMON_FLAGS = [
    "-std=c++17", "-fPIC", "-g0", "-pthread",
    "-ffp-contract=off",         # IEEE ops as written: no host FMA contraction (nvcc's differs)
    "-fno-strict-aliasing",      # kernels reinterpret 16-byte packs; nvcc does not exploit it
    "-fno-extern-tls-init",      # extern __shared__ (thread_local) needs no init wrapper
    "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable",
    "-U_FORTIFY_SOURCE",         # siglongjmp out of faulting fibers crosses stacks
    "-fno-gnu-unique",           # statics of inline templates (launch caches) stay per library:
                                 # a second copy loaded in the process (launch plans) owns its own
]
VARIANT_FLAGS = {
    "release": ["-O2"],
    "asan": ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer"],
}


def sources():
    """(path, is_kernel_tu) for every translation unit."""
    tus = [(p, True) for p in sorted(CSRC.glob("*/launch.cu")) if p.parent.name != "emu"]
    tus += [(HERE / "selftest.cpp", True), (HERE / "capi.cpp", True), (HERE / "cuda_emu.cpp", False)]
    return tus


def inputs():
    """Every file whose content the library depends on."""
    files = set()
    for pattern in ("include/*", "*/kernel.cuh", "*/launch.cu", "*/*.cuh", "*/*.h", "emu/*.h", "emu/*.cpp",
                    "emu/include/*", "emu/build.py"):
        files.update(p for p in CSRC.glob(pattern) if p.is_file())
    return sorted(files)


def compiler_version():
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"cuda_emu: cannot run the C++ compiler {CXX!r}: {e}") from e


def source_hash(variant):
    h = hashlib.sha256()
    h.update(compiler_version().encode())
    h.update(repr((COMMON_FLAGS, VARIANT_FLAGS[variant], DYN_SMEM_BYTES)).encode())
    for p in inputs():
        h.update(str(p.relative_to(CSRC)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def compile_cmd(src, obj, kernel_tu, variant):
    cmd = [CXX, *COMMON_FLAGS, *VARIANT_FLAGS[variant], "-I", str(HERE / "include"), "-I", str(CSRC / "include")]
    if kernel_tu:
        cmd += ["-x", "c++", "-include", str(HERE / "cuda_emu.h")]
    return cmd + ["-c", str(src), "-o", str(obj)]


def undefined_tls(objs):
    """Undefined thread-local symbols of the objects: the extern __shared__ arrays."""
    names = set()
    for o in objs:
        out = subprocess.run(["readelf", "-sW", str(o)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 8 and f[3] == "TLS" and f[6] == "UND":
                names.add(f[7].split("@")[0])
    # TLS the C/C++ runtime libraries define themselves
    return sorted(n for n in names if not n.startswith("__") and n != "errno" and not n.startswith("_ZSt")
                  and not n.startswith("_ZNSt") and n != "fn_emu_dyn_smem")


def smem_asm(aliases):
    lines = [
        "  .section .tbss,\"awT\",@nobits",
        "  .balign 256",
        "  .globl fn_emu_dyn_smem",
        "  .type fn_emu_dyn_smem,@tls_object",
        f"  .size fn_emu_dyn_smem,{DYN_SMEM_BYTES}",
        "fn_emu_dyn_smem:",
        f"  .zero {DYN_SMEM_BYTES}",
    ]
    for a in aliases:
        lines += [f"  .globl {a}", f"  .type {a},@tls_object", f"  .set {a},fn_emu_dyn_smem"]
    lines += [
        "  .section .rodata",
        "  .balign 8",
        "  .globl fn_emu_dyn_smem_bytes",
        "  .type fn_emu_dyn_smem_bytes,@object",
        "  .size fn_emu_dyn_smem_bytes,8",
        "fn_emu_dyn_smem_bytes:",
        f"  .quad {DYN_SMEM_BYTES}",
        "  .section .note.GNU-stack,\"\",@progbits",
    ]
    return "\n".join(lines) + "\n"


def check_tls(lib):
    """Every thread-local symbol of the library must be emulated shared memory: the runtime poisons
    (and, with resident_blocks > 1, swaps) the whole TLS block of the module per block, so a real
    thread_local anywhere else in it would be clobbered."""
    out = subprocess.run(["readelf", "-sW", str(lib)], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "TLS" and f[6] != "UND":
            name = f[7].split("@")[0]
            if name.startswith(("_ZNSt", "_ZZNSt", "_ZN9__gnu_cxx", "_ZN6fn_emu", "_ZZN6fn_emu")):
                bad.append(name)
    if bad:
        raise RuntimeError(f"cuda_emu: thread_local variables that are not __shared__ memory: {bad}")


def prune(root, variant, keep):
    """Drop older builds of this variant (every source edit makes a new one)."""
    for d in root.glob(f"{variant}-*"):
        if d.is_dir() and d != keep and len(d.name) == len(variant) + 17:
            shutil.rmtree(d, ignore_errors=True)


def _run(cmd, verbose):
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cuda_emu build failed:\n$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stderr


def warnings_about(files):
    """Constructs the emulator compiles but cannot run faithfully."""
    notes = []
    for p in files:
        if p.suffix not in (".cu", ".cuh", ".h") or "emu" in p.parts:
            continue
        text = p.read_text(errors="replace")
        if "__CUDA_ARCH__" in text:
            notes.append(f"{p.relative_to(ROOT)}: code under __CUDA_ARCH__ is not emulated (the macro is undefined)")
        if re.search(r"\basm\s*(volatile\s*)?\(", text):
            notes.append(f"{p.relative_to(ROOT)}: inline asm cannot be emulated")
    return notes


def build(variant="release", force=False, verbose=False):
    """Build (or reuse) the library; returns its path."""
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FLAGS)}, got {variant!r}")
    root = Path(os.environ.get("FN_EMU_BUILD_DIR", ROOT / "build" / "cuda_emu"))
    out_dir = root / f"{variant}-{source_hash(variant)}"
    lib = out_dir / "libfusednorm_emu.so"
    if lib.exists() and not force:
        return lib
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others reuse its result
        if lib.exists() and not force:
            return lib
        tmp = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=root))
        try:
            jobs = []
            for src, kernel_tu in sources():
                obj = tmp / (src.parent.name + "_" + src.stem + ".o")
                jobs.append((compile_cmd(src, obj, kernel_tu, variant), obj))
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
                for msg in ex.map(lambda j: _run(j[0], verbose), jobs):
                    if msg.strip() and verbose:
                        print(msg, file=sys.stderr)
            objs = [o for _, o in jobs]
            asm = tmp / "dyn_smem.s"
            asm.write_text(smem_asm(undefined_tls(objs)))
            _run([CXX, "-c", str(asm), "-o", str(tmp / "dyn_smem.o")], verbose)
            flags = ["-fsanitize=address"] if variant == "asan" else []
            _run([CXX, "-shared", "-pthread", *flags, "-o", str(tmp / lib.name), *map(str, objs),
                  str(tmp / "dyn_smem.o"), "-ldl"], verbose)
            check_tls(tmp / lib.name)
            for note in warnings_about(inputs()):
                print("cuda_emu: note:", note, file=sys.stderr)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            out_dir.mkdir()
            os.replace(tmp / lib.name, lib)
            prune(root, variant, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return lib


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="release", choices=sorted(VARIANT_FLAGS))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    print(build(args.variant, args.force, args.verbose))


if __name__ == "__main__":
    main()
