"""``pysd.distributed``: the loss normalizer, the kNN graph and label propagation over row shards of a
``torch.distributed`` process group (gloo on CPU, NCCL on GPU), and the vocabulary-parallel (tensor-
parallel) distillation ops :func:`kd_loss`, :func:`fused_linear_kd_loss` and :func:`topk_teacher`.

Every rank holds a contiguous block of the N rows, ranks in order (rank 0 the first rows); block sizes
may differ and may be zero.  Results equal the single-process ops on the concatenated rows (the graph
exactly up to GEMM rounding, propagation to the dtype's tolerance), returned for the rank's own rows.
Every function is collective: all ranks of ``group`` must call it with the same options.  Options and
input errors are checked together at the start, so a mistake on one rank raises ``ValueError`` on every
rank instead of leaving the others waiting in a collective.

The vocabulary-parallel ops are the exception to the row split: there every rank holds the *same* rows
and a contiguous range of the classes (``vocab_start``, uneven widths allowed); only O(1) statistics per
row (and the k gathered student logits of a sparse teacher) cross the group.
"""

from .fused_linear_kd_loss import fused_linear_kd_loss
from .kd_loss import global_normalizer, kd_loss
from .knn_graph import ShardedGraph, knn_graph
from .propagate import propagate
from .topk_teacher import topk_teacher

__all__ = ["global_normalizer", "kd_loss", "fused_linear_kd_loss", "topk_teacher", "knn_graph", "propagate",
           "ShardedGraph"]
