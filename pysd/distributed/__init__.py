"""``pysd.distributed``: the loss normalizer, the kNN graph and label propagation over row shards of a
``torch.distributed`` process group (gloo on CPU, NCCL on GPU).

Every rank holds a contiguous block of the N rows, ranks in order (rank 0 the first rows); block sizes
may differ and may be zero.  Results equal the single-process ops on the concatenated rows (the graph
exactly up to GEMM rounding, propagation to the dtype's tolerance), returned for the rank's own rows.
Every function is collective: all ranks of ``group`` must call it with the same options.  Options and
input errors are checked together at the start, so a mistake on one rank raises ``ValueError`` on every
rank instead of leaving the others waiting in a collective.
"""

from .kd_loss import global_normalizer
from .knn_graph import ShardedGraph, knn_graph
from .propagate import propagate

__all__ = ["global_normalizer", "knn_graph", "propagate", "ShardedGraph"]
