"""Inputs of a case and the callables that run one pass on them.

Each call of a pass takes the next of *k* independent input sets (``n_rotating``: together
they span twice the L2 size), so that no call finds its inputs in L2.
"""
from __future__ import annotations

import math

import torch

from bench.cases import Case


def _fmt(t: torch.Tensor, case: Case) -> torch.Tensor:
    if case.layout == "nhwc":
        mf = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=mf)
    return t


def make_params(case: Case, device: str) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1)
    C, pd = case.n_param, case.param_dtype
    w = (1 + 0.1 * torch.randn(C, generator=g)).to(device=device, dtype=pd).requires_grad_(True)
    b = (0.1 * torch.randn(C, generator=g)).to(device=device, dtype=pd).requires_grad_(True)
    p = {"weight": w, "bias": None if case.op == "rms_norm" else b}
    if case.op == "batch_norm":
        p["running_mean"] = torch.zeros(C, device=device, dtype=torch.float32)
        p["running_var"] = torch.ones(C, device=device, dtype=torch.float32)
    return p


def make_buffers(case: Case, device: str, n: int) -> list:
    """n independent input sets (x, residual, grads of the outputs)."""
    bufs = []
    for i in range(n):
        def rnd():
            return _fmt(torch.randn(case.shape, device=device, dtype=case.torch_dtype), case)
        b = {"x": rnd().requires_grad_(True), "residual": None}
        if case.variant == "prenorm":
            b["residual"] = rnd().requires_grad_(True)
            b["grads"] = [rnd(), rnd()]
        else:
            b["grads"] = [rnd()]
        bufs.append(b)
    return bufs


def l2_bytes(device: str) -> int:
    if device == "cuda":
        try:
            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size)
        except Exception:  # noqa: BLE001
            pass
    return 50 * 2**20  # H100/H200: 50 MB


def n_rotating(case: Case, device: str) -> int:
    """Input sets to cycle through so that a call never finds its inputs in L2: together they
    span twice the L2 size (~100 MB on H100), capped at 64."""
    if device != "cuda":
        return 1
    per = case.numel * case.torch_dtype.itemsize * (2 + (2 if case.variant == "prenorm" else 0))
    return max(1, min(64, math.ceil(2 * l2_bytes(device) / per)))


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _leaves(buf: dict, p: dict) -> list:
    xs = [buf["x"]] + ([buf["residual"]] if buf["residual"] is not None else [])
    return xs + [t for t in (p["weight"], p["bias"]) if t is not None]


def pass_fn(f, case: Case, pass_: str, bufs: list, p: dict):
    """A zero-argument callable doing one pass on the next input set (rotating)."""
    it = [0]
    n = len(bufs)

    def nxt():
        b = bufs[it[0] % n]
        it[0] += 1
        return b

    def call(b):
        return as_tuple(f(b["x"], b["residual"]) if b["residual"] is not None else f(b["x"]))

    if pass_ == "fwd":
        return lambda: call(nxt())
    if pass_ == "fwd+bwd":
        def fb():
            b = nxt()
            return torch.autograd.grad(call(b), _leaves(b, p), b["grads"])
        return fb
    if pass_ == "bwd":
        graphs = [(call(b), _leaves(b, p), b["grads"]) for b in bufs]

        def bw():
            outs, leaves, grads = graphs[it[0] % n]
            it[0] += 1
            # autograd.grad returns the gradients: no accumulation into .grad to pay for.
            return torch.autograd.grad(outs, leaves, grads, retain_graph=True)
        return bw
    raise ValueError(f"unknown pass {pass_!r}")

