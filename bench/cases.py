"""Benchmark cases and the bytes model.

A ``Case`` is one shape of one op (from a real model; the ``bench_<norm>.py`` files list
them); ``bytes_model`` / ``case_bytes`` give the bytes a fused kernel must move for one pass,
from which every GB/s and % of copy bandwidth is computed (bench/README.md, "Bytes model").
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-5
EPS_LN2D = 1e-6  # timm's LayerNorm2d default (ConvNeXt), also fusednorm.layer_norm_2d's
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PASSES = ("fwd", "bwd", "fwd+bwd")
OPS = ("layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm", "layer_norm_2d")
# Short names accepted by --norms.
OP_ALIASES = {"ln": "layer_norm", "rms": "rms_norm", "rmsnorm": "rms_norm", "gn": "group_norm",
              "in": "instance_norm", "bn": "batch_norm", "ln2d": "layer_norm_2d"}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    op:      one of OPS
    shape:   LN/RMS: (M, N) rows x hidden; GN/IN/BN/LN2d: (N, C, *spatial)
    dtype:   "bf16" | "fp16" | "fp32" (input, output and -- except BN -- parameter dtype)
    layout:  "rows" (LN/RMS), "nchw" (contiguous) or "nhwc" (channels_last / channels_last_3d)
    variant: "" | "prenorm" (LN/RMS: x + residual fused, both outputs) | "silu" (GN + SiLU)
             | "eval" (BN with running statistics, forward only)
    groups:  GroupNorm groups (0 elsewhere)
    model:   where the shape comes from
    compile: time torch.compile on this case (compilation dominates the run time)
    """
    op: str
    shape: tuple
    dtype: str
    layout: str = "rows"
    variant: str = ""
    groups: int = 0
    model: str = ""
    compile: bool = True
    passes: tuple = PASSES

    def __post_init__(self):
        if self.layout == "rows" and self.op not in ("layer_norm", "rms_norm"):
            object.__setattr__(self, "layout", "nchw")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def param_dtype(self) -> torch.dtype:
        # BatchNorm parameters stay fp32 under mixed precision (what AMP training does);
        # LN/RMS/GN/IN/LN2d parameters follow the activations (pure-bf16 LLM / diffusion checkpoints).
        return torch.float32 if self.op == "batch_norm" else self.torch_dtype

    @property
    def n_param(self) -> int:
        """Elements of one parameter vector: hidden size for LN/RMS, channels elsewhere (LN2d: C)."""
        return self.shape[-1] if self.op in ("layer_norm", "rms_norm") else self.shape[1]

    @property
    def shape_str(self) -> str:
        s = "x".join(str(d) for d in self.shape)
        return f"{s} G={self.groups}" if self.op == "group_norm" else s

    @property
    def key(self) -> tuple:
        return (self.op, self.variant, self.shape_str, self.dtype, self.layout)


# --------------------------------------------------------------------------------------------
# Bytes model
# --------------------------------------------------------------------------------------------
# Minimum DRAM traffic of a fused kernel, in elements of the activation per pass:
#   LN/RMS fwd: read x, write y                                  = 2
#   LN/RMS bwd: read x, dy, write dx (stats are per row: free)   = 3
#   LN/RMS prenorm fwd: read x, residual, write y, x+residual    = 4
#   LN/RMS prenorm bwd: read x+residual, dy, d(x+residual), write dx = 4
#   BN train fwd: read x for the statistics, again to normalize, write y = 3
#   BN train bwd: read x, dy for the reductions, again for dx, write dx  = 5
#   BN eval fwd: read x, write y                                  = 2
#   GN/IN fwd 2, bwd 3 (as LN; a group fits on chip or is re-read from L2)
#   LN2d (LayerNorm over C at each pixel) fwd 2, bwd 3 (as LN: one mean/rstd per pixel = per row)
# plus parameters: the forward reads weight (and bias), the backward reads weight and writes
# the gradient of each affine parameter. Statistics (mean/rstd) are ignored: O(rows).
ACT_FACTOR = {
    ("layer_norm", "", "fwd"): 2, ("layer_norm", "", "bwd"): 3,
    ("layer_norm", "prenorm", "fwd"): 4, ("layer_norm", "prenorm", "bwd"): 4,
    ("batch_norm", "", "fwd"): 3, ("batch_norm", "", "bwd"): 5,
    ("batch_norm", "eval", "fwd"): 2, ("batch_norm", "eval", "bwd"): 3,
    ("group_norm", "", "fwd"): 2, ("group_norm", "", "bwd"): 3,
    ("layer_norm_2d", "", "fwd"): 2, ("layer_norm_2d", "", "bwd"): 3,
}


def n_affine(op: str) -> int:
    """Affine parameter tensors: weight and bias, RMSNorm has weight only."""
    return 1 if op == "rms_norm" else 2


def bytes_model(op: str, pass_: str, numel: int, elem_size: int, n_param: int = 0,
                param_size: int = 0, variant: str = "") -> int:
    """Bytes a fused kernel must move for one pass ("fwd", "bwd" or "fwd+bwd")."""
    if pass_ == "fwd+bwd":
        return (bytes_model(op, "fwd", numel, elem_size, n_param, param_size, variant)
                + bytes_model(op, "bwd", numel, elem_size, n_param, param_size, variant))
    family = {"rms_norm": "layer_norm", "instance_norm": "group_norm"}.get(op, op)
    var = variant if variant in ("prenorm", "eval") else ""
    try:
        k = ACT_FACTOR[(family, var, pass_)]
    except KeyError:
        raise ValueError(f"bytes_model: no model for op={op!r} variant={variant!r} "
                         f"pass={pass_!r}") from None
    p = n_param * param_size
    na = n_affine(op)
    params = na * p if pass_ == "fwd" else p + na * p  # bwd: read weight, write the grads
    return k * numel * elem_size + params


def case_bytes(case: Case, pass_: str) -> int:
    return bytes_model(case.op, pass_, case.numel, case.torch_dtype.itemsize, case.n_param,
                       case.param_dtype.itemsize, case.variant)


# --------------------------------------------------------------------------------------------
# Case lists of the bench_<norm>.py files
# --------------------------------------------------------------------------------------------
NORM_MODULES = {"layer_norm": "bench_layer_norm", "rms_norm": "bench_layer_norm",
                "group_norm": "bench_group_norm", "instance_norm": "bench_instance_norm",
                "batch_norm": "bench_batch_norm", "layer_norm_2d": "bench_layer_norm_2d"}


def parse_norms(text: str) -> list:
    """--norms: a comma list of short or full names -> full op names, in the order given."""
    out = []
    for t in (x.strip().lower() for x in text.split(",") if x.strip()):
        op = OP_ALIASES.get(t, t)
        if op not in OPS:
            raise SystemExit(f"--norms: unknown norm {t!r}; expected some of "
                             f"{', '.join(list(OP_ALIASES) + list(OPS))}")
        if op not in out:
            out.append(op)
    return out


def get_cases(norms, quick: bool) -> list:
    """The cases of ``norms`` (full op names), in the order of their bench_<norm>.py files."""
    cases = []
    for mod in dict.fromkeys(NORM_MODULES[n] for n in norms):
        cases += [c for c in importlib.import_module(f"bench.{mod}").cases(quick) if c.op in norms]
    return cases
