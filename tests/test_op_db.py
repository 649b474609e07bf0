"""torch's input rules, exactly: every OpInfo sample and error input PyTorch itself tests its
norm ops with (``torch.testing._internal.common_methods_invocations.op_db``) goes through
fusednorm, forward and backward, and must give what torch gives.

For each op below, each dtype op_db lists for the CPU (fp16, bf16, fp32, fp64; complex for
rms_norm) and each backend (auto -- torch's native kernels on a CPU --, the reference, and the
Triton interpreter on a covering subset), every sample of ``sample_inputs`` and
``reference_inputs`` is run twice, through torch's op and through the fusednorm function that
replaces it (native_* ops map to their functional equivalents; their statistics are compared
with the ones fusednorm computes, through the internal ``functional._<norm>`` entries):

* both accept: the outputs that exist in both (output; mean/rstd or save_mean/save_invstd;
  the running statistics after the call) and the gradients of the output with respect to
  input, weight and bias agree within a tolerance per dtype (NaN where torch gives NaN);
* torch refuses (a sample or an ``error_inputs`` entry): fusednorm refuses with an exception
  of torch's type (``isinstance``: NotImplementedError is a RuntimeError, as in Python);
* fusednorm refusing what torch accepts, or accepting what torch refuses, is a disagreement.

Every disagreement that remains is listed in ``EXCLUSIONS`` with the reason, and the test
fails both on an unlisted disagreement and on an exclusion that no longer matches anything
(no silent skips).  ``python tests/test_op_db.py`` prints the disagreement rate per op
(``--backends``, ``--no-exclusions``).  Before issue #14's item 5 it was 117 of 781 cases
(15.0%; 14.0% of the fp32/fp64/bf16 ones) on the reference, then the CPU default: negative eps
refused, ValueError/TypeError where torch raises RuntimeError, complex rms_norm and the empty
1-D batch_norm refused.  Now: 0 on auto/native and on the Triton subset, and on the reference
only the listed exclusion.
"""
import argparse
import collections
import dataclasses
import os
import sys
from typing import Callable, Optional

import pytest
import torch

pytest.importorskip("expecttest", reason="torch's OpInfo database needs expecttest "
                                         "(requirements-ci.txt)")
pytest.importorskip("hypothesis", reason="torch's OpInfo database needs hypothesis "
                                         "(requirements-ci.txt)")

import fusednorm  # noqa: E402
from fusednorm import functional as Fn  # noqa: E402

OPS = ("nn.functional.layer_norm", "nn.functional.rms_norm", "nn.functional.group_norm",
       "nn.functional.instance_norm", "nn.functional.batch_norm", "native_layer_norm",
       "native_group_norm", "native_batch_norm", "_native_batch_norm_legit",
       "_batch_norm_with_update")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64,
          torch.complex128)
# |ours - torch| <= TOL * max(1, |torch|) elementwise: both compute in fp32 (fp64 for fp64)
# but in different orders; half dtypes are one or two ulps apart after the final rounding
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2,
       torch.float16: 2e-3, torch.complex64: 2e-5, torch.complex128: 1e-10}


# --------------------------------------------------------------------------- the mapping
def _nd(t):
    return t.detach() if isinstance(t, torch.Tensor) else t


def _bn_outs(res, rm, rv, training):
    out, mean, rstd = res[0], res[1], res[2]
    d = {"out": out, "running_mean": rm, "running_var": rv}
    if training and mean is not None and mean.numel():
        d.update(mean=mean, rstd=rstd)
    return d


def _torch(name, x, args, kwargs):
    """torch's op -> {what: tensor}; running buffers are the (cloned) tensors passed in."""
    F = torch.nn.functional
    if name == "nn.functional.layer_norm":
        return {"out": F.layer_norm(x, *args, **kwargs)}
    if name == "nn.functional.rms_norm":
        return {"out": F.rms_norm(x, *args, **kwargs)}
    if name == "nn.functional.group_norm":
        return {"out": F.group_norm(x, *args, **kwargs)}
    if name == "nn.functional.instance_norm":
        return {"out": F.instance_norm(x, *args, **kwargs), **_buffers(name, args, kwargs)}
    if name == "nn.functional.batch_norm":
        return {"out": F.batch_norm(x, *args, **kwargs), **_buffers(name, args, kwargs)}
    if name == "native_layer_norm":
        out, mean, rstd = torch.native_layer_norm(x, *args, **kwargs)
        return {"out": out, "mean": mean, "rstd": rstd}
    if name == "native_group_norm":
        out, mean, rstd = torch.native_group_norm(x, *args, **kwargs)
        return {"out": out, "mean": mean, "rstd": rstd}
    a = _bn_args(name, args)
    if name == "native_batch_norm":
        res = torch.native_batch_norm(x, *args)
    elif name == "_native_batch_norm_legit":
        res = torch.ops.aten._native_batch_norm_legit(x, *args)
    else:
        res = torch.ops.aten._batch_norm_with_update(x, *args)
    return _bn_outs(res, a["rm"], a["rv"], a["training"])


def _buffers(name, args, kwargs):
    keys = ("running_mean", "running_var")
    if name == "nn.functional.batch_norm":
        vals = list(args[:2]) + [None] * (2 - len(args[:2]))
    else:
        vals = [None, None]
    out = {}
    for i, k in enumerate(keys):
        v = kwargs.get(k, vals[i])
        if isinstance(v, torch.Tensor):
            out[k] = v
    return out


def _bn_args(name, args):
    """(weight, bias, running_mean, running_var, training, momentum, eps) of the native
    batch-norm ops' positional arguments."""
    if name == "native_batch_norm" or (name == "_native_batch_norm_legit" and len(args) == 7):
        w, b, rm, rv, training, momentum, eps = args
    elif name == "_native_batch_norm_legit":
        (w, b, training, momentum, eps), rm, rv = args, None, None
    else:  # _batch_norm_with_update
        (w, b, rm, rv, momentum, eps), training = args, True
    return dict(w=w, b=b, rm=rm, rv=rv, training=training, momentum=momentum, eps=eps)


def _ours(name, x, args, kwargs, backend):
    """The fusednorm function that replaces torch's op -> {what: tensor}."""
    kw = dict(kwargs, backend=backend)
    if name == "nn.functional.layer_norm":
        return {"out": fusednorm.layer_norm(x, *args, **kw)}
    if name == "nn.functional.rms_norm":
        return {"out": fusednorm.rms_norm(x, *args, **kw)}
    if name == "nn.functional.group_norm":
        return {"out": fusednorm.group_norm(x, *args, **kw)}
    if name == "nn.functional.instance_norm":
        return {"out": fusednorm.instance_norm(x, *args, **kw), **_buffers(name, args, kwargs)}
    if name == "nn.functional.batch_norm":
        return {"out": fusednorm.batch_norm(x, *args, **kw), **_buffers(name, args, kwargs)}
    if name == "native_layer_norm":
        shape, w, b, eps = args
        out, mean, rstd = Fn._layer_norm("layer_norm", x, shape, w, b, eps, None, False,
                                         backend, False)[:3]
        return {"out": out, "mean": mean, "rstd": rstd}
    if name == "native_group_norm":
        w, b, n, c, hxw, group, eps = args
        out, mean, rstd = Fn._group_norm("group_norm", x, group, w, b, eps, None, backend)[:3]
        return {"out": out, "mean": mean, "rstd": rstd}
    a = _bn_args(name, args)
    res = Fn._batch_norm("batch_norm", x, a["rm"], a["rv"], a["w"], a["b"], a["training"],
                         a["momentum"], a["eps"], backend)
    return _bn_outs(res, a["rm"], a["rv"], a["training"])


# ------------------------------------------------------------------------ one comparison
def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(t) for t in v)
    return v


def _leaves(x, args, kwargs):
    """input, weight and bias as the op takes them (those that require grad)."""
    cands = [x] + [a for a in args if isinstance(a, torch.Tensor)] + \
        [kwargs.get(k) for k in ("weight", "bias")]
    return [t for t in cands if isinstance(t, torch.Tensor) and t.requires_grad]


def _run(fn, x, args, kwargs, seed):
    """-> (outputs dict, grads list) or an exception."""
    x, args, kwargs = _clone(x), _clone(args), {k: _clone(v) for k, v in kwargs.items()}
    try:
        outs = fn(x, args, kwargs)
    except Exception as e:  # noqa: BLE001 - the exception is the result
        return e
    out = outs["out"]
    leaves = _leaves(x, args, kwargs)
    grads = []
    if leaves and out.requires_grad and not out.is_complex():
        g = torch.Generator().manual_seed(seed)
        dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        try:
            grads = list(torch.autograd.grad(out, leaves, dy, allow_unused=True))
        except Exception as e:  # noqa: BLE001
            return e
    return {k: _nd(v) for k, v in outs.items()}, [_nd(t) for t in grads]


def _differs(what, a, b, dtype, exact_dtype):
    """None when ours (a) matches torch's (b), else what differs."""
    if a is None or b is None:
        return None if a is None and b is None else f"{what}: {a is None} vs {b is None}"
    if a.numel() != b.numel() or (exact_dtype and a.shape != b.shape):
        return f"{what}: shape {tuple(a.shape)} vs torch {tuple(b.shape)}"
    if exact_dtype and a.dtype != b.dtype:
        return f"{what}: dtype {a.dtype} vs torch {b.dtype}"
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.to(torch.complex128)), torch.view_as_real(
            b.to(torch.complex128))
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return f"{what}: NaN at {int(torch.isnan(a).sum())} vs torch {int(torch.isnan(b).sum())}"
    fin = torch.isfinite(b)
    if not torch.equal(a[~fin & ~torch.isnan(b)], b[~fin & ~torch.isnan(b)]):
        return f"{what}: infinities differ"
    a, b = a[fin], b[fin]
    if a.numel():
        tol = TOL[dtype] * b.abs().clamp_min(1.0)
        bad = (a - b).abs() > tol
        if bad.any():
            return f"{what}: max |diff| {(a - b).abs().max().item():.3g}"
    return None


def compare(name, sample, dtype, backend, seed=0):
    """None when fusednorm and torch agree on this sample, else a description."""
    x, args, kwargs = sample.input, tuple(sample.args), dict(sample.kwargs)
    theirs = _run(lambda x, a, k: _torch(name, x, a, k), x, args, kwargs, seed)
    ours = _run(lambda x, a, k: _ours(name, x, a, k, backend), x, args, kwargs, seed)
    if isinstance(theirs, Exception) or isinstance(ours, Exception):
        if isinstance(theirs, Exception) and isinstance(ours, Exception):
            if isinstance(ours, type(theirs)):
                return None
            return (f"raises {type(ours).__name__} ({str(ours)[:120]}) where torch raises "
                    f"{type(theirs).__name__} ({str(theirs)[:80]})")
        if isinstance(theirs, Exception):
            return f"accepts what torch refuses with {type(theirs).__name__}: {str(theirs)[:100]}"
        return f"refuses what torch accepts: {type(ours).__name__}: {str(ours)[:160]}"
    (o_outs, o_grads), (t_outs, t_grads) = ours, theirs
    if len(o_grads) != len(t_grads):
        return f"{len(o_grads)} gradients vs torch {len(t_grads)}"
    pairs = [(k, o_outs.get(k), t) for k, t in t_outs.items()] + \
        [(f"grad[{i}]", a, b) for i, (a, b) in enumerate(zip(o_grads, t_grads))]
    exact = None
    for key, a, b in pairs:
        why = _differs(key, a, b, dtype, exact_dtype=key == "out" or key.startswith("grad"))
        if why is None:
            continue
        if dtype in (torch.float64, torch.complex128) or why.startswith(
                (f"{key}: shape", f"{key}: dtype", f"{key}: NaN", f"{key}: inf")):
            return why
        # Not within TOL of torch in a low-precision dtype: fine when ours is as accurate as
        # torch's, both measured against torch's op in float64 on the same values (the
        # accuracy rule of the rest of the suite: at most 2x torch's error + TOL)
        if exact is None:
            exact = _run(lambda x, a, k: _torch(name, x, a, k), *_upcast(x, args, kwargs),
                         seed)
            if isinstance(exact, Exception):
                return why
            exact = dict(exact[0], **{f"grad[{i}]": g for i, g in enumerate(exact[1])})
        ref = exact.get(key)
        if ref is None or ref.shape != b.shape:
            return why
        ref = ref.double()
        scale = ref.abs().max().clamp_min(1.0).item() if ref.numel() else 1.0
        err_ours = (a.double() - ref).abs().nan_to_num(0).max().item()
        err_torch = (b.double() - ref).abs().nan_to_num(0).max().item()
        if err_ours > 2 * err_torch + TOL[dtype] * scale:
            return f"{why} (error vs float64: {err_ours:.3g}, torch's {err_torch:.3g})"
    return None


def _upcast(x, args, kwargs):
    """The sample with every floating tensor in float64 (complex128), leaves kept leaves."""
    def up(v):
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            dt = torch.complex128 if v.is_complex() else torch.float64
            return v.detach().to(dt).requires_grad_(v.requires_grad)
        if isinstance(v, (list, tuple)):
            return type(v)(up(t) for t in v)
        return v
    return up(x), up(args), {k: up(v) for k, v in kwargs.items()}


def check_error(name, err, backend):
    """An ErrorInput: fusednorm raises an exception of torch's type (None), else why not."""
    s = err.sample_input
    ours = _run(lambda x, a, k: _ours(name, x, a, k, backend), s.input, tuple(s.args),
                dict(s.kwargs), 0)
    if not isinstance(ours, Exception):
        return f"accepts an error input torch refuses with {err.error_type.__name__}"
    if not isinstance(ours, err.error_type):
        return f"raises {type(ours).__name__} ({str(ours)[:100]}) where torch raises " \
               f"{err.error_type.__name__}"
    return None


# ------------------------------------------------------------------------------ the cases
@dataclasses.dataclass
class Case:
    op: str
    kind: str          # "sample" or "error"
    dtype: torch.dtype
    index: int
    obj: object        # SampleInput or ErrorInput

    def describe(self):
        s = self.obj.sample_input if self.kind == "error" else self.obj
        def d(a):
            if isinstance(a, torch.Tensor):
                return f"T{tuple(a.shape)}"
            if isinstance(a, (list, tuple)):
                return "(" + ", ".join(d(t) for t in a) + ")"
            return repr(a)
        kw = ", ".join(f"{k}={d(v)}" for k, v in s.kwargs.items())
        return f"{self.op}[{self.kind} {self.index}]({d(s.input)}, {d(tuple(s.args))[1:-1]}" \
               f"{', ' + kw if kw else ''}) {str(self.dtype)[6:]}"


def _op_db():
    from torch.testing._internal.common_methods_invocations import op_db
    return {op.name: op for op in op_db if op.name in OPS and not op.variant_test_name}


def cases(dtypes=DTYPES):
    ops = _op_db()
    out = []
    for name in OPS:
        op = ops[name]
        supported = op.supported_dtypes("cpu")
        for dtype in dtypes:
            if dtype not in supported:
                continue
            torch.manual_seed(0)
            samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
            if op.reference_inputs_func is not None:
                samples += list(op.reference_inputs("cpu", dtype, requires_grad=True))
            out += [Case(name, "sample", dtype, i, s) for i, s in enumerate(samples)]
        if op.error_inputs_func is not None:
            out += [Case(name, "error", torch.float32, i, e)
                    for i, e in enumerate(op.error_inputs("cpu"))]
    return out


def run_case(case, backend):
    if case.kind == "error":
        return check_error(case.op, case.obj, backend)
    return compare(case.op, case.obj, case.dtype, backend, seed=case.index)


# ------------------------------------------------------------------------------ exclusions
@dataclasses.dataclass(frozen=True)
class Exclusion:
    """A disagreement kept on purpose: which cases (``applies(case, backend, why)``) and why."""
    name: str
    reason: str
    applies: Callable


def _backend_is(*names):
    return lambda backend: backend in names


EXCLUSIONS = (
    Exclusion(
        "complex rms_norm on the reference and Triton",
        "torch's rms_norm accepts complex tensors (x * rsqrt(mean(x**2) + eps), the complex "
        "square); fusednorm computes it with torch's own kernels (backend 'native', which "
        "auto picks) and says so when a backend that computes real dtypes only is named",
        lambda c, backend, why: c.dtype.is_complex and backend in ("reference", "triton")
        and "supports dtypes" in why),
)


def excluded(case, backend, why) -> Optional[Exclusion]:
    for ex in EXCLUSIONS:
        if ex.applies(case, backend, why):
            return ex
    return None


# ------------------------------------------------------------------------------ the tests
_CASES = None


def _all_cases():
    global _CASES
    if _CASES is None:
        _CASES = cases()
    return _CASES


def _triton_subset(all_cases):
    """The interpreter's share (its launches cost ~10 ms each on a CPU): every op's fp32
    samples up to 1024 elements, and its error inputs."""
    return [c for c in all_cases if c.kind == "error" or (
        c.dtype == torch.float32 and c.obj.input.numel() <= 1024)]


def _sweep(backend, subset=None):
    found, used = [], set()
    for case in (subset if subset is not None else _all_cases()):
        why = run_case(case, backend)
        if why is None:
            continue
        ex = excluded(case, backend, why)
        if ex is None:
            found.append(f"{case.describe()}: {why}")
        else:
            used.add(ex.name)
    return found, used


_USED = collections.defaultdict(set)


@pytest.mark.parametrize("backend", [None, "reference"], ids=["auto", "reference"])
def test_op_db_samples_and_errors(backend):
    found, used = _sweep(backend)
    _USED[backend] |= used
    assert not found, f"{len(found)} disagreements with torch (backend={backend!r}):\n" + \
        "\n".join(found[:40])


def test_op_db_triton_subset():
    if fusednorm.available_backends()["triton"] is not True:
        pytest.skip(f"backend 'triton': {fusednorm.available_backends()['triton']}")
    found, used = _sweep("triton", _triton_subset(_all_cases()))
    _USED["triton"] |= used
    assert not found, f"{len(found)} disagreements with torch (backend='triton'):\n" + \
        "\n".join(found[:40])


def test_every_exclusion_is_needed():
    """An exclusion that matches nothing any more is stale: remove it."""
    if not _USED:
        pytest.skip("runs after the sweeps (same session)")
    used = set().union(*_USED.values())
    stale = [ex.name for ex in EXCLUSIONS if ex.name not in used]
    if "triton" not in _USED:
        stale = [s for s in stale if "Triton" not in s]
    assert not stale, f"exclusions that match no disagreement: {stale}"


def test_op_db_covers_every_op():
    ops = _op_db()
    assert set(ops) == set(OPS), set(OPS) - set(ops)
    kinds = collections.Counter((c.op, c.kind) for c in _all_cases())
    for name in OPS:
        assert kinds[(name, "sample")] > 0, name
    assert sum(v for (n, k), v in kinds.items() if k == "error") >= 9


# ------------------------------------------------------------------------------ the report
def main(argv=None):
    ap = argparse.ArgumentParser(description="fusednorm vs torch on op_db: disagreement rates")
    ap.add_argument("--backends", default="auto,reference",
                    help="comma-separated backend arguments ('auto' = None)")
    ap.add_argument("--no-exclusions", action="store_true",
                    help="count excluded disagreements too")
    ap.add_argument("-v", action="store_true", help="list every disagreement")
    a = ap.parse_args(argv)
    all_cases = _all_cases()
    for b in a.backends.split(","):
        backend = None if b == "auto" else b
        subset = _triton_subset(all_cases) if b == "triton" else all_cases
        per_op = collections.defaultdict(lambda: [0, 0])
        lines = []
        for case in subset:
            why = run_case(case, backend)
            bad = why is not None and (a.no_exclusions or excluded(case, backend, why) is None)
            per_op[case.op][0] += 1
            per_op[case.op][1] += bad
            if bad:
                lines.append(f"  {case.describe()}: {why}")
        total, n_bad = len(subset), sum(v[1] for v in per_op.values())
        print(f"backend={b}: {n_bad} of {total} cases disagree ({100 * n_bad / total:.1f}%)")
        for name, (n, k) in per_op.items():
            print(f"  {name:<28} {k:>4} / {n:<4}")
        if a.v:
            print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
