"""fusednorm.convert: swap a model's norm modules for fusednorm's, in place, and say what it did."""
from typing import Optional

import torch

from . import _backend
from . import adapters as _adapters
from .nn import SWAPS


def convert(module: torch.nn.Module, *, backend: Optional[str] = None, report: bool = False):
    """Swap the norm modules inside ``module`` (and ``module`` itself) for fusednorm's, in
    place, and return ``module`` -- or ``(module, report)`` with ``report=True``.

    Converted: the exact torch.nn norm classes (to ``fusednorm.nn``'s), and the third-party
    classes in ``fusednorm.adapters.REGISTRY`` (transformers' RMSNorm family, T5, Gemma,
    Cohere and ConvNeXt norms, timm's LayerNorm / LayerNorm2d / GroupNorm / RmsNorm and their
    Fp32 variants, diffusers' RMSNorm and FP32LayerNorm) when the class is the registered
    object, its forward is the code the adapter reproduces and its options are covered.
    Matching is by class identity: a subclass (which may override forward) is left alone.

    The swap changes the object's class only, so parameters, buffers, state_dict keys,
    device, dtype, train/eval mode, hooks and any optimizer state that refers to the
    parameters are kept.  Converting twice is harmless; ``backend`` (None for the per-call
    default) is recorded on each converted module, also on modules converted before.

    convert() acts on the module instances that exist when it runs; it patches no class and
    no library.  Call it after the model is built or loaded (``from_pretrained``), and again on
    any module built later.

    Every norm-like module it sees gets a :class:`fusednorm.adapters.ReportEntry`: what it
    became, or why it was left (unknown class, a subclass or an instance with its own forward,
    an option the adapter does not reproduce, a forward that changed in another library
    version).  With ``report=True`` the :class:`~fusednorm.adapters.ConversionReport` is
    returned (``print(report)`` groups it by class; ``report.entries`` has every module);
    otherwise a :class:`~fusednorm.adapters.ConversionWarning` names what was left, if
    anything.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"fusednorm.convert: module must be a torch.nn.Module, got "
                        f"{type(module).__name__}")
    if backend not in (None, "auto") and backend not in _backend._MODULES:
        raise ValueError(f"fusednorm.convert: {_backend.name_error(backend)}")
    if not isinstance(report, bool):
        raise TypeError(f"fusednorm.convert: report={report!r}; expected a bool")
    rep = _adapters.ConversionReport()
    for name, m in module.named_modules():
        cls = type(m)
        if _adapters.is_converted(cls):
            original, adapter = _adapters.inspect_fused(cls)
            entry = _adapters.ReportEntry(name, original, "already",
                                          _adapters.fused_name(cls), adapter)
        elif cls in SWAPS:
            m.__class__ = SWAPS[cls]
            entry = _adapters.ReportEntry(name, _adapters.torch_name(cls), "converted",
                                          _adapters.fused_name(SWAPS[cls]), "torch.nn",
                                          "the fusednorm op of the same name")
        elif _adapters.is_norm_like(m):
            plan = _adapters.plan(m)
            if plan.new_class is not None:
                m.__class__ = plan.new_class
                entry = _adapters.ReportEntry(name, _adapters.qualified(cls), "converted",
                                              "fusednorm." + plan.new_class.__name__,
                                              plan.adapter, plan.how)
            else:
                entry = _adapters.ReportEntry(name, _adapters.qualified(cls), "left",
                                              reason=plan.reason)
        else:
            continue
        if entry.status != "left":
            if backend is None:
                m.__dict__.pop("_fusednorm_backend", None)
            else:
                m._fusednorm_backend = backend
        rep.entries.append(entry)
    if report:
        return module, rep
    rep.warn_if_left()
    return module
