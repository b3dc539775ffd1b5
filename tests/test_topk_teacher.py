"""pysd.topk_teacher on every CPU backend against a stable sort + log_softmax, and the
SparseTeacher on-disk layout."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pysd

from conftest import requires_cuda


def expected(x, k, temperature, fmt):
    x64 = x.double()
    top, ids = torch.sort(x64, dim=-1, descending=True, stable=True)  # ties: lower index first
    lp = F.log_softmax(x64 / temperature, -1).gather(-1, ids[..., :k])
    vals = {"logprobs": lp, "probs": lp.exp(), "logits": top[..., :k] / temperature}[fmt]
    return ids[..., :k], vals


@pytest.mark.parametrize("fmt", ["logprobs", "probs", "logits"])
@pytest.mark.parametrize("shape,k", [((5, 1), 1), ((3, 257), 7), ((2, 3, 1001), 64), ((4, 20), 20)])
def test_matches_sort(backend, fmt, shape, k):
    x = torch.randn(shape) * 3
    x.reshape(-1, shape[-1])[0, ::3] = 1.5  # ties
    st = pysd.topk_teacher(x, k, temperature=2.0, format=fmt)
    ids, vals = expected(x, k, 2.0, fmt)
    assert st.indices.shape == (*shape[:-1], k) and st.temperature == 2.0 and st.format == fmt
    assert torch.equal(st.indices, ids)
    torch.testing.assert_close(st.values.double(), vals, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(backend, dtype):
    x = (torch.randn(3, 333) * 2).to(dtype)
    st = pysd.topk_teacher(x, 5)
    ids, vals = expected(x, 5, 1.0, "logprobs")
    assert torch.equal(st.indices, ids)
    assert st.values.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(st.values.double(), vals, rtol=1e-5, atol=1e-5)


def test_extreme_and_errors():
    x = torch.tensor([[-1e30, 1e30, 0.0, float("-inf")]])
    st = pysd.topk_teacher(x, 2)
    assert st.indices.tolist() == [[1, 2]] and st.values[0, 0].item() == 0.0
    with pytest.raises(ValueError, match="k must"):
        pysd.topk_teacher(x, 5)
    with pytest.raises(ValueError, match="temperature"):
        pysd.topk_teacher(x, 1, temperature=0.0)
    with pytest.raises(TypeError):
        pysd.topk_teacher(x.long(), 1)


def test_opcheck():
    torch.library.opcheck(torch.ops.pysd.topk_teacher.default, (torch.randn(4, 50), 3, 1.0, 2))


def test_save_load_roundtrip_mmap_and_index(tmp_path):
    x = torch.randn(6, 4, 50)
    st = pysd.topk_teacher(x, 8, temperature=2.0, tail="bucket")
    st.indices = st.indices.to(torch.int32)
    path = tmp_path / "teacher.npz"
    st.save(path)
    assert sorted(os.listdir(tmp_path)) == ["teacher.npz"]  # nothing half-written left behind
    with np.load(path) as z:  # a plain .npz
        assert z["indices"].shape == (6, 4, 8) and str(z["tail"]) == "bucket"
    back = pysd.SparseTeacher.load(path)
    mapped = pysd.sparse_teacher._npz_member_memmap(str(path), "values")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, st.values.numpy())  # mapped, not read
    assert (back.format, back.tail, back.temperature) == ("logprobs", "bucket", 2.0)
    assert torch.equal(back.indices, st.indices) and torch.equal(back.values, st.values)
    rows = torch.tensor([4, 1])
    batch = back[rows]
    assert torch.equal(batch.indices, st.indices[rows]) and torch.equal(batch.values, st.values[rows])
    eager = pysd.SparseTeacher.load(path, mmap=False)
    assert torch.equal(eager.values, st.values)
    # the loaded rows drive the loss exactly as the originals
    s = torch.randn(2, 4, 50, dtype=torch.float64)
    a = pysd.kd_loss(s, st[rows].to(dtype=torch.float64), temperature=2.0)
    b = pysd.kd_loss(s, batch.to(dtype=torch.float64), temperature=2.0)
    assert a.item() == b.item()


def test_save_load_errors(tmp_path):
    st = pysd.topk_teacher(torch.randn(2, 9), 3)
    with pytest.raises(ValueError, match="directory"):
        st.save(tmp_path / "missing" / "t.npz")
    with pytest.raises(ValueError, match="no file"):
        pysd.SparseTeacher.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", indices=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lacks"):
        pysd.SparseTeacher.load(tmp_path / "other.npz")


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu():
    x = torch.randn(7, 3001)
    a = pysd.topk_teacher(x, 33, temperature=1.5)
    b = pysd.topk_teacher(x.cuda(), 33, temperature=1.5)
    assert torch.equal(b.indices.cpu(), a.indices)
    torch.testing.assert_close(b.values.cpu(), a.values, rtol=1e-5, atol=1e-5)
