"""``pysd.SparseTeacher``: a teacher stored as its top-k entries per row, and its on-disk layout."""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from . import _checks
from ._codes import Tail, TeacherFormat, options

PAD = -1
_LAYOUT_VERSION = 1


class SparseTeacher:
    r"""A teacher distribution given by ``k`` entries per row.

    Args:
        indices: ``(..., k)`` int32/int64 class ids.  An id ``< 0`` (use ``-1``) is padding,
            for rows with fewer than ``k`` entries.  Duplicate ids within a row add their
            probabilities (as a scatter-add).  An id ``>= V`` (the student's vocabulary)
            is an error (``ValueError`` when the loss validates its inputs; when
            ``torch.compile`` skips validation the row's loss and gradient are NaN).
        values: ``(..., k)`` float, the entries in ``format``:
            ``"logprobs"`` (log-probabilities of the full teacher distribution),
            ``"probs"`` (its probabilities), or ``"logits"`` (logits whose softmax is the
            teacher; with only k of them the missing mass is unknown, so ``"logits"``
            requires ``tail="renormalize"``).
        tail: what happens to the mass ``m = 1 - sum(p_topk)`` the entries leave out:

            * ``"renormalize"`` — the entries are renormalized to sum to 1 (no tail).
            * ``"bucket"`` — one extra class of mass ``m`` set against the student's
              ``1 - sum(q_topk)`` (the student's mass outside the named ids); when the
              entries name every class there is no bucket and ``m`` is dropped.
            * ``"uniform"`` — ``m`` spread evenly over the ``V - k`` classes not named.
        temperature: the temperature ``T_gen`` the values were produced at.  At loss
            temperature ``T`` every atom of the teacher (each entry, the bucket, each
            uniform tail class) is re-tempered as ``p ** (T_gen / T)`` and the atoms are
            renormalized; ``T_gen == T`` leaves the distribution as stored.

    The student is always normalized over its full vocabulary.  A row whose entries are
    all padding has no teacher under ``"renormalize"`` (its soft term is 0).

    Indexing (``st[rows]``) selects rows of the leading dims, e.g. a batch of a teacher
    loaded with :meth:`load`.  :meth:`save` / :meth:`load` store it on disk (see
    :meth:`save` for the layout).
    """

    def __init__(self, indices: Tensor, values: Tensor, format: str = "logprobs", tail: str = "renormalize",
                 temperature: float = 1.0):
        if not isinstance(indices, Tensor) or indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"SparseTeacher: indices must be an int32/int64 tensor, got "
                            f"{getattr(indices, 'dtype', type(indices).__name__)}")
        if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
            raise TypeError(f"SparseTeacher: values must be a floating-point tensor, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        if indices.dim() < 1 or indices.shape != values.shape:
            raise ValueError(f"SparseTeacher: indices and values must both have shape (..., k); got "
                             f"{tuple(indices.shape)} and {tuple(values.shape)}")
        if indices.device != values.device:
            raise ValueError(f"SparseTeacher: indices on {indices.device}, values on {values.device}")
        _checks.choice("SparseTeacher", "format", format, options(TeacherFormat))
        _checks.choice("SparseTeacher", "tail", tail, options(Tail))
        if format == "logits" and tail != "renormalize":
            raise ValueError("SparseTeacher: format='logits' carries no tail mass (the normalizer over the full "
                             "vocabulary is unknown); use tail='renormalize' or store logprobs/probs")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"SparseTeacher: temperature must be a finite number > 0, got {temperature!r}")
        self.indices = indices
        self.values = values
        self.format = format
        self.tail = tail
        self.temperature = float(temperature)

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """Leading (row) dims, without k."""
        return self.indices.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __len__(self) -> int:
        return self.indices.shape[0] if self.indices.dim() > 1 else 1

    def _like(self, indices: Tensor, values: Tensor) -> "SparseTeacher":
        return SparseTeacher(indices, values, self.format, self.tail, self.temperature)

    def __getitem__(self, rows) -> "SparseTeacher":
        if self.indices.dim() < 2:
            raise IndexError("SparseTeacher: a single row (shape (k,)) cannot be indexed by row")
        if isinstance(rows, Tensor) and rows.dtype != torch.bool:
            rows = rows.long()
        return self._like(torch.as_tensor(self.indices[rows]), torch.as_tensor(self.values[rows]))

    def reshape(self, *shape) -> "SparseTeacher":
        """Reshape the leading dims (k stays last)."""
        return self._like(self.indices.reshape(*shape, self.k), self.values.reshape(*shape, self.k))

    def to(self, *args, **kwargs) -> "SparseTeacher":
        """Move to a device (the dtype of ``values`` only with ``dtype=``; ids keep theirs)."""
        dtype = kwargs.pop("dtype", None)
        values = self.values.to(*args, **kwargs)
        return self._like(self.indices.to(*args, **kwargs), values if dtype is None else values.to(dtype))

    def __repr__(self) -> str:
        return (f"SparseTeacher(shape={tuple(self.shape)}, k={self.k}, format={self.format!r}, tail={self.tail!r}, "
                f"temperature={self.temperature}, values={self.values.dtype}, device={self.device})")

    # ------------------------------------------------------------------ disk

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write to ``path`` (a ``.npz`` file), atomically.

        Layout: an uncompressed NumPy ``.npz`` (readable by ``numpy.load``) with the members
        ``indices`` ``(..., k)`` int32/int64, ``values`` ``(..., k)`` float16/32/64 (bfloat16 is
        stored as float32), and 0-d members ``format``, ``tail`` (str), ``temperature``
        (float64) and ``layout_version`` (int, currently 1).  Members are stored, not
        deflated, so :meth:`load` memory-maps them.  The directory must exist; the file is
        written next to ``path`` and renamed into place, so a reader never sees half a file.
        """
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"SparseTeacher.save: directory {folder!r} does not exist")
        if os.path.isdir(path):
            raise ValueError(f"SparseTeacher.save: {path!r} is a directory")
        values = self.values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        arrays = dict(indices=self.indices.detach().cpu().numpy(), values=values.numpy(),
                      format=np.array(self.format), tail=np.array(self.tail),
                      temperature=np.array(self.temperature, dtype=np.float64),
                      layout_version=np.array(_LAYOUT_VERSION))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sparse_teacher.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, mmap: bool = True) -> "SparseTeacher":
        """Read a teacher written by :meth:`save`.

        With ``mmap=True`` (default) ``indices`` and ``values`` are memory-mapped views of the
        file (copy-on-write): nothing is read until rows are used, so ``SparseTeacher.load(p)[idx]``
        reads only the rows ``idx``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"SparseTeacher.load: no file {path!r}")
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            need = {"indices", "values", "format", "tail", "temperature", "layout_version"}
            if not need <= names:
                raise ValueError(f"SparseTeacher.load: {path!r} lacks members {sorted(need - names)}")
            version = int(z["layout_version"])
            if version != _LAYOUT_VERSION:
                raise ValueError(f"SparseTeacher.load: layout_version {version} is not supported "
                                 f"(expected {_LAYOUT_VERSION})")
            meta = dict(format=str(z["format"]), tail=str(z["tail"]), temperature=float(z["temperature"]))
            if not mmap:
                return cls(torch.from_numpy(z["indices"]), torch.from_numpy(z["values"]), **meta)
        return cls(torch.from_numpy(_npz_member_memmap(path, "indices")),
                   torch.from_numpy(_npz_member_memmap(path, "values")), **meta)


def _npz_member_memmap(path: str, name: str) -> np.ndarray:
    """A stored (not deflated) ``.npy`` member of a zip file, memory-mapped copy-on-write."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"SparseTeacher.load: member {name!r} of {path!r} is compressed; "
                             "load with mmap=False")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"SparseTeacher.load: {path!r} is not a valid zip file")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"SparseTeacher.load: member {name!r} is Fortran-ordered")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)
