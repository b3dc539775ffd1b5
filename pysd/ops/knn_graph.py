"""``pysd.knn_graph``: exact kNN graph of a feature matrix (fused blocked dot products + streaming top-k), then
the AML-KD / LP-DeepSSL affinity recipe as a CSR :class:`pysd.Graph`.

Kernels: ``pysd/_cpp/knn_graph.py`` (fused CPU search; tile merge of the CUDA module), ``pysd/_numba/knn_graph.py``,
``pysd/_ref/knn_graph.py`` (torch search, the tile driver and the CSR recipe).  The public helpers
:func:`check_options`, :func:`check_features`, :func:`tile_shape` and :func:`prepare_features` are the
validation hooks :mod:`pysd.distributed.knn_graph` reuses.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import NO_INDEX
from .._ref.knn_graph import affinity, build_csr
from ..graph import Graph

OP = "knn_graph"
METRICS = ("cosine", "ip", "l2")
SYMMETRIZE = ("sum", "max", "none")
NORMALIZE = ("sym", "rw", None)
METHODS = ("exact", "faiss")
# (rows, columns) of one tile of X X^T: 32 MB of float32 on the CPU, large enough that the GEMM
# runs near peak and the per-tile synchronisation is rare, while a column task of the merge
# (1024 x 512) stays L2-sized; on a GPU the tile is large enough to fill the device.
_CPU_TILE = (1024, 8192)
_GPU_TILE = (4096, 16384)

_backend.register(OP)


# --------------------------------------------------------------------------- custom op


def _knn_lists(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int,
               tile_cols: int) -> Tuple[Tensor, Tensor]:
    """Validated ``x: (N, d)`` → (indices int32 ``(N, k)``, similarities ``(N, k)``), best first."""
    fn = _backend.select(OP, x.device.type)[1]
    return fn(x, sqnorm, k, exclude_self, tile_rows, tile_cols)


@torch.library.custom_op("pysd::knn_graph", mutates_args=())
def _knn_graph_op(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int,
                  tile_cols: int) -> Tuple[Tensor, Tensor]:
    """:func:`_knn_lists` as a torch op, for torch.compile graphs (no gradient flows through it)."""
    return _knn_lists(x, sqnorm, k, exclude_self, tile_rows, tile_cols)


@_knn_graph_op.register_fake
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


# --------------------------------------------------------------------------- validation hooks


def check_features(features) -> Tensor:
    """``(n, d)`` real features (torch / numpy / DLPack) as a detached tensor, d >= 1."""
    x = _checks.array(OP, "features", features)[0].detach()
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"{OP}: features must hold real numbers, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{OP}: features must be 2-D (N, d), got shape {tuple(x.shape)}")
    return x


def check_options(metric, power, symmetrize, normalize, exclude_self) -> float:
    """Checks the graph options shared with the sharded op; returns ``power`` as a float."""
    _checks.choice(OP, "metric", metric, METRICS)
    _checks.choice(OP, "symmetrize", symmetrize, SYMMETRIZE)
    _checks.choice(OP, "normalize", normalize, NORMALIZE)
    _checks.boolean(OP, "exclude_self", exclude_self)
    return _checks.real(OP, "power", power, 0.0)


def check_k(k, n: int, exclude_self: bool, where: str = "") -> int:
    """``k`` as an int in ``[1, N - 1]`` (``[1, N]`` without self-exclusion) for ``n`` rows in all."""
    k = _checks.integer(OP, "k", k)
    if n >= NO_INDEX:
        raise ValueError(f"{OP}: at most {NO_INDEX - 1} rows fit int32 neighbour indices, got N = {n}")
    limit = n - 1 if exclude_self else n
    if k < 1 or k > limit:
        why = f"N - 1 = {limit} (exclude_self=True leaves N - 1 candidates)" if exclude_self else f"N = {limit}"
        raise ValueError(f"{OP}: k must be in [1, {why}] for N = {n} rows{where}, got k={k}")
    return k


def tile_shape(tile, device_type: str) -> Tuple[int, int]:
    """``(rows, cols)`` of one similarity tile: the device default, or the checked ``tile``."""
    if tile is None:
        return _GPU_TILE if device_type == "cuda" else _CPU_TILE
    pair = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if len(pair) != 2 or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in pair):
        raise ValueError(f"{OP}: tile must be a positive int or a (rows, cols) pair of them, got {tile!r}")
    return pair


def prepare_features(x: Tensor, metric: str, rows: str = "rows") -> Tuple[Tensor, Optional[Tensor]]:
    """Checked float32/float64 features for the search and, for l2, their squared norms.

    ``x: (N, d)`` → ``(x', sqnorm)``, ``x'`` row-major contiguous: cosine rows are L2-normalised (a copy); raises
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
        raise ValueError(f"knn_graph: features must be finite; NaN or inf in {rows} {_checks.rows_list(bad)}")
    if metric != "cosine":
        # |x_i . x_j| <= |x_i| |x_j| (every partial sum of the GEMM too); l2 adds |x_i|^2 + |x_j|^2
        if top * top * (4.0 if metric == "l2" else 1.0) >= torch.finfo(x.dtype).max:
            raise ValueError(f"knn_graph: features are too large for metric={metric!r} in {x.dtype}: the largest "
                             f"row norm {top:.3g} makes similarities overflow (NaN/inf); scale the features, "
                             "pass float64, or use metric='cosine'")
    if metric == "cosine":
        if n_zero:
            raise ValueError(f"knn_graph: metric='cosine' needs non-zero rows; zero norm in {rows} "
                             f"{_checks.rows_list(zero)}")
        if not math.isfinite(top):  # a sum of squares overflowed: normalise the rows scaled to max |x| = 1
            x = x / x.abs().amax(1, keepdim=True)
            norms = torch.linalg.vector_norm(x, dim=1)
        return (x / norms.unsqueeze(1)).contiguous(), None  # elementwise ops keep a transposed layout
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

    Search (``method="exact"``, the default and the reference), never an ``(N, N)`` matrix:

    * CPU, compiled backend: one fused kernel.  A register-tiled dot-product kernel walks
      pairs of row blocks and tests each 6 x 16 tile of similarities against its rows' and
      columns' current k-th best while the tile is still in registers; only candidates that
      qualify reach the lists, and no tile of ``X X^T`` is ever stored.  Each pair
      ``i < j`` is computed once and offered to both rows (half the FLOPs of ``X X^T``).
    * GPU and the numba / torch backends: tiles of ``X X^T`` from a BLAS GEMM
      (``torch.mm``), merged into per-row lists by a streaming top-k kernel; numba computes
      only the tiles on or right of the diagonal, the GPU all of them (its selection, not
      its GEMM, is the cost).

    Ties are broken deterministically: higher similarity first, then the lower index.  Lists
    are exact up to the rounding of the dot products (a pair is computed once, so
    ``sim(i, j) == sim(j, i)``; the fused kernel sums each dot product in index order with
    fused multiply-adds).

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
            ``(1024, 8192)`` on the CPU and ``(4096, 16384)`` on a GPU.  The fused CPU kernel
            stores no tile: ``rows`` (rounded up to a multiple of 48) caps its block of rows,
            which it also keeps within L2 (192 KiB of features) and small enough for 4 blocks
            per thread.  The tile never changes the result.

    Returns:
        :class:`pysd.Graph` on the input's device: CSR ``indptr (N+1,)`` int64, ``indices
        (nnz,)`` int32 (sorted per row), ``values (nnz,)`` float32 / float64, and the raw lists
        ``knn_indices (N, k)`` int32 and ``knn_similarities (N, k)`` (best first), with ``metric``
        (``graph.to_scipy(mode="distance")`` turns the lists into a kNN distance graph).

    Memory: with cosine a normalised copy of the features ``(N, d)``; with l2 the squared
    norms ``(N,)``; the lists ``(N, k)`` int32 + float; the fused CPU kernel one packed copy of
    the features ``(N, d)`` (rounded up to 16 rows) and two thresholds per block row per
    thread, the tiled paths one tile ``(rows, cols)`` float (32 MB at the CPU default in
    float32); the CSR build holds a few ``(2 N k,)`` int64 / float arrays.  Never ``(N, N)``.  The torch backend (used on GPUs without ``pysd._C_cuda``)
    holds row blocks of all N columns with the tile's element count, plus masks of that size.

    Not differentiable: the result is a constant graph (the features are detached).
    Validation synchronises with the device once (the finiteness / zero-norm checks).
    """
    x = check_features(features)
    n, d = x.shape
    if n < 1 or d < 1:
        raise ValueError(f"{OP}: features must have at least one row and one column, got shape ({n}, {d})")
    power = check_options(metric, power, symmetrize, normalize, exclude_self)
    _checks.choice(OP, "method", method, METHODS)
    k = check_k(k, n, exclude_self)
    if nprobe is not None:
        _checks.integer(OP, "nprobe", nprobe, 1)
    tile_rows, tile_cols = tile_shape(tile, x.device.type)
    x, sqnorm = prepare_features(x, metric)
    if method == "faiss":
        idx, sims = _faiss_topk(x, k, metric, exclude_self, nprobe)
    else:
        # Eager calls skip the op wrapper: its first call imports torch._dynamo (seconds), and an op
        # without autograd gains nothing from the dispatcher outside a compiled graph.
        lists = _knn_graph_op if torch.compiler.is_compiling() else _knn_lists
        idx, sims = lists(x, sqnorm, k, exclude_self, tile_rows, tile_cols)
    indptr, indices, values = build_csr(idx, affinity(sims, metric, power), n, symmetrize, normalize)
    return Graph(indptr=indptr, indices=indices, values=values, num_nodes=n, knn_indices=idx,
                 knn_similarities=sims, metric=metric, _validated=True)
