"""``pysd.knn_graph``: exact kNN graph of a feature matrix (blocked GEMM + streaming top-k), then
the AML-KD / LP-DeepSSL affinity recipe as a CSR :class:`pysd.Graph`."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import _backend, _interop
from .._ref import knn_graph as _ref_knn  # noqa: F401  (registers the torch backend)
from ..graph import Graph

_METRICS = ("cosine", "ip", "l2")
_SYMMETRIZE = ("sum", "max", "none")
_NORMALIZE = ("sym", "rw", None)
_METHODS = ("exact", "faiss")
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}
_NO_INDEX = 2**31 - 1  # empty-slot sentinel of csrc/include/pysd/knn_graph.h
# (rows, columns) of one tile of X X^T: 32 MB of float32 on the CPU, large enough that the GEMM
# runs near peak and the per-tile synchronisation is rare, while a column task of the merge
# (1024 x 512) stays L2-sized; on a GPU the tile is large enough to fill the device.
_CPU_TILE = (1024, 8192)
_GPU_TILE = (4096, 16384)


# --------------------------------------------------------------------------- tiled driver


def tiled_topk(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
               merge, symmetric: bool) -> Tuple[Tensor, Tensor]:
    """Exact top-k of the self-join ``x x^T`` from GEMM tiles, merged by ``merge``.

    With ``symmetric`` only the tiles on or right of the diagonal block are computed (about
    half the GEMM) and ``merge`` feeds each pair to both rows; otherwise every tile is
    computed and fed to its rows only.  Memory: the ``(N, k)`` lists and one tile.
    """
    n = x.shape[0]
    sims = torch.full((n, k), -torch.inf, dtype=x.dtype, device=x.device)
    idx = torch.full((n, k), _NO_INDEX, dtype=torch.int32, device=x.device)
    tile_rows, tile_cols = min(tile_rows, n), min(tile_cols, n)
    buf = torch.empty(tile_rows * tile_cols, dtype=x.dtype, device=x.device)
    for i0 in range(0, n, tile_rows):
        i1 = min(n, i0 + tile_rows)
        xi = x[i0:i1]
        for j0 in range(i0 if symmetric else 0, n, tile_cols):
            j1 = min(n, j0 + tile_cols)
            tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.mm(xi, x[j0:j1].t(), out=tile)
            merge(tile, i0, i1, j0, j1, max(j0, i1) if symmetric else j1, sqnorm, exclude_self, sims, idx)
    return idx, sims


def _extension_backend(module: str):
    def run(x, sqnorm, k, exclude_self, tile_rows, tile_cols):
        ext = _backend.extension(module)
        dtype = _DTYPE_NAMES[x.dtype]
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
        norms = 0 if sqnorm is None else sqnorm.data_ptr()

        def merge(tile, i0, i1, j0, j1, col_from, _sqnorm, exclude, sims, idx):
            ext.knn_merge(dtype, tile.data_ptr(), tile.stride(0), i0, i1, j0, j1, col_from, norms, exclude,
                          sims.data_ptr(), idx.data_ptr(), k, stream)

        # The GPU kernel has no transposed pass (see csrc/cuda/knn_graph.cu).
        return tiled_topk(x, sqnorm, k, exclude_self, tile_rows, tile_cols, merge, symmetric=not x.is_cuda)

    return run


_backend.register("knn_graph", "cpp")(_extension_backend("_C"))
_backend.register("knn_graph", "cuda")(_extension_backend("_C_cuda"))
_backend.register("knn_graph", "numba", "pysd._numba.knn_graph:knn_topk_backend")


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("pysd::knn_topk", mutates_args=())
def _knn_topk_op(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int,
                 tile_cols: int) -> Tuple[Tensor, Tensor]:
    """Validated ``x: (N, d)`` → (indices int32 ``(N, k)``, similarities ``(N, k)``), best first."""
    fn = _backend.select("knn_graph", x.device.type)[1]
    return fn(x, sqnorm, k, exclude_self, tile_rows, tile_cols)


@_knn_topk_op.register_fake
def _(x, sqnorm, k, exclude_self, tile_rows, tile_cols):
    n = x.shape[0]
    return x.new_empty((n, k), dtype=torch.int32), x.new_empty((n, k))


# --------------------------------------------------------------------------- approximate search


def _faiss_topk(x: Tensor, k: int, metric: str, exclude_self: bool, nprobe: Optional[int]) -> Tuple[Tensor, Tensor]:
    try:
        import faiss
    except ImportError:
        raise ImportError("knn_graph: method='faiss' needs the faiss package (pip install faiss-cpu); "
                          "method='exact' does not") from None
    xs = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    n, d = xs.shape
    l2 = metric == "l2"
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
    quantizer = faiss.IndexFlatL2(d) if l2 else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT)
    index.train(xs)
    index.add(xs)
    index.nprobe = min(nlist, nprobe or max(16, nlist // 8))
    want = k + 1 if exclude_self else k
    dist, lab = index.search(xs, want)
    if (lab < 0).any():
        raise RuntimeError(f"knn_graph: method='faiss' found fewer than {want} candidates for some rows with "
                           f"nprobe={index.nprobe} of nlist={nlist}; pass a larger nprobe or use method='exact'")
    sims, lab = torch.from_numpy(-dist if l2 else dist), torch.from_numpy(lab)
    if exclude_self:
        keep = lab != torch.arange(n).unsqueeze(1)
        keep &= keep.cumsum(1) <= k  # rows whose self was not returned drop their last hit
        sims, lab = sims[keep].view(n, k), lab[keep].view(n, k)
    order = torch.sort(lab, dim=1).indices  # ties to the lower index, as the exact path
    sims, lab = sims.gather(1, order), lab.gather(1, order)
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices
    return (lab.gather(1, order).to(device=x.device, dtype=torch.int32),
            sims.gather(1, order).to(device=x.device, dtype=x.dtype))


# --------------------------------------------------------------------------- graph recipe


def _affinity(sims: Tensor, metric: str, power: float, scale: Optional[Tensor] = None) -> Tensor:
    """Edge weights from the ``(n, k)`` similarities; for l2 ``scale`` is the mean squared distance to
    the k-th neighbour over all rows (computed from ``sims`` when None; a sharded caller reduces it)."""
    if metric == "l2":
        d2 = (-sims).clamp(min=0)
        if scale is None:
            scale = d2[:, -1].mean()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.exp(-power * d2 / scale)
    return sims.clamp(min=0).pow(power)


def edge_list(idx: Tensor, weights: Tensor, row_start: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, values)`` of the edges ``row_start + i -> idx[i, :]``: rows and cols int64
    ``(E,)`` (global ids), self loops and zero weights dropped."""
    n, k = idx.shape
    rows = torch.arange(row_start, row_start + n, device=idx.device).repeat_interleave(k)
    cols = idx.reshape(-1).to(torch.int64)
    vals = weights.reshape(-1)
    keep = (rows != cols) & (vals != 0)
    return rows[keep], cols[keep], vals[keep]


def coalesce(rows: Tensor, cols: Tensor, vals: Tensor, n_cols: int, symmetrize: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Duplicate ``(row, col)`` entries combined (max for ``symmetrize="max"``, else summed), sorted
    by row then column: ``(rows int64, cols int64, values)``."""
    keys, inverse = torch.unique(rows * n_cols + cols, sorted=True, return_inverse=True)
    out = vals.new_zeros(keys.numel())
    if symmetrize == "max":
        out.scatter_reduce_(0, inverse, vals, "amax", include_self=False)
    else:
        out.index_add_(0, inverse, vals)
    return keys // n_cols, keys % n_cols, out


def degrees(rows: Tensor, vals: Tensor, n: int) -> Tensor:
    """``(n,)`` row sums of the coalesced entries, a zero degree counted as 1."""
    deg = vals.new_zeros(n).index_add_(0, rows, vals)
    return torch.where(deg > 0, deg, torch.ones_like(deg))


def normalized(vals: Tensor, deg_rows: Tensor, deg_cols: Tensor, normalize: str) -> Tensor:
    """Entries of ``D^-1/2 W D^-1/2`` (``"sym"``) or ``D^-1 W`` (``"rw"``) from each entry's row and
    column degrees."""
    return vals / (deg_rows.sqrt() * deg_cols.sqrt()) if normalize == "sym" else vals / deg_rows


def row_pointers(rows: Tensor, n: int) -> Tensor:
    """``(n + 1,)`` int64 CSR row pointers of the row-sorted entries ``rows`` (local ids)."""
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    indptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return indptr


def build_csr(idx: Tensor, weights: Tensor, n: int, symmetrize: str, normalize: Optional[str]) -> Tuple[Tensor, ...]:
    """``(indptr int64, indices int32, values)`` of the graph with edges ``i -> idx[i, :]`` weighted
    ``weights``: diagonal and zero weights dropped, symmetrized, normalised.  Sort-based, O(N k)."""
    rows, cols, vals = edge_list(idx, weights)
    if symmetrize != "none":
        rows, cols, vals = torch.cat([rows, cols]), torch.cat([cols, rows]), torch.cat([vals, vals])
    rows, cols, out = coalesce(rows, cols, vals, n, symmetrize)
    if normalize is not None:
        deg = degrees(rows, out, n)
        out = normalized(out, deg[rows], deg[cols], normalize)
    return row_pointers(rows, n), cols.to(torch.int32), out


# --------------------------------------------------------------------------- validation


def _as_tensor(features) -> Tensor:
    if isinstance(features, (Tensor, np.ndarray)) or hasattr(features, "__dlpack__"):
        return _interop.to_torch(features, "knn_graph", "features")[0].detach()
    raise TypeError(f"knn_graph: features must be a torch.Tensor, a numpy array or a DLPack array (e.g. CuPy), "
                    f"got {type(features).__name__}")


def _choice(name: str, value, options):
    if value not in options or (value is not None and not isinstance(value, str)):
        raise ValueError(f"knn_graph: {name} must be one of {list(options)}, got {value!r}")
    return value


def _rows_list(mask: Tensor) -> str:
    rows = mask.nonzero().flatten()
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return f"[{shown}{', ...' if rows.numel() > 5 else ''}] ({rows.numel()} row{'s' if rows.numel() != 1 else ''})"


def _tile(tile, device_type: str) -> Tuple[int, int]:
    if tile is None:
        return _GPU_TILE if device_type == "cuda" else _CPU_TILE
    pair = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if len(pair) != 2 or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in pair):
        raise ValueError(f"knn_graph: tile must be a positive int or a (rows, cols) pair of them, got {tile!r}")
    return pair



def prepare_features(x: Tensor, metric: str, rows: str = "rows") -> Tuple[Tensor, Optional[Tensor]]:
    """Checked float32/float64 features for the search and, for l2, their squared norms.

    ``x: (N, d)`` → ``(x', sqnorm)``: cosine rows are L2-normalised (a copy), others made contiguous; raises
    ``ValueError`` naming the NaN/inf or zero-norm (cosine) rows, called ``rows`` in the message.
    """
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    bad = ~torch.isfinite(x).all(1)
    norms = torch.linalg.vector_norm(x, dim=1)  # scaled: finite for every finite row
    zero = norms == 0
    # the one synchronisation of the checks: bad rows, zero rows, the largest norm
    top = norms.max() if x.shape[0] else norms.new_zeros(())
    n_bad, n_zero, top = torch.stack([t.to(torch.float64) for t in (bad.sum(), zero.sum(), top)]).tolist()
    if n_bad:
        raise ValueError(f"knn_graph: features must be finite; NaN or inf in {rows} {_rows_list(bad)}")
    if metric != "cosine":
        # |x_i . x_j| <= |x_i| |x_j| (every partial sum of the GEMM too); l2 adds |x_i|^2 + |x_j|^2
        if top * top * (4.0 if metric == "l2" else 1.0) >= torch.finfo(x.dtype).max:
            raise ValueError(f"knn_graph: features are too large for metric={metric!r} in {x.dtype}: the largest "
                             f"row norm {top:.3g} makes similarities overflow (NaN/inf); scale the features, "
                             "pass float64, or use metric='cosine'")
    if metric == "cosine":
        if n_zero:
            raise ValueError(f"knn_graph: metric='cosine' needs non-zero rows; zero norm in {rows} {_rows_list(zero)}")
        if not math.isfinite(top):  # a sum of squares overflowed: normalise the rows scaled to max |x| = 1
            x = x / x.abs().amax(1, keepdim=True)
            norms = torch.linalg.vector_norm(x, dim=1)
        return x / norms.unsqueeze(1), None
    x = x.contiguous()
    return x, ((x * x).sum(1) if metric == "l2" else None)

def knn_graph(
    features,
    k: int = 10,
    *,
    metric: str = "cosine",
    power: float = 3.0,
    symmetrize: str = "sum",
    normalize: Optional[str] = "sym",
    exclude_self: bool = True,
    method: str = "exact",
    nprobe: Optional[int] = None,
    tile: Union[int, Tuple[int, int], None] = None,
) -> Graph:
    r"""k-nearest-neighbour graph of ``features`` with the AML-KD / LP-DeepSSL affinity recipe.

    Search (``method="exact"``, the default and the reference): tiles of the similarity
    matrix ``X X^T`` come from a BLAS GEMM (``torch.mm``) and a streaming top-k kernel
    (cpp / numba / cuda, picked by :mod:`pysd._backend`) merges each tile into per-row lists,
    so no ``(N, N)`` matrix ever exists.  On the CPU only the tiles on or right of the
    diagonal are computed and each similarity feeds both of its rows (half the GEMM FLOPs);
    the GPU computes all tiles (its selection, not its GEMM, is the cost).  Ties are broken
    deterministically: higher similarity first, then the lower index.  Lists are exact up to
    the rounding of the GEMM (a pair is computed once, so ``sim(i, j) == sim(j, i)``).

    Similarity per ``metric``:

    * ``"cosine"``: inner product of the L2-normalised rows (LP-DeepSSL).
    * ``"ip"``: raw inner product (AML-KD's stage-1 teacher features).
    * ``"l2"``: negative squared Euclidean distance ``-|x_i - x_j|^2`` (nearest first),
      from ``2 x_i.x_j - |x_i|^2 - |x_j|^2`` (so it carries cancellation error of order
      ``eps * |x|^2``).

    Graph: drop self (the diagonal), affinity ``w = max(s, 0) ** power`` for cosine / ip
    (``power=0`` gives the unweighted connectivity graph); for l2 a Gaussian kernel
    ``w = exp(-power * d^2 / sigma^2)`` with ``sigma^2`` the mean squared distance to the
    k-th neighbour (``power`` sharpens it; ``0`` again gives connectivity).  Zero weights
    are not stored.  ``symmetrize``: ``"sum"`` ``W + W^T`` (mutual neighbours add),
    ``"max"`` elementwise max, ``"none"`` the directed kNN graph.  ``normalize``: ``"sym"``
    ``D^-1/2 W D^-1/2``, ``"rw"`` ``D^-1 W`` (row sums ``D``, a zero degree counts as 1) or
    None.  This equals building the same recipe with scipy.sparse.

    Args:
        features: ``(N, d)`` floats: torch tensor (CPU or CUDA), numpy array or DLPack array
            (e.g. CuPy).  float64 stays float64; other floating or integer types are computed
            in float32.  Rows must be finite (and non-zero for cosine).
        k: neighbours per row, ``1 <= k <= N - 1`` (``k <= N`` with ``exclude_self=False``).
        metric, power, symmetrize, normalize: as above.  ``power >= 0``.
        exclude_self: leave row ``i`` out of its own list (by index: a duplicate point at
            another index is a legitimate neighbour).
        method: ``"exact"`` or ``"faiss"`` (approximate ``IndexIVFFlat`` search through faiss
            when installed: on the CPU in float32, results moved back to the input's device;
            ties are not deterministic and neighbour sets may differ from exact).
        nprobe: IVF lists probed by ``method="faiss"`` (default ``max(16, nlist / 8)``, with
            ``nlist = min(4 sqrt(N), N / 39)`` lists).
        tile: ``(rows, cols)`` of one similarity tile (an int for both); default
            ``(1024, 8192)`` on the CPU and ``(4096, 16384)`` on a GPU.

    Returns:
        :class:`pysd.Graph` on the input's device: CSR ``indptr (N+1,)`` int64, ``indices
        (nnz,)`` int32 (sorted per row), ``values (nnz,)`` float32 / float64, and the raw lists
        ``knn_indices (N, k)`` int32 and ``knn_similarities (N, k)`` (best first).

    Memory: with cosine a normalised copy of the features ``(N, d)``; with l2 the squared
    norms ``(N,)``; the lists ``(N, k)`` int32 + float; one tile ``(rows, cols)`` float (32 MB
    at the CPU default in float32); the CSR build holds a few ``(2 N k,)`` int64 / float
    arrays.  Never ``(N, N)``.  The torch backend (used on GPUs without ``pysd._C_cuda``)
    holds row blocks of all N columns with the tile's element count, plus masks of that size.

    Not differentiable: the result is a constant graph (the features are detached).
    Validation synchronises with the device once (the finiteness / zero-norm checks).
    """
    x = _as_tensor(features)
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"knn_graph: features must hold real numbers, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"knn_graph: features must be 2-D (N, d), got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 1 or d < 1:
        raise ValueError(f"knn_graph: features must have at least one row and one column, got shape ({n}, {d})")
    if n >= _NO_INDEX:
        raise ValueError(f"knn_graph: at most {_NO_INDEX - 1} rows fit int32 neighbour indices, got N = {n}")
    metric = _choice("metric", metric, _METRICS)
    symmetrize = _choice("symmetrize", symmetrize, _SYMMETRIZE)
    normalize = _choice("normalize", normalize, _NORMALIZE)
    method = _choice("method", method, _METHODS)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"knn_graph: exclude_self must be a bool, got {type(exclude_self).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"knn_graph: k must be an int, got {type(k).__name__}")
    k = int(k)
    limit = n - 1 if exclude_self else n
    if k < 1 or k > limit:
        why = f"N - 1 = {limit} (exclude_self=True leaves N - 1 candidates)" if exclude_self else f"N = {limit}"
        raise ValueError(f"knn_graph: k must be in [1, {why}] for N = {n} rows, got k={k}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
        raise ValueError(f"knn_graph: power must be a finite number >= 0, got {power!r}")
    if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1):
        raise ValueError(f"knn_graph: nprobe must be a positive int or None, got {nprobe!r}")
    tile_rows, tile_cols = _tile(tile, x.device.type)

    x, sqnorm = prepare_features(x, metric)

    if method == "faiss":
        idx, sims = _faiss_topk(x, k, metric, exclude_self, nprobe)
    else:
        idx, sims = _knn_topk_op(x, sqnorm, k, exclude_self, tile_rows, tile_cols)
    indptr, indices, values = build_csr(idx, _affinity(sims, metric, float(power)), n, symmetrize, normalize)
    return Graph(indptr=indptr, indices=indices, values=values, num_nodes=n, knn_indices=idx,
                 knn_similarities=sims, _validated=True)
