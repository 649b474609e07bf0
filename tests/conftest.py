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


# ------------------------------------------------------------------- the GPU selection
# bench/gpu_check.sh runs `pytest -m gpu`: every case that exercises the GPU and nothing that
# CI already runs on CPU (device time is scarce).  A case is a GPU case when it is marked
# @pytest.mark.gpu (the CUDA pairs of _util.backend_params carry the mark), or, on a machine
# with a GPU, when it uses the `device` fixture above.
def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: exercises a CUDA device (bench/gpu_check.sh: -m gpu)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        for item in items:
            if "device" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.gpu)
