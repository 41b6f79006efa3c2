"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch


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


@pytest.fixture(params=["kernels", "reference"])
def spikegpt_path(request):
    """Run a SpikeGPT test on its C++ CPU kernels and on its pure-PyTorch reference paths."""
    from trainers.models.spikegpt_kernels import kernels_take, reference_paths

    if request.param == "kernels":
        assert kernels_take(torch.zeros(1)), "SpikeGPT's C++ kernels did not build (see the warning)"
        yield request.param
    else:
        with reference_paths():
            yield request.param


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: without one they are skipped, with that reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
