"""convert(report=True): every norm-like module, what it became or why it was left.

torch only: these cases need no model library (tests/test_adapters.py covers the adapters).
"""
import warnings

import pytest
import torch
from torch import nn

import fusednorm
from fusednorm import adapters


class OwnForwardLN(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


class InheritedLN(nn.LayerNorm):
    pass


class ScaleNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True)


class AdaLayerNormZero(nn.Module):
    """A wrapper named like a norm: it holds a Linear, so its inner LayerNorm is reported
    instead of it."""

    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, x):
        scale, shift = self.linear(x).chunk(2, -1)
        return self.norm(x) * (1 + scale) + shift


class NormalHead(nn.Module):  # "Normal", not a norm
    def forward(self, x):
        return x


def model():
    return nn.ModuleDict({
        "ln": nn.LayerNorm(8), "bn": nn.BatchNorm1d(8), "gn": nn.GroupNorm(2, 8),
        "rms": nn.RMSNorm(8), "own": OwnForwardLN(8), "inherited": InheritedLN(8),
        "scale": ScaleNorm(), "ada": AdaLayerNormZero(8), "head": NormalHead(),
        "wn": nn.utils.parametrizations.weight_norm(nn.Linear(8, 8)),
        "lazy": nn.LazyBatchNorm1d(), "lrn": nn.LocalResponseNorm(2),
        "rmsnorm_like": nn.Identity(),
    })


def by_name(report):
    return {e.name: e for e in report.entries}


def test_report_lists_every_norm_like_module_with_what_it_became_or_why():
    m = model()
    out, report = fusednorm.convert(m, report=True)
    assert out is m
    entries = by_name(report)
    assert set(entries) == {"ln", "bn", "gn", "rms", "own", "inherited", "scale", "ada.norm",
                            "lazy", "lrn"}
    for name, cls in (("ln", "LayerNorm"), ("bn", "BatchNorm1d"), ("gn", "GroupNorm"),
                      ("rms", "RMSNorm")):
        e = entries[name]
        assert (e.status, e.adapter, e.original, e.became) == \
            ("converted", "torch.nn", f"torch.nn.{cls}", f"fusednorm.nn.{cls}")
        assert type(m[name]) is fusednorm.nn.SWAPS[getattr(nn, cls)]
    assert entries["ada.norm"].status == "converted"
    reasons = {n: e.reason for n, e in entries.items() if e.status == "left"}
    assert reasons["own"] == ("subclass of torch.nn.LayerNorm with its own forward "
                              "(OwnForwardLN.forward): no adapter registered")
    assert reasons["inherited"].startswith("subclass of torch.nn.LayerNorm (forward inherited)")
    assert reasons["scale"] == (f"unknown class {__name__}.ScaleNorm: no adapter registered")
    assert reasons["lazy"].startswith("lazy module with uninitialized parameters")
    assert reasons["lrn"].startswith("unknown class torch.nn.modules.normalization.Local")
    assert type(m["own"]) is OwnForwardLN and type(m["inherited"]) is InheritedLN
    assert len(report.converted) == 5 and len(report.left) == 5
    text = str(report)
    assert text.splitlines()[0] == ("fusednorm.convert: 5 of 10 norm modules are fusednorm's, "
                                    "5 left")
    assert "left       1 x ScaleNorm (e.g. scale): unknown class" in text
    assert report.rows()[0]["name"] == "ln"


def test_second_convert_reports_already_and_records_the_backend():
    m = model()
    fusednorm.convert(m, report=True)
    _, report = fusednorm.convert(m, backend="reference", report=True)
    entries = by_name(report)
    assert entries["ln"].status == "already" and entries["ln"].became == "fusednorm.nn.LayerNorm"
    assert m["ln"]._fusednorm_backend == "reference" and "_fusednorm_backend" not in vars(m["own"])
    fusednorm.convert(m, report=True)
    assert "_fusednorm_backend" not in vars(m["ln"])


def test_warns_about_what_it_left_unless_asked_for_the_report():
    with pytest.warns(adapters.ConversionWarning,
                      match=r"5 of 10 norm modules are fusednorm's, 5 left \(OwnForwardLN x1, "
                            r"InheritedLN x1, ScaleNorm x1, LazyBatchNorm1d x1, "
                            r"LocalResponseNorm x1\); convert\(model, report=True\) says why"):
        fusednorm.convert(model())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusednorm.convert(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
        fusednorm.convert(model(), report=True)


def test_report_argument_is_checked():
    with pytest.raises(TypeError, match=r"report='yes'; expected a bool"):
        fusednorm.convert(nn.LayerNorm(4), report="yes")


def test_norm_like_names():
    like = adapters._name_is_norm_like
    assert all(like(n) for n in ("LlamaRMSNorm", "T5LayerNorm", "Normalize", "L2Normalise",
                                 "AutoformerLayernorm", "GroupNormAct", "QKNorm"))
    assert not any(like(n) for n in ("NormalEstimator", "Linear", "Abnormal"))
