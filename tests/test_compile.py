"""torch.compile and torch.library.opcheck for every public op.

Every public function traces under ``torch.compile(fullgraph=True)`` (a graph break would
raise) forward and backward, with static and dynamic shapes (two shapes through one compiled
function with recompiles turned into errors), and matches eager.  The broad sweep uses the
"aot_eager" backend (AOTAutograd without code generation: cheap on CPU); one test runs the
default inductor backend.  opcheck runs on every op, forward and backward, for every backend
that can run here (the cuda backend skips with the reason on machines without it).
"""
import pytest
import torch

import fusednorm
from _util import HAS_CUDA, kernel_backend_params, randn, require_backend

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- cases: fn + inputs(shape)
def _ln(x, w, b):
    return fusednorm.layer_norm(x, (x.shape[-1],), w, b)


def _rms_prenorm(x, r, w):
    out, h = fusednorm.rms_norm(x, (x.shape[-1],), w, residual=r, prenorm=True)
    return out * 2 + h


def _gn_silu(x, w, b):
    return fusednorm.group_norm(x, 2, w, b, activation="silu")


def _in(x, w, b, rm, rv):
    return fusednorm.instance_norm(x, rm, rv, w, b, use_input_stats=True, momentum=0.2)


def _bn_train(x, w, b, rm, rv):
    return fusednorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1)


def _bn_eval(x, w, b, rm, rv):
    return fusednorm.batch_norm(x, rm, rv, w, b, training=False)


def _inputs(name, n, seed, device="cpu"):
    """Inputs for case ``name`` with batch-like size ``n``: (grad-carrying, buffers)."""
    c = 4
    r = lambda *s, seed: randn(*s, seed=seed, device=device)  # noqa: E731
    if name == "layer_norm":
        return [r(n, 3, 8, seed=seed), r(8, seed=1), r(8, seed=2)], []
    if name == "rms_norm_prenorm":
        return [r(n, 8, seed=seed), r(n, 8, seed=seed + 1), r(8, seed=1)], []
    if name == "group_norm_silu_cl":
        x = r(n, c, 3, 5, seed=seed).contiguous(memory_format=torch.channels_last)
        return [x, r(c, seed=1), r(c, seed=2)], []
    buffers = [r(c, seed=3), r(c, seed=4).abs() + 0.5]
    x = r(n, c, 3, 5, seed=seed) * 2 + 1
    return [x, r(c, seed=1), r(c, seed=2)], buffers


CASES = {"layer_norm": _ln, "rms_norm_prenorm": _rms_prenorm, "group_norm_silu_cl": _gn_silu,
         "instance_norm": _in, "batch_norm_train": _bn_train, "batch_norm_eval": _bn_eval}


def _run(fn, name, n, seed, device="cpu"):
    """(output, grads of the differentiable inputs, buffers after the call)."""
    leaves, buffers = _inputs(name, n, seed, device)
    leaves = [t.requires_grad_() for t in leaves]
    out = fn(*leaves, *buffers)
    out.backward(randn(*out.shape, seed=99, device=device))
    return out.detach(), [t.grad for t in leaves], buffers, leaves[0]


def _check(compiled, name, n, seed, device="cpu"):
    ref_out, ref_grads, ref_bufs, _ = _run(CASES[name], name, n, seed, device)
    out, grads, bufs, x = _run(compiled, name, n, seed, device)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-5)
    for b, rb in zip(bufs, ref_bufs):  # running statistics updated in place, as in eager
        torch.testing.assert_close(b, rb, atol=1e-6, rtol=1e-6)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last), name


def test_eps_check_traces_dynamic():
    """Under dynamic=True Dynamo makes Python floats symbolic, and math.isfinite on a
    SymFloat is a graph break; _validate.check_eps must compare instead."""
    from fusednorm import _validate as V
    fn = torch.compile(lambda x, eps=1e-5: x * V.check_eps("f", eps), backend="eager",
                       fullgraph=True, dynamic=True)
    try:
        torch.testing.assert_close(fn(torch.ones(2)), torch.full((2,), 1e-5))
    finally:
        torch._dynamo.reset()


# Where the sweep runs: CPU tensors with the per-call default backend (torch's native ops,
# the reference for the extras) and with the reference named for every case (its custom
# ops), and on a GPU, CUDA tensors with each kernel backend chosen through FUSEDNORM_BACKEND
# (so the traced functions are the same CASES).
_needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
SWEEP = [pytest.param(None, id="cpu"), pytest.param("reference", id="reference-cpu")] + [
    pytest.param(b, id=f"{b}-cuda", marks=[pytest.mark.gpu, _needs_cuda])
    for b in ("triton", "cuda")]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", SWEEP)
def test_fullgraph_aot_eager(backend, name, dynamic, monkeypatch):
    device = "cpu"
    if backend is not None:
        if fusednorm.available_backends()[backend] is not True:
            pytest.skip(f"backend {backend!r}: {fusednorm.available_backends()[backend]}")
        monkeypatch.setenv("FUSEDNORM_BACKEND", backend)
        device = "cpu" if backend == "reference" else "cuda"
    torch._dynamo.reset()
    compiled = torch.compile(CASES[name], backend="aot_eager", fullgraph=True, dynamic=dynamic)
    _check(compiled, name, 6, seed=10, device=device)
    if dynamic:
        # a second batch size must reuse the dynamic graph: a recompile is an error here
        with torch._dynamo.config.patch(error_on_recompile=True):
            _check(compiled, name, 7, seed=11, device=device)


@pytest.mark.parametrize("backend,want", [
    ("reference", ("batch_norm_fwd", "group_norm_fwd", "layer_norm_fwd")),
    (None, ("native_batch_norm", "native_layer_norm", "group_norm_fwd", "layer_norm_fwd"))],
    ids=["reference", "auto"])
def test_explain_reports_no_graph_break(backend, want, monkeypatch):
    """A small block using every norm: one graph, zero breaks (explain, not just fullgraph).
    The reference's norms are fusednorm's opaque ops; auto on a CPU gives torch's native ops
    for what torch has a kernel for, fusednorm's ops for the extras (SiLU, residual)."""
    def block(x, w, b, rm, rv):
        h = fusednorm.batch_norm(x, rm, rv, w, b, training=True)
        h = fusednorm.group_norm(h, 2, w, b, activation="silu")
        h = fusednorm.instance_norm(h, weight=w, bias=b)
        y = fusednorm.layer_norm(h, (h.shape[-1],))
        return fusednorm.rms_norm(y, (y.shape[-1],), residual=h)

    if backend is not None:
        monkeypatch.setenv("FUSEDNORM_BACKEND", backend)
    torch._dynamo.reset()
    (x, w, b), (rm, rv) = _inputs("batch_norm_train", 3, seed=5)
    explanation = torch._dynamo.explain(block)(x, w, b, rm, rv)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    ops = {str(n.target) for g in explanation.graphs for n in g.graph.nodes
           if n.op == "call_function"}
    for op in want:
        assert any(op in o for o in ops), (op, ops)


def test_fullgraph_inductor():
    """The default backend (inductor: generated C++ on CPU) around our opaque ops."""
    def fn(x, w, b, rm, rv):
        h = fusednorm.batch_norm(x * 1.5, rm, rv, w, b, training=True)
        return fusednorm.layer_norm(h.relu(), (h.shape[-1],)) + 1

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    CASES["_inductor"] = fn
    try:
        _check(compiled, "_inductor", 3, seed=12)
    finally:
        del CASES["_inductor"]


# ------------------------------------------------------------------------------- opcheck
def _opcheck_cases(backend, device):
    """Every op, forward and backward, with tiny shapes (the interpreter runs them)."""
    r = lambda *s, seed: randn(*s, device=device, seed=seed)  # noqa: E731
    x, res, w, b = r(3, 16, seed=1), r(3, 16, seed=2), r(16, seed=3), r(16, seed=4)
    g = r(2, 4, 3, 2, seed=5)
    gc = g.contiguous(memory_format=torch.channels_last)
    cw, cb = r(4, seed=6), r(4, seed=7)
    rm, rv = r(4, seed=8), r(4, seed=9).abs() + 0.5
    ops = torch.ops.fusednorm
    req = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    cases = {
        "layer_norm": (ops.layer_norm_fwd, (*req(x), None, *req(w, b), 1e-5, False, backend)),
        "rms_norm_residual": (ops.layer_norm_fwd,
                              (*req(x, res), *req(w), None, 1e-5, True, backend)),
        "group_norm_silu": (ops.group_norm_fwd, (*req(g, cw, cb), 2, 1e-5, "silu", backend)),
        "group_norm_cl": (ops.group_norm_fwd, (*req(gc), None, None, 2, 1e-5, "", backend)),
        "instance_norm": (ops.group_norm_fwd, (*req(gc, cw, cb), 4, 1e-5, "", backend)),
        "batch_norm_train": (ops.batch_norm_fwd, (*req(g, cw, cb), None, None, None, True,
                                                  1e-5, 0.1, backend)),
        "batch_norm_train_running": (ops.batch_norm_fwd, (
            *req(gc, cw, cb), rm.clone(), rv.clone(), torch.tensor(3, device=device), True,
            1e-5, None, backend)),
        "batch_norm_eval_cl": (ops.batch_norm_fwd, (*req(gc, cw), None, rm, rv, None, False,
                                                    1e-5, 0.1, backend)),
        "instance_norm_running": (ops.instance_norm_running, (
            r(2, 4, seed=15), r(2, 4, seed=16).abs() + 0.5, rm.clone(), rv.clone(), 0.2, 1e-5,
            6, backend)),
    }
    # backward ops on the statistics the forward ops produce
    _, _, mean, rstd = ops.layer_norm_fwd(x, None, w, b, 1e-5, False, backend)
    cases["layer_norm_bwd"] = (ops.layer_norm_bwd, (r(3, 16, seed=10), None, x, w, b, mean,
                                                    rstd, False, backend))
    _, xsum, mean, rstd = ops.layer_norm_fwd(x, res, w, None, 1e-5, True, backend)
    cases["rms_norm_bwd"] = (ops.layer_norm_bwd, (r(3, 16, seed=11), r(3, 16, seed=12), xsum,
                                                  w, None, mean, rstd, True, backend))
    _, mean, rstd = ops.group_norm_fwd(gc, cw, cb, 2, 1e-5, "silu", backend)
    cases["group_norm_bwd"] = (ops.group_norm_bwd, (r(2, 4, 3, 2, seed=13), gc, cw, cb, mean,
                                                    rstd, 2, "silu", backend))
    for training in (True, False):
        _, mean, rstd, *_ = ops.batch_norm_fwd(g, cw, cb, rm, rv, None, training, 1e-5, 0.1,
                                               backend)
        cases[f"batch_norm_bwd_{training}"] = (
            ops.batch_norm_bwd, (r(2, 4, 3, 2, seed=14), g, cw, cb, mean, rstd, training,
                                 backend))
    return cases


# fusednorm's custom ops, on each backend that implements them ("native" is torch's own
# ops, which have none: tests/test_paths.py checks its traced graphs)
@pytest.mark.parametrize("be", kernel_backend_params())
def test_opcheck_every_op(be):
    backend, device = be
    require_backend(backend, device)
    for name, (op, args) in _opcheck_cases(backend, device).items():
        try:
            torch.library.opcheck(op, args)
        except Exception as e:  # name the failing case
            raise AssertionError(f"opcheck {name} on backend {backend!r}: {e}") from e


@pytest.mark.gpu
@_needs_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fullgraph_gpu_backends(backend):
    """On a GPU: the same compiled function over the triton and cuda backends."""
    if fusednorm.available_backends()[backend] is not True:
        pytest.skip(f"backend {backend!r}: {fusednorm.available_backends()[backend]}")
    x = randn(4, 6, 5, 3, device="cuda", seed=1).requires_grad_()
    w = randn(6, device="cuda", seed=2).requires_grad_()

    def fn(x, w):
        h = fusednorm.group_norm(x, 3, w, w, activation="silu", backend=backend)
        return fusednorm.layer_norm(h, (3,), backend=backend)

    torch._dynamo.reset()
    eager = fn(x, w)
    out = torch.compile(fn, fullgraph=True, dynamic=True)(x, w)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
