"""Every validation message, and the backend-selection errors."""
import pytest
import torch

import fusednorm
from _util import randn

X = randn(2, 6, 4, seed=1)


# (call, exception, message pattern); tests/test_paths.py also runs each under torch.compile
CASES = [
    (lambda: fusednorm.layer_norm(X, (5,)), ValueError,
     r"layer_norm: normalized_shape=\(5,\) does not match input of shape \(2, 6, 4\)"),
    (lambda: fusednorm.layer_norm(X, (2, 6, 4, 1)), ValueError, r"normalized_shape=.*expected"),
    (lambda: fusednorm.layer_norm(X, "4"), TypeError, "normalized_shape='4'; expected an int"),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(5)), ValueError,
     r"weight has shape \(5,\); expected \(4,\)"),
    (lambda: fusednorm.layer_norm(X, 4, None, torch.ones(4, 1)), ValueError,
     r"bias has shape \(4, 1\); expected \(4,\)"),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(4, device="meta")), ValueError,
     "weight is on meta but input is on cpu"),
    (lambda: fusednorm.layer_norm(X, 4, torch.ones(4, dtype=torch.int32)), TypeError,
     "weight has dtype torch.int32; expected a floating dtype"),
    (lambda: fusednorm.layer_norm(X.long(), 4), TypeError,
     "input has dtype torch.int64; expected one of float32"),
    (lambda: fusednorm.layer_norm(X.to(torch.complex64), 4), TypeError,
     "input has dtype torch.complex64"),
    (lambda: fusednorm.layer_norm([1.0, 2.0], 2), TypeError,
     "input must be a torch.Tensor, got list"),
    (lambda: fusednorm.layer_norm(X, 4, eps=-1.0), ValueError, "eps=-1.0; expected a finite"),
    (lambda: fusednorm.layer_norm(X, 4, residual=randn(2, 6, 3)), ValueError,
     r"residual has shape \(2, 6, 3\); expected the input's shape \(2, 6, 4\)"),
    (lambda: fusednorm.layer_norm(X, 4, residual=X.half()), TypeError,
     "residual has dtype torch.float16; expected the input's dtype torch.float32"),
    (lambda: fusednorm.layer_norm(X, 4, prenorm=1), TypeError, "prenorm=1; expected a bool"),
    (lambda: fusednorm.rms_norm(X, (6,)), ValueError, r"rms_norm: normalized_shape=\(6,\)"),
    (lambda: fusednorm.group_norm(X, 4), ValueError, "num_groups=4 must divide channels=6"),
    (lambda: fusednorm.group_norm(X, 0), ValueError, "num_groups=0; expected a positive int"),
    (lambda: fusednorm.group_norm(randn(6), 2), ValueError,
     r"input has 1 dims \(shape \(6,\)\); expected at least 2"),
    (lambda: fusednorm.group_norm(X, 3, torch.ones(3)), ValueError,
     r"weight has shape \(3,\); expected \(6,\)"),
    (lambda: fusednorm.group_norm(X, 3, activation="relu"), ValueError,
     "activation='relu'; expected None or 'silu'"),
    (lambda: fusednorm.batch_norm(X, None, None), RuntimeError,
     "running_mean and running_var are required when training=False"),
    (lambda: fusednorm.batch_norm(X, torch.zeros(5), torch.ones(6)), ValueError,
     r"running_mean has shape \(5,\); expected \(6,\)"),
    (lambda: fusednorm.batch_norm(randn(1, 6), None, None, training=True), ValueError,
     "expected more than 1 value per channel when training"),
    (lambda: fusednorm.batch_norm(randn(4), None, None, training=True), ValueError,
     "expected at least 2"),
    (lambda: fusednorm.instance_norm(randn(2, 6)), ValueError, "expected at least 3"),
    (lambda: fusednorm.instance_norm(randn(2, 6, 1)), ValueError,
     "expected more than 1 spatial element"),
    (lambda: fusednorm.instance_norm(X, use_input_stats=False), RuntimeError,
     "running_mean and running_var are required when use_input_stats=False"),
    (lambda: fusednorm.layer_norm(X, 4, backend="tpu"), ValueError,
     r"backend='tpu'; expected None, 'auto' or one of"),
    (lambda: fusednorm.batch_norm(X, None, None, training=True, momentum=None), TypeError,
     "momentum=None; expected a float"),
    (lambda: fusednorm.batch_norm(X, None, None, training=True, momentum="0.1"), TypeError,
     "momentum='0.1'; expected a float"),
]


@pytest.mark.parametrize("call,exc,match", CASES)
def test_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu  # also on CPU: says why cuda is unavailable
def test_unavailable_backend_says_why(monkeypatch):
    avail = fusednorm.available_backends()
    assert avail["torch"] is True
    for name, why in avail.items():
        assert why is True or (isinstance(why, str) and why)
    if avail["cuda"] is not True:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available: "):
            fusednorm.layer_norm(X, 4, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda'") as info:
            fusednorm.layer_norm(X, 4, backend="cuda")
        assert "CUDA" in str(info.value) or "cuda" in str(info.value)


def test_env_default_is_read_per_call(monkeypatch):
    monkeypatch.setenv("FUSEDNORM_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend='nope'"):
        fusednorm.layer_norm(X, 4)
    monkeypatch.setenv("FUSEDNORM_BACKEND", "torch")
    fusednorm.layer_norm(X, 4)
    monkeypatch.delenv("FUSEDNORM_BACKEND")
    fusednorm.layer_norm(X, 4)


def test_module_wrong_channels():
    m = fusednorm.convert(torch.nn.InstanceNorm1d(5, affine=True))
    with pytest.raises(ValueError, match="match num_features"):
        m(randn(2, 4, 7))


@pytest.mark.gpu  # also on CPU: the CPU part
def test_auto_backend_selection(monkeypatch):
    from fusednorm import _backend

    monkeypatch.delenv("FUSEDNORM_BACKEND", raising=False)
    assert _backend.resolve("layer_norm", "layer_norm", None, X) == "torch"
    assert _backend.resolve("layer_norm", "layer_norm", "auto", X) == "torch"
    if torch.cuda.is_available():
        xg = X.cuda()
        want = "cuda" if (_backend._prebuilt_extension()
                          and fusednorm.available_backends()["cuda"] is True) else "triton"
        for op in ("layer_norm", "group_norm", "batch_norm"):
            assert _backend.resolve("f", op, None, xg) == want
        # float64 is the reference's alone
        assert _backend.resolve("f", "layer_norm", None, xg.double()) == "torch"


def test_numpy_scalars_are_accepted_like_torch():
    """torch.nn modules built from a numpy-parsed config keep working after convert()."""
    import numpy as np

    x = randn(2, 4, 3, seed=5)
    for make in (lambda: torch.nn.LayerNorm(np.int64(3)), lambda: torch.nn.RMSNorm(np.int64(3)),
                 lambda: torch.nn.GroupNorm(np.int64(2), 4),
                 lambda: torch.nn.BatchNorm1d(4, eps=np.float32(1e-5)),
                 lambda: torch.nn.InstanceNorm1d(4, eps=np.float32(1e-5))):
        ref = make()
        ours = fusednorm.convert(make())
        torch.testing.assert_close(ours(x), ref(x))
    with pytest.raises(TypeError, match="normalized_shape=True"):
        fusednorm.layer_norm(x, True)
