"""The extension's propagate solver steps (``pysd._cpp.propagate.stepped``, which pysd.distributed drives
with halo exchanges and all-reduces between the steps) in one process: bit for bit the fused call, and
the float64 torch reference within rounding.  Sharded runs: tests/test_distributed.py."""

import numpy as np
import pytest
import torch

from pysd import _backend
from pysd._codes import Solver
from pysd._cpp import propagate as steps
from pysd._ref import propagate as ref
from test_propagate import blobs, seeds, sym_graph

# (rows, classes): a tail of < 16 columns, one 16-column chunk plus a tail, the 32- and 96-column paths
SHAPES = [(300, 6), (257, 1), (311, 37), (97, 130)]


def _problem(n, c, seed=0):
    x, y = blobs(n, c, spread=1.0, seed=seed)
    y = np.where(np.random.default_rng(seed + 1).random(n) < 0.4, y, -1)
    s = sym_graph(x, 7)
    return s, seeds(y, c), y


def _args(s, y_seeds, labels, dtype):
    indptr = torch.from_numpy(s.indptr.astype(np.int64))
    indices = torch.from_numpy(s.indices.astype(np.int32))
    values = torch.from_numpy(s.data).to(dtype)
    return indptr, indices, values, torch.from_numpy(y_seeds).to(dtype), torch.from_numpy(labels.astype(np.int64))


def _run(fn, args, solver, max_iter, tol):
    indptr, indices, values, y, given = args
    return fn(indptr, indices, values, y.clone(), given, alpha=0.99, solver=int(solver), max_iter=max_iter, tol=tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", [Solver.CG, Solver.ITERATE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_iter,tol", [(25, 0.0), (40, 1e-4)])
def test_steps_equal_the_fused_call_bit_for_bit(shape, solver, dtype, max_iter, tol):
    s, y, labels = _problem(*shape)
    args = _args(s, y, labels, dtype)
    ext = _backend.extension("_C")
    fused = _run(lambda *a, **k: steps.backend(ext, *a, **k), args, solver, max_iter, tol)
    stepped = _run(lambda *a, **k: steps.stepped(ext, *a, **k), args, solver, max_iter, tol)
    assert stepped[8:] == fused[8:]  # iterations, flips
    for name, a, b in zip(("z", "scores", "oos", "labels", "confidence", "weight", "margin", "residual"),
                          stepped[:8], fused[:8]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    if tol > 0 and solver == Solver.CG:
        assert fused[8] < max_iter  # the early stop was exercised


@pytest.mark.parametrize("solver", [Solver.CG, Solver.ITERATE])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_steps_match_the_float64_reference(solver, dtype, rtol):
    s, y, labels = _problem(300, 6, seed=3)
    ext = _backend.extension("_C")
    got = _run(lambda *a, **k: steps.stepped(ext, *a, **k), _args(s, y, labels, dtype), solver, 30, 1e-6)
    want = _run(ref.backend, _args(s, y, labels, torch.float64), solver, 30, 1e-6)
    assert got[8:] == want[8:]
    for name, a, b in zip(("z", "scores", "oos", "confidence", "weight"), got[:3] + got[4:6], want[:3] + want[4:6]):
        scale = float(b.abs().max())
        assert float((a.double() - b).abs().max()) <= rtol * max(scale, 1.0), name
    assert torch.equal(got[3], want[3])
    torch.testing.assert_close(got[7], want[7], rtol=1e-3 if dtype == torch.float32 else 1e-7, atol=1e-7)


@pytest.mark.parametrize("solver", [Solver.CG, Solver.ITERATE])
def test_steps_on_zero_rows_and_zero_seeds(solver):
    """A shard without rows (n = 0) and seeds without mass: no step divides by zero, nothing is read."""
    ext = _backend.extension("_C")
    empty = (torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32), torch.zeros(0),
             torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    z, scores, oos, labels, conf, weight, margin, residual, it, flips = _run(
        lambda *a, **k: steps.stepped(ext, *a, **k), empty, solver, 5, 1e-6)
    assert z.shape == scores.shape == oos.shape == (0, 3) and labels.shape == (0,)
    assert torch.equal(residual, torch.zeros(3, dtype=torch.float64))
    assert (it, flips) == ((0, -1) if solver == Solver.CG else (1, 0))
    s, y, labels = _problem(50, 2)
    zero = _args(s, 0 * y, labels, torch.float32)
    out = _run(lambda *a, **k: steps.stepped(ext, *a, **k), zero, solver, 5, 1e-6)
    assert not out[0].any() and torch.equal(out[3], torch.full((50,), -1))
