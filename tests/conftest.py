"""Shared fixtures: the CPU backends present on this machine, a forced-backend fixture,
a CUDA marker and hypothesis profiles (HYPOTHESIS_PROFILE=ci|dev|nightly)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import pysd
from pysd import _backend

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("nightly", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CPU_BACKENDS = ("cpp", "numba", "torch")
HAS_CUDA = _backend.status("cuda").usable

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and pysd._C_cuda")


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    """Runs the test once per CPU backend, forced through PYSD_BACKEND."""
    monkeypatch.setenv("PYSD_BACKEND", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
