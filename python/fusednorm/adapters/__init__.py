"""Adapters: fusednorm forwards for the norm classes of transformers, timm and diffusers.

``fusednorm.convert`` swaps the exact torch.nn norm classes for ``fusednorm.nn``'s.  For a
third-party class it looks here: one :class:`Adapter` per rounding order, each naming the
classes it reproduces and the math it reproduces.  A module is converted only when

1. its class is named in the registry and is the very object the library module defines
   (looked up in ``sys.modules``: fusednorm never imports transformers, timm or diffusers;
   the module is imported already when a model holds an instance of the class) -- class
   identity, never ``isinstance``: a subclass may change the math;
2. the class's forward, with the helper methods it calls on ``self``, still is the code the
   adapter was written for (a fingerprint of its syntax tree, :mod:`._fingerprint`);
3. the instance has no forward of its own and the adapter's option check passes (timm's
   ``fast_norm``, an NPU path, a non-numeric eps, ...).

The swap changes ``__class__`` to a subclass of the original made once per class (same
name; its repr reads ``fusednorm.<Name>(..., adapter=<adapter id>)``), so parameters,
buffers, state_dict keys, hooks, device, dtype, mode and optimizer references are untouched
and ``isinstance(m, LlamaRMSNorm)`` stays true.  For an input dtype the adapter does not
reproduce (fp64 where the original computes in fp32) or an unusual call, the converted
module runs the original forward.

``REGISTRY`` maps ``"module:qualname"`` to its :class:`Adapter`; ``describe()`` lists them.
"""
import hashlib
import importlib
import numbers
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import nn as _fnn
from . import _classes, _fingerprint, _math

__all__ = ["Adapter", "REGISTRY", "ADAPTERS", "describe", "plan", "adapter_class",
           "ConversionReport", "ReportEntry", "ConversionWarning"]

_FP32_IN = (torch.float16, torch.bfloat16, torch.float32)   # dtypes an fp32-upcasting
_ANY = None                                                  # original is reproduced for


@dataclass(frozen=True)
class Adapter:
    """How fusednorm reproduces one forward.

    ``fingerprints`` maps each accepted forward fingerprint to the name of the attribute
    holding eps in that copy of the code (``None`` when eps is not read from the module)."""
    id: str
    math: str                     # what the original computes, in its rounding order
    composition: str              # the fusednorm/torch ops that reproduce it
    classes: Tuple[str, ...]      # "module:qualname"
    fingerprints: Mapping[str, Optional[str]]
    forward: Callable             # forward(module, x) -> Tensor
    dtypes: Optional[Tuple[torch.dtype, ...]] = _FP32_IN  # None: every dtype
    check: Optional[Callable] = None  # check(module, eps attr, class) -> None, or why not
    fused_base: Optional[type] = None  # a fusednorm.nn class the converted class also derives from
    version: str = ""             # the library version the fingerprints were taken from


# ------------------------------------------------------------------------- helpers
def _be(m):
    return getattr(m, "_fusednorm_backend", None)


def _eps(m):
    return getattr(m, type(m)._fusednorm_eps)


# Option checks: check(module, eps attribute name or None, original class) -> None or why not.


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _weight_eps(m, eps_name, cls) -> Optional[str]:
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor):
        return f"weight is {type(w).__name__}, expected a tensor"
    return _eps_only(m, eps_name, cls)


def _eps_only(m, eps_name, cls) -> Optional[str]:
    eps = getattr(m, eps_name, None)
    if not _is_number(eps):
        return f"{eps_name}={eps!r} is not a number"
    return None


def _timm_fast_norm(m, eps_name=None, cls=None) -> Optional[str]:
    if getattr(m, "_fast_norm", False):
        return ("timm fast_norm is enabled (_fast_norm=True): its low-precision autocast / "
                "apex path is not reproduced")
    return None


def _timm_rms(m, eps_name, cls) -> Optional[str]:
    reason = _timm_fast_norm(m)
    if reason:
        return reason
    impl = cls.forward.__globals__.get("rms_norm")
    if impl is not torch.nn.functional.rms_norm:
        return "timm uses its own rms_norm (torch.nn.functional.rms_norm missing), not torch's"
    return None


def _diffusers_rms(m, eps_name, cls) -> Optional[str]:
    reason = _eps_only(m, eps_name, cls)
    if reason:
        return reason
    for name in ("weight", "bias"):
        if getattr(m, name, None) is not None and not isinstance(getattr(m, name), Tensor):
            return f"{name} is {type(getattr(m, name)).__name__}, expected a tensor or None"
    npu = cls.forward.__globals__.get("is_torch_npu_available")
    if callable(npu) and npu():
        return "diffusers takes its torch_npu path here (an NPU is available)"
    return None


def _convnext_hf(m, eps_name, cls) -> Optional[str]:
    parent = next(c for c in cls.__mro__[1:] if "forward" in c.__dict__)
    if parent is not torch.nn.LayerNorm:
        return f"super().forward is {parent.__qualname__}.forward, expected torch.nn.LayerNorm's"
    if m.data_format not in ("channels_first", "channels_last"):
        return f"data_format={m.data_format!r} is not channels_first or channels_last"
    return None


# ---------------------------------------------------------------- adapter forwards
def _llama(m, x):
    return _math.rms_then_scale(x, m.weight, _eps(m), _be(m))


def _rms_scale_once(m, x):
    return _math.rms_scaled_once(x, m.weight.float(), _eps(m), _be(m))


def _gemma(m, x):
    return _math.rms_scaled_once(x, 1.0 + m.weight.float(), _eps(m), _be(m))


def _t5(m, x):
    return _math.rms_fp32_then_weight(x, m.weight, _eps(m), _be(m))


def _rms_unweighted(m, x):
    return _math.rms(x, _eps(m), backend=_be(m))


def _cohere(m, x):
    return _math.layer_norm_scaled_once(x, m.weight.float(), _eps(m), _be(m))


def _diffusers_rms_fwd(m, x):
    if m.weight is None:
        return _math.rms(x, m.eps, backend=_be(m))
    y = _math.rms_fp32_then_weight(x, m.weight, m.eps, _be(m))
    return y if m.bias is None else y + m.bias


def _layer_norm_2d(m, x):
    return _math.layer_norm_2d(x, m.normalized_shape, m.weight, m.bias, m.eps, _be(m))


def _convnext_hf_fwd(m, x):
    if m.data_format == "channels_first":
        return _layer_norm_2d(m, x)
    return _fnn.LayerNorm.forward(m, x)


def _layer_norm_fp32(m, x):
    return _math.layer_norm_fp32(x, m.normalized_shape, m.weight, m.bias, m.eps, _be(m))


def _layer_norm_2d_fp32(m, x):
    w = None if m.weight is None else m.weight.float()
    b = None if m.bias is None else m.bias.float()
    return _math.layer_norm_2d(x, m.normalized_shape, w, b, m.eps, _be(m)).to(x.dtype)


def _rms_norm_fp32(m, x):
    return _math.rms_norm_fp32(x, m.normalized_shape, m.weight, m.eps, _be(m))


def _rms_norm_torch(m, x):
    return _fnn.RMSNorm.forward(m, x)


def _tx(names):
    return tuple("transformers.models." + n for n in names)


_TX = "transformers 5.24.0"
ADAPTERS: Tuple[Adapter, ...] = (
    Adapter(
        "llama_rms",
        math="h = x·rsqrt(mean(x²) + eps) in fp32; y = w * h.to(x.dtype) (a second rounding, "
             "in the promoted dtype of w and x)",
        composition="fusednorm.rms_norm(x, weight=None) -> x.dtype, then w * that (torch mul)",
        classes=_tx(_classes.LLAMA_RMS),
        fingerprints={"a57b0af79de668ae": "variance_epsilon"},
        forward=_llama, check=_weight_eps, version=_TX),
    Adapter(
        "rms_scale_once",
        math="y = (w·x·rsqrt(mean(x²) + eps)).to(x.dtype), all in fp32, one rounding",
        composition="fusednorm.rms_norm(x, weight=w.float()) (fused; a per-head weight "
                    "multiplies the fp32 x̂ before the rounding)",
        classes=_tx(_classes.RMS_SCALE_ONCE),
        fingerprints={"4bf0b521744a6b55": "variance_epsilon",   # GPT-OSS, OLMo 2/3
                      "3e510472060b2904": "variance_epsilon",   # Helium, Nemotron-H
                      "8b501e7849178167": "eps"},               # Moshi
        forward=_rms_scale_once, check=_weight_eps, version=_TX),
    Adapter(
        "gemma_rms",
        math="y = (x·rsqrt(mean(x²) + eps) · (1 + w)).to(x.dtype), all in fp32, one rounding",
        composition="fusednorm.rms_norm(x, weight=1 + w.float()) (fused; the (N,) scale is "
                    "formed in fp32 as the original forms it)",
        classes=_tx(_classes.GEMMA_RMS),
        fingerprints={"782d0b6dabe403b5": "eps"},
        forward=_gemma, check=_weight_eps, version=_TX),
    Adapter(
        "t5_rms",
        math="h = x·rsqrt(mean(x²) + eps) in fp32; h.to(w.dtype) when w is fp16/bf16; y = w * h",
        composition="fusednorm.rms_norm(x, weight=None) rounded once to w's half dtype (or kept "
                    "fp32 for an fp32 w, on x.float()), then w * that (torch mul)",
        classes=_tx(_classes.T5_RMS) + ("diffusers.models.transformers.t5_film_transformer:"
                                        "T5LayerNorm",),
        fingerprints={"784d2c7e4948fa95": "variance_epsilon"},
        forward=_t5, check=_weight_eps, version=_TX + ", diffusers 0.42.1"),
    Adapter(
        "rms_unweighted",
        math="y = (x·rsqrt(mean(x²) + eps)).to(x.dtype), in fp32, no weight",
        composition="fusednorm.rms_norm(x, weight=None)",
        classes=_tx(_classes.RMS_UNWEIGHTED),
        fingerprints={"2586d3530dad7bf0": "eps"},
        forward=_rms_unweighted, check=_eps_only, version=_TX),
    Adapter(
        "cohere_ln",
        math="y = (w·(x - mean)·rsqrt(var + eps)).to(x.dtype) over the last dim, all in fp32, "
             "no bias",
        composition="fusednorm.layer_norm(x, weight=w.float(), bias=None) (fused; a per-head "
                    "(H, D) weight multiplies the fp32 x̂ before the rounding)",
        classes=_tx(_classes.COHERE_LN),
        fingerprints={"0ace8520c673a1b2": "variance_epsilon"},
        forward=_cohere, check=_weight_eps, version=_TX),
    Adapter(
        "convnext_ln",
        math="torch.nn.LayerNorm over the last dim (channels_last), or over the channels of an "
             "NCHW tensor through a permuted view (channels_first)",
        composition="channels_last: fusednorm.nn.LayerNorm's forward; channels_first: "
                    "fusednorm.layer_norm_2d (NCHW read in place)",
        classes=_tx(_classes.CONVNEXT_LN),
        fingerprints={"10f08e0c4c2b77a5": None},
        forward=_convnext_hf_fwd, dtypes=_ANY, check=_convnext_hf, version=_TX),
    Adapter(
        "layer_norm_2d",
        math="F.layer_norm over the channels of an NCHW tensor: permute to NHWC, normalize the "
             "last dim, permute back",
        composition="fusednorm.layer_norm_2d (NCHW and channels_last read in place)",
        classes=("timm.layers.norm:LayerNorm2d",) + _tx(_classes.LAYER_NORM_2D),
        fingerprints={"4aaaca8e2f1f1bca": None,    # timm 1.0.31 (fast_norm branch)
                      "7bc2408463b472a4": None},   # transformers' EoMT copies
        forward=_layer_norm_2d, dtypes=_ANY, check=_timm_fast_norm,
        version="timm 1.0.31, " + _TX),
    Adapter(
        "timm_layer_norm",
        math="F.layer_norm(x, normalized_shape, w, b, eps): torch.nn.LayerNorm's math",
        composition="fusednorm.nn.LayerNorm's forward (the converted class also derives "
                    "from it)",
        classes=("timm.layers.norm:LayerNorm",),
        fingerprints={"eee1dd205d4bcae6": None},
        forward=_fnn.LayerNorm.forward, dtypes=_ANY, check=_timm_fast_norm,
        fused_base=_fnn.LayerNorm, version="timm 1.0.31"),
    Adapter(
        "timm_group_norm",
        math="F.group_norm(x, num_groups, w, b, eps): torch.nn.GroupNorm's math",
        composition="fusednorm.nn.GroupNorm's forward (the converted class also derives "
                    "from it)",
        classes=("timm.layers.norm:GroupNorm", "timm.layers.norm:GroupNorm1"),
        fingerprints={"4416d48af38f8d39": None},
        forward=_fnn.GroupNorm.forward, dtypes=_ANY, check=_timm_fast_norm,
        fused_base=_fnn.GroupNorm, version="timm 1.0.31"),
    Adapter(
        "timm_rms_norm",
        math="F.rms_norm(x, normalized_shape, w, eps): torch.nn.RMSNorm's math",
        composition="fusednorm.nn.RMSNorm's forward",
        classes=("timm.layers.norm:RmsNorm",),
        fingerprints={"9db8283d92ea780f": None},
        forward=_rms_norm_torch, dtypes=_ANY, check=_timm_rms, version="timm 1.0.31"),
    Adapter(
        "layer_norm_fp32",
        math="F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype): fp32, one "
             "rounding",
        composition="fusednorm.layer_norm(x, weight=w.float(), bias=b.float()) (fused)",
        classes=("timm.layers.norm:LayerNormFp32", "diffusers.models.normalization:FP32LayerNorm"),
        fingerprints={"fba190fd8490c563": None,    # timm 1.0.31
                      "80d2d87491993336": None},   # diffusers 0.42.1
        forward=_layer_norm_fp32, check=None, version="timm 1.0.31, diffusers 0.42.1"),
    Adapter(
        "layer_norm_2d_fp32",
        math="layer_norm_2d in fp32 with fp32 parameters, one rounding to x.dtype",
        composition="fusednorm.layer_norm_2d with w.float(), b.float()",
        classes=("timm.layers.norm:LayerNorm2dFp32",),
        fingerprints={"6430c6effeba0ea9": None},
        forward=_layer_norm_2d_fp32, check=None, version="timm 1.0.31"),
    Adapter(
        "rms_norm_fp32",
        math="F.rms_norm(x.float(), shape, w.float(), eps).to(x.dtype): fp32, one rounding",
        composition="fusednorm.rms_norm(x, weight=w.float()) (fused)",
        classes=("timm.layers.norm:RmsNormFp32",),
        fingerprints={"7d4594f5b0e2bee2": None},
        forward=_rms_norm_fp32, check=_timm_rms, version="timm 1.0.31"),
    Adapter(
        "diffusers_rms",
        math="h = x·rsqrt(mean(x²) + eps) in fp32; no weight: h.to(x.dtype); else h.to(w.dtype) "
             "when w is fp16/bf16, y = h * w (+ b)",
        composition="no weight: fusednorm.rms_norm(x); else as t5_rms, then + b (torch add)",
        classes=("diffusers.models.normalization:RMSNorm",),
        fingerprints={"6a37a8d3c1a61cd7": "eps"},
        forward=_diffusers_rms_fwd, check=_diffusers_rms, version="diffusers 0.42.1"),
)

REGISTRY: Dict[str, Adapter] = {}
for _a in ADAPTERS:
    for _key in _a.classes:
        if _key in REGISTRY:
            raise RuntimeError(f"fusednorm.adapters: {_key} registered twice")
        REGISTRY[_key] = _a


def describe() -> List[Dict[str, str]]:
    """One row per adapter: id, classes (count and a few names), math, composition."""
    rows = []
    for a in ADAPTERS:
        names = [k.split(":")[1] for k in a.classes]
        rows.append({"id": a.id, "classes": f"{len(names)}: " + ", ".join(names[:6])
                     + (", ..." if len(names) > 6 else ""), "math": a.math,
                     "composition": a.composition, "checked against": a.version})
    return rows


# ------------------------------------------------------------- the converted classes
_CLASSES: Dict[type, type] = {}     # original class -> converted class
_BY_NAME: Dict[str, Tuple[str, type]] = {}  # converted class's qualname -> (key, class)


def _key(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _pickle_name(key: str) -> str:
    name = key.rsplit(":", 1)[1].replace(".", "_")
    return f"Fused{name}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def adapter_class(cls: type) -> type:
    """The converted class for the registered class ``cls`` (made once): a subclass of
    ``cls`` (and of the adapter's fusednorm.nn class, if any) whose forward is the adapter's.
    It lives in this module under a stable name, so a pickled converted model unpickles."""
    if cls in _CLASSES:
        return _CLASSES[cls]
    key = _key(cls)
    adapter = REGISTRY[key]
    fp, _ = _fingerprint.of_class(cls)
    original_forward = cls.forward
    compute = adapter.forward
    dtypes = adapter.dtypes

    def forward(self, *args, **kwargs):
        if len(args) == 1 and not kwargs:
            x = args[0]
        elif not args and len(kwargs) == 1:
            (x,) = kwargs.values()
        else:
            x = None
        if not isinstance(x, Tensor) or (dtypes is not None and x.dtype not in dtypes):
            return original_forward(self, *args, **kwargs)
        return compute(self, x)

    def _get_name(self):       # as fusednorm.nn's modules print: fusednorm.<Name>(...)
        return "fusednorm." + type(self).__name__

    def extra_repr(self):
        base = cls.extra_repr(self)
        return (base + ", " if base else "") + f"adapter={adapter.id}"

    bases = (cls,) if adapter.fused_base is None else (cls, adapter.fused_base)
    qualname = _pickle_name(key)
    new = type(cls.__name__, bases, {
        "forward": forward, "_get_name": _get_name, "extra_repr": extra_repr,
        "_fusednorm_adapter": adapter, "_fusednorm_eps": adapter.fingerprints.get(fp),
        "__module__": __name__, "__qualname__": qualname,
        "__doc__": f"fusednorm's {cls.__qualname__} ({adapter.id}): {adapter.math}. "
                   f"Computed by {adapter.composition}."})
    forward.__qualname__ = f"{qualname}.forward"
    _CLASSES[cls] = new
    _BY_NAME[qualname] = (key, new)
    return new


def __getattr__(name):
    """Unpickling a converted model: rebuild its class from the registry by name."""
    if name.startswith("Fused"):
        if name in _BY_NAME:
            return _BY_NAME[name][1]
        for key in REGISTRY:
            if _pickle_name(key) == name:
                module, qualname = key.split(":")
                obj = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                fp, why = _fingerprint.of_class(obj)
                if fp not in REGISTRY[key].fingerprints:
                    raise AttributeError(
                        f"fusednorm.adapters cannot rebuild {name}: {key.replace(':', '.')}"
                        f".forward is not the code adapter '{REGISTRY[key].id}' was written "
                        f"for ({why or REGISTRY[key].version}; this is "
                        f"{_library_version(module)}); load the state_dict into an "
                        "unconverted model instead")
                return adapter_class(obj)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_converted(cls: type) -> bool:
    return cls in _CLASSES.values() or cls in _fnn.SWAPS.values()


# --------------------------------------------------------------------- the decision
_TORCH_NORMS = tuple(_fnn.SWAPS) + (torch.nn.modules.batchnorm._NormBase,
                                    torch.nn.LocalResponseNorm, torch.nn.CrossMapLRN2d)
_NOT_NORMS = ("torch.nn.utils.parametrizations",)  # _WeightNorm, _SpectralNorm: not layers


def _name_is_norm_like(name: str) -> bool:
    low = name.lower()
    i = low.find("norm")
    while i >= 0:
        rest = low[i + 4:]
        if not rest.startswith("al") or rest.startswith(("aliz", "alis")):
            return True           # "Norm", "Normalize"; not "Normal"
        i = low.find("norm", i + 1)
    return False


def is_norm_like(m: torch.nn.Module) -> bool:
    """What the report lists: torch.nn norms, registered classes, their subclasses, and
    modules whose class name says norm (not "normal") that hold no submodule with parameters
    (a block named ...LayerNorm... that holds a Linear is a wrapper; its norms are listed on
    their own)."""
    cls = type(m)
    if cls.__module__.startswith(_NOT_NORMS):
        return False
    if isinstance(m, _TORCH_NORMS) or any(_key(c) in REGISTRY or is_converted(c)
                                          for c in cls.__mro__):
        return True
    if not _name_is_norm_like(cls.__name__):
        return False
    return not any(next(c.parameters(), None) is not None for c in m.children())


@dataclass
class Plan:
    """What convert() will do with one module: ``new_class`` to swap to, or ``reason``."""
    new_class: Optional[type] = None
    adapter: Optional[str] = None
    how: str = ""
    reason: str = ""


def _library_version(module_name: str) -> str:
    top = sys.modules.get(module_name.split(".")[0])
    version = getattr(top, "__version__", None)
    return f"{module_name.split('.')[0]} {version}" if version else module_name.split(".")[0]


def plan(m: torch.nn.Module) -> Plan:
    """Decide for one module that is not a torch.nn norm of an exact class."""
    cls = type(m)
    key = _key(cls)
    if "forward" in m.__dict__:
        return Plan(reason="the instance has its own forward attribute (patched); left as is")
    lazy = torch.nn.modules.lazy.LazyModuleMixin
    if isinstance(m, lazy) and m.has_uninitialized_params():
        return Plan(reason="lazy module with uninitialized parameters: run one forward, then "
                           "convert")
    adapter = REGISTRY.get(key)
    if adapter is None:
        base = next((b for b in cls.__mro__[1:] if b in _fnn.SWAPS), None)
        if base is not None:
            owner = next(c for c in cls.__mro__ if "forward" in c.__dict__)
            tname = f"torch.nn.{base.__name__}"
            if owner is base:
                return Plan(reason=f"subclass of {tname} (forward inherited); convert() swaps "
                                   "exact torch.nn classes and registered classes only")
            return Plan(reason=f"subclass of {tname} with its own forward "
                               f"({owner.__qualname__}.forward): no adapter registered")
        return Plan(reason=f"unknown class {cls.__module__}.{cls.__qualname__}: no adapter "
                           "registered")
    module_name, qualname = key.split(":")
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not cls:
        return Plan(reason=f"class is not the {module_name}.{qualname} that the registry names "
                           "(same name, another object: a reloaded or copied module)")
    fp, why = _fingerprint.of_class(cls)
    if fp is None:
        return Plan(reason=why)
    if fp not in adapter.fingerprints:
        return Plan(reason=f"{cls.__qualname__}.forward (fingerprint {fp}) is not the code "
                           f"adapter '{adapter.id}' was written for ({adapter.version}; this is "
                           f"{_library_version(module_name)}); left as is")
    new = adapter_class(cls)
    if adapter.check is not None:
        reason = adapter.check(m, new._fusednorm_eps, cls)
        if reason:
            return Plan(reason=f"unsupported option for adapter '{adapter.id}': {reason}")
    return Plan(new_class=new, adapter=adapter.id, how=adapter.composition)


# ------------------------------------------------------------------------ the report
class ConversionWarning(UserWarning):
    """convert() left norm-like modules unconverted (pass report=True for the reasons)."""


@dataclass
class ReportEntry:
    name: str            # the module's qualified name in the model ("" for the root)
    original: str        # "module.qualname" of the class before convert()
    status: str          # "converted", "already" (converted before) or "left"
    became: str = ""     # the class now (converted / already)
    adapter: str = ""    # adapter id, "torch.nn" for the exact torch.nn classes
    how: str = ""        # the composition that computes it
    reason: str = ""     # why it was left

    def as_dict(self) -> Dict[str, str]:
        return dict(self.__dict__)


@dataclass
class ConversionReport:
    """Every norm-like module convert() saw: what it became, or why it was left."""
    entries: List[ReportEntry] = field(default_factory=list)

    @property
    def converted(self) -> List[ReportEntry]:
        return [e for e in self.entries if e.status in ("converted", "already")]

    @property
    def left(self) -> List[ReportEntry]:
        return [e for e in self.entries if e.status == "left"]

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def rows(self) -> List[Dict[str, str]]:
        return [e.as_dict() for e in self.entries]

    def summary(self) -> str:
        n, c = len(self.entries), len(self.converted)
        return f"fusednorm.convert: {c} of {n} norm modules are fusednorm's, {n - c} left"

    def grouped(self) -> List[Tuple[int, ReportEntry]]:
        """(count, first entry) per (class, status, result), in order of first appearance."""
        groups: Dict[tuple, list] = {}
        for e in self.entries:
            groups.setdefault((e.original, e.status, e.became, e.reason), []).append(e)
        return [(len(v), v[0]) for v in groups.values()]

    def __str__(self):
        lines = [self.summary()]
        for count, e in self.grouped():
            where = f"{count} x {e.original.rsplit('.', 1)[-1]}"
            where += f" (e.g. {e.name or '<root>'})"
            if e.status == "left":
                lines.append(f"  left       {where}: {e.reason}")
            else:
                lines.append(f"  {e.status:<10} {where} -> {e.became} [{e.adapter}]")
        return "\n".join(lines)

    def __repr__(self):
        return f"<ConversionReport {self.summary()}>"

    def warn_if_left(self, stacklevel=3):
        if self.left:
            counts: Dict[str, int] = {}
            for e in self.left:
                short = e.original.rsplit(".", 1)[-1]
                counts[short] = counts.get(short, 0) + 1
            what = ", ".join(f"{k} x{v}" for k, v in counts.items())
            warnings.warn(f"{self.summary()} ({what}); convert(model, report=True) says why",
                          ConversionWarning, stacklevel=stacklevel)


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def torch_name(cls: type) -> str:
    """torch.nn.LayerNorm rather than torch.nn.modules.normalization.LayerNorm."""
    if cls.__module__.startswith("torch.nn.") and getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return qualified(cls)


def _original_of(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not is_converted(base):
            return base
    return cls


def inspect_fused(cls: type) -> Tuple[str, str]:
    """(original class name, adapter id) for an already converted class."""
    if cls in _fnn.SWAPS.values():
        torch_cls = next(k for k, v in _fnn.SWAPS.items() if v is cls)
        return torch_name(torch_cls), "torch.nn"
    return qualified(_original_of(cls)), cls._fusednorm_adapter.id



def fused_name(cls: type) -> str:
    """fusednorm.nn.LayerNorm for fusednorm.nn's classes, fusednorm.<Name> for adapters'."""
    if cls in _fnn.SWAPS.values():
        return f"fusednorm.nn.{cls.__name__}"
    return f"fusednorm.{cls.__name__}"
