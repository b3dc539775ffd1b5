"""pysd.partial_labels: every backend against the torch reference, the tie rule, and bad input."""

import numpy as np
import pytest
import torch

import pysd
from pysd import _backend
from pysd._ref.partial_labels import partial_labels as ref_partial_labels

from conftest import requires_cuda


def _probs(n, c, dtype=torch.float64, ties=False):
    if ties:
        # Few distinct values, so most rows have ties at the top-k boundary.
        x = torch.randint(0, 3, (n, c)).to(torch.float64)
    else:
        x = torch.randn(n, c, dtype=torch.float64)
    return torch.softmax(x, -1).to(dtype)


def _expected(p, k, renormalize):
    """Straight from the definition: rank by (-value, index), keep the first k."""
    out = torch.zeros_like(p, dtype=torch.float64)
    for i, row in enumerate(p.to(torch.float64).tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        mass = sum(row[j] for j in order)
        for j in order:
            out[i, j] = row[j] / mass if renormalize and mass > 0 else 1.0 / k
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_definition(backend, k, renormalize, ties):
    p = _probs(37, 7, ties=ties)
    out = pysd.partial_labels(p, k, renormalize=renormalize)
    assert out.dtype == p.dtype and out.shape == p.shape
    torch.testing.assert_close(out, _expected(p, k, renormalize), rtol=0, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 15, 16, 17, 90])
@pytest.mark.parametrize("ties", [False, True])
def test_wide_rows_around_the_one_pass_limit(backend, k, ties):
    """C = 203 spans several 64-wide chunks of the CPU's one-pass selection (k <= 16) and the
    k-pass path above it; ties put equal values on both sides of the boundary."""
    p = _probs(23, 203, ties=ties)
    torch.testing.assert_close(pysd.partial_labels(p, k), _expected(p, k, False), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,k", [((5, 3, 11), 2), ((64, 1000), 2), ((9, 300), 250), ((4, 1), 1), ((0, 5), 2)])
def test_backends_agree_with_reference(backend, dtype, shape, k):
    p = _probs(int(torch.tensor(shape[:-1]).prod()), shape[-1], dtype, ties=dtype in (torch.bfloat16,))
    p = p.reshape(shape)
    for renormalize in (False, True):
        out = pysd.partial_labels(p, k, renormalize=renormalize)
        ref = ref_partial_labels(p, k, renormalize=renormalize)
        # Selections must match exactly; renormalised values differ by the summation order only.
        assert torch.equal(out != 0, ref != 0)
        tol = {torch.float64: 1e-15, torch.float32: 1e-6}.get(dtype, 1e-2)
        torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
        if out.numel():
            torch.testing.assert_close(out.double().sum(-1), torch.ones(shape[:-1], dtype=torch.float64),
                                       rtol=0, atol=8 * torch.finfo(dtype).eps)


def test_documented_tie_example(backend):
    p = torch.tensor([[0.4, 0.3, 0.3]], dtype=torch.float64)
    assert pysd.partial_labels(p, 2).tolist() == [[0.5, 0.5, 0.0]]
    flat = torch.full((1, 4), 0.25, dtype=torch.float64)
    assert pysd.partial_labels(flat, 3).tolist() == [[1 / 3, 1 / 3, 1 / 3, 0.0]]


def test_numpy_integer_k():
    p = _probs(3, 5)
    torch.testing.assert_close(pysd.partial_labels(p, np.int64(3)), _expected(p, 3, False), rtol=0, atol=0)


def test_zero_row_and_strided_input(backend):
    z = torch.zeros(2, 5, dtype=torch.float64)
    assert pysd.partial_labels(z, 2, renormalize=True).tolist() == [[0.5, 0.5, 0, 0, 0]] * 2
    p = _probs(8, 12)
    strided = p.t().contiguous().t()            # column-major: stride(-1) != 1
    torch.testing.assert_close(pysd.partial_labels(strided, 3), _expected(p, 3, False), rtol=0, atol=0)


def test_usable_as_kd_loss_target():
    p = _probs(16, 10)
    target = pysd.partial_labels(p, 2)
    logits = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    loss = pysd.kd_loss(logits, target, teacher_format="probs")
    loss.backward()
    # Soft CE minus the target's entropy log 2; its gradient is (softmax - target) / N.
    grad = (torch.softmax(logits.detach(), -1) - target) / 16
    torch.testing.assert_close(logits.grad, grad, rtol=1e-12, atol=1e-14)


def test_not_differentiable():
    p = _probs(4, 5).requires_grad_(True)
    out = pysd.partial_labels(p)
    assert not out.requires_grad


def test_compiles_without_graph_break():
    p = _probs(6, 9)
    fn = torch.compile(lambda x: pysd.partial_labels(x, 2), fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(p), _expected(p, 2, False), rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, -1, 6])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must satisfy"):
        pysd.partial_labels(_probs(3, 5), k)


def test_bad_inputs():
    p = _probs(3, 5)
    with pytest.raises(TypeError, match="k must be an int"):
        pysd.partial_labels(p, 2.0)
    with pytest.raises(TypeError, match="teacher_probs must be a torch.Tensor"):
        pysd.partial_labels(p.numpy())
    with pytest.raises(TypeError, match="float32/float64"):
        pysd.partial_labels(torch.ones(3, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="0-d"):
        pysd.partial_labels(torch.tensor(1.0))
    bad = p.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        pysd.partial_labels(bad)
    bad[1, 2] = -0.1
    with pytest.raises(ValueError, match="negative"):
        pysd.partial_labels(bad)
    unnormalised = p * 1.01
    pysd.partial_labels(unnormalised)                       # accepted unless strict
    with pytest.raises(ValueError, match="strict=True"):
        pysd.partial_labels(unnormalised, strict=True)
    pysd.partial_labels(p, strict=True)
    pysd.partial_labels(p.float(), strict=True)


def test_registered_on_every_backend():
    assert set(_backend.info()["ops"]["partial_labels"]) == {"cpp", "cuda", "numba", "torch"}


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("c,k", [(10, 2), (1000, 2), (300, 250), (33, 33)])
def test_cuda_matches_reference(dtype, c, k):
    p = _probs(301, c, dtype, ties=True).cuda()
    for renormalize in (False, True):
        out = pysd.partial_labels(p, k, renormalize=renormalize)
        ref = ref_partial_labels(p.cpu(), k, renormalize=renormalize)
        assert torch.equal((out != 0).cpu(), ref != 0)
        torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=1e-2, atol=1e-6)


def test_custom_op_opcheck(backend):
    from pysd.ops.partial_labels import _partial_labels_op

    p = torch.rand(6, 5).softmax(-1)
    torch.library.opcheck(_partial_labels_op, (p, 2, False))
    torch.library.opcheck(_partial_labels_op, (p, 3, True))
