"""Test configuration shared by every suite.

Without a GPU the Triton kernels run through Triton's interpreter on CPU tensors; the
interpreter must be switched on before any @triton.jit function is created, so it is set
here, before fusednorm (and with it fusednorm.kernels) is imported.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def device():
    """Where kernel tests run: the GPU when there is one, else the CPU (Triton interpreter)."""
    return "cuda" if HAS_CUDA else "cpu"
