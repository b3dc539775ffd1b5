"""pysd: fast kernels for self-distillation and knowledge distillation under label noise.

Public API (see README.md):

* :func:`kd_loss` / :class:`pysd.nn.DistillationLoss`: the fused distillation loss.
* :func:`partial_labels`: partial-label (top-k) targets from a teacher's probabilities.
* :mod:`pysd.theory`: the closed-form self-distillation solver (validation oracle).
* :mod:`pysd.recipes`: training recipes (multi-round SD / PLL linear probes).
* :func:`knn_graph` → :class:`Graph`: exact kNN graph with the LP-DeepSSL affinity recipe.
* :func:`propagate` / :class:`Propagation`: label propagation over a sparse graph (:class:`Graph`).
* :func:`small_loss_mask`, :func:`gmm_clean_prob`: small-loss sample selection.
* :mod:`pysd.distributed`: the loss normalizer, kNN graph and propagation over ``torch.distributed`` row shards.
* :func:`info`: backends, build configuration and versions.
* :func:`cpu_cache_info`, :func:`empty_cpu_cache`, :func:`set_cpu_cache_limit`: the cache of large CPU buffers
  (gradients, work arrays) that spares a training loop the page faults of fresh ones.
* Optional integrations, imported on demand (each imports its library): :mod:`pysd.sklearn` (a scikit-learn
  estimator), :mod:`pysd.integrations.transformers` (distillation in a Hugging Face ``Trainer``).
"""

__version__ = "0.1.0"

from . import _backend
from ._backend import BackendError

_backend.warn_if_cpp_missing()

from .ops.kd_loss import kd_loss  # noqa: E402
from .sparse_teacher import SparseTeacher  # noqa: E402
from .ops import sparse_kd_loss as _sparse_kd_loss  # noqa: E402,F401  (registers pysd::sparse_kd_loss)
from .ops.topk_teacher import topk_teacher  # noqa: E402
from .ops.fused_linear_kd_loss import fused_linear_kd_loss  # noqa: E402
from .ops.partial_labels import partial_labels  # noqa: E402
from .ops.knn_graph import knn_graph  # noqa: E402
from .graph import Graph  # noqa: E402
from .ops.propagate import Propagation, propagate  # noqa: E402
from .ops.selection import gmm_clean_prob, small_loss_mask  # noqa: E402
from .cpu_cache import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit  # noqa: E402
from . import nn  # noqa: E402

# scipy.linalg (theory, recipes) and torch.distributed cost more to import than the rest of pysd together:
# these subpackages load on first use (``pysd.theory.sd_outputs``, ``from pysd import theory`` alike).
_LAZY = ("theory", "recipes", "distributed")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pysd' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


def info() -> dict:
    """Backends (usable or not, and why), build configuration and versions, as a dict."""
    return _backend.info()


__all__ = ["kd_loss", "SparseTeacher", "topk_teacher", "fused_linear_kd_loss", "partial_labels", "knn_graph", "Graph",
           "propagate", "Propagation", "small_loss_mask",
           "gmm_clean_prob", "cpu_cache_info", "empty_cpu_cache", "set_cpu_cache_limit", "nn", "theory", "recipes", "distributed", "info", "BackendError", "__version__"]
