"""Fixtures shared by several test files."""

from __future__ import annotations

import os

import pytest
import torch

# SpikeGPT's Triton kernels are tested on CPU tensors in Triton's interpreter where there is no GPU
# (test_spikegpt_triton.py). Triton reads TRITON_INTERPRET when it decorates a kernel, its own library's
# included, which it does when it is imported: importing transformers imports it, so the variable is set
# here, before pytest imports any test module, for the whole run. Without a GPU nothing else runs Triton
# kernels (Inductor compiles for CPU in C++ and ignores the variable), so it changes nothing else; with a GPU
# it is left unset and those tests run on the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def torch_threads(request):
    """Run a test with torch on 1 and on 2 CPU threads (kernels split work differently), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["cpp", "reference"])
def spikegpt_path(request):
    """Run a SpikeGPT test on its C++ CPU kernels and on its pure-PyTorch reference paths."""
    from trainers.models.spikegpt_kernels import backend

    with backend(request.param):  # a C++ kernel that did not build fails the test, with the reason
        yield request.param


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: without one they are skipped, with that reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
