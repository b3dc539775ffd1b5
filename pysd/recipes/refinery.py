"""AML-KD's label refinery (Jiang et al., TNNLS 2023) as a component a training loop calls.

A frozen teacher, small-loss selection against the noisy labels, label propagation over a
kNN graph of features (teacher features in stage 1, alternating student / teacher features
in stage 2), ambiguity-aware (AWE) seed and sample weights, and the student objective
:func:`aml_kd_loss`.  Every input and output is in dataset order; pass ``indices`` when
features arrive in another order (e.g. from a shuffled loader).

``faithful=True`` reproduces the published code (github.com/Runqing-forMost/AML-KD) where
its choices change results:

=============================  =====================================  ==========================================
item                           faithful=True (as published)           faithful=False (default, as intended)
=============================  =====================================  ==========================================
weighted CE                    mean(w) * mean(CE) (broadcast bug)      mean_i(w_i * CE_i)
stage-1 / initial graph        raw teacher features, inner product    L2-normalised features (cosine)
AWE weights on LP seeds        permuted by the extraction order       aligned with their samples
small-loss keep ratio          1 - noise_rate, noise_rate required    1 - noise_rate, estimated if not given
selection scope                per mini-batch of ``batch_size``       per class (``selection="class"``)
=============================  =====================================  ==========================================

Not reproduced in either mode: the trainable ``WeightNet`` (AWE form A), whose only published
training signal drives every weight to 0; both modes use form B,
``sigmoid(cos(h_i, mu_{y_i}))``, the sigmoid of a sample's cosine to its class centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ..ops.kd_loss import kd_loss
from ..ops.knn_graph import knn_graph
from ..ops.propagate import propagate
from ..ops.selection import batch_small_loss_mask, gmm_clean_prob, small_loss_mask

_SELECTIONS = ("batch", "class", "gmm")


@dataclass
class RefineResult:
    """Output of :meth:`LabelRefinery.initial` / :meth:`LabelRefinery.step`, in dataset order.

    Attributes:
        labels: ``(N,)`` int64 refined hard labels.
        weights: ``(N,)`` float32 per-sample weights for the CE term (AWE form B; ones before
            class centres exist).
        changed: ``(N,)`` bool, ``labels != noisy_labels``.
        clean: ``(N,)`` bool, the small-loss ("easy") set whose noisy label was kept.
        noise_rate: the noise rate used by the small-loss rule (given or estimated).
        stage: ``"initial"``, ``"warmup"``, ``"stage1"``, ``"stage2-student"`` or ``"stage2-teacher"``.
    """

    labels: Tensor
    weights: Tensor
    changed: Tensor
    clean: Tensor
    noise_rate: float
    stage: str

    @property
    def num_changed(self) -> int:
        return int(self.changed.sum())


def _as_tensor(x, name: str, dtype=None) -> Tensor:
    t = _checks.array("LabelRefinery", name, x, sequences=True)[0].detach()
    return t.to(dtype) if dtype is not None else t


def class_centres(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean feature of each class, ``(C, d)``; a class without samples gets a zero centre."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def awe_weights(features: Tensor, labels: Tensor, num_classes: int, centre_labels: Optional[Tensor] = None) -> Tensor:
    """AWE form B: ``sigmoid(cos(h_i, mu_{labels_i}))`` with centres from ``centre_labels`` (default ``labels``).

    ``features: (N, d)`` float, ``labels: (N,)`` int64 → ``(N,)`` weights in (0, 1).  Allocates the
    ``(C, d)`` centres and an ``(N,)`` result only (cosines are taken against each sample's own centre).
    """
    mu = class_centres(features, labels if centre_labels is None else centre_labels, num_classes)
    cos = F.cosine_similarity(features, mu[labels], dim=1, eps=1e-12)
    return torch.sigmoid(cos)


class LabelRefinery:
    """AML-KD label refinery.  Call :meth:`initial` once with the teacher's features and logits, then
    :meth:`step` once per epoch; both return a :class:`RefineResult` in dataset order.

    Args:
        num_classes: C.
        warmup_epochs: epochs ``< warmup_epochs`` return the initial labels (published: 20).
        stage2_epoch: epochs ``> stage2_epoch`` use mutual propagation (published: 180).
        k, gamma, alpha: kNN size, affinity power ``max(s, 0)^gamma``, propagation alpha (20, 3, 0.99).
        solver, max_iter, tol: :func:`pysd.propagate` settings ("cg", 20, 1e-6).
        selection: small-loss rule: ``"batch"`` (per mini-batch, published), ``"class"`` (per class),
            or ``"gmm"`` (DivideMix: clean if the 2-component GMM posterior > 0.5).  Default: "batch" when
            faithful, else "class".
        batch_size: mini-batch size of the "batch" rule (256).
        noise_rate: fraction of noisy labels; required when faithful, else estimated (see :meth:`step`).
        initial_percentile: after the initial propagation, samples below this confidence percentile keep
            their noisy label (5).
        faithful: reproduce the published code's choices (module docstring table).
    """

    def __init__(self, num_classes: int, *, warmup_epochs: int = 20, stage2_epoch: int = 180, k: int = 20,
                 gamma: float = 3.0, alpha: float = 0.99, solver: str = "cg", max_iter: int = 20, tol: float = 1e-6,
                 selection: Optional[str] = None, batch_size: int = 256, noise_rate: Optional[float] = None,
                 initial_percentile: float = 5.0, faithful: bool = False):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"LabelRefinery: num_classes must be an int >= 2, got {num_classes!r}")
        selection = selection or ("batch" if faithful else "class")
        if selection not in _SELECTIONS:
            raise ValueError(f"LabelRefinery: selection must be one of {_SELECTIONS}, got {selection!r}")
        if noise_rate is not None and not 0.0 <= noise_rate < 1.0:
            raise ValueError(f"LabelRefinery: noise_rate must be in [0, 1), got {noise_rate}")
        if faithful and noise_rate is None:
            raise ValueError("LabelRefinery: faithful=True uses the true noise rate as published; pass noise_rate")
        if warmup_epochs < 0 or stage2_epoch < warmup_epochs:
            raise ValueError("LabelRefinery: need 0 <= warmup_epochs <= stage2_epoch")
        if batch_size < 1:
            raise ValueError(f"LabelRefinery: batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= initial_percentile < 100.0:
            raise ValueError(f"LabelRefinery: initial_percentile must be in [0, 100), got {initial_percentile}")
        self.num_classes = num_classes
        self.warmup_epochs, self.stage2_epoch = warmup_epochs, stage2_epoch
        self.k, self.gamma, self.alpha = k, gamma, alpha
        self.solver, self.max_iter, self.tol = solver, max_iter, tol
        self.selection, self.batch_size = selection, batch_size
        self.noise_rate = noise_rate
        self.initial_percentile = initial_percentile
        self.faithful = faithful
        self.initial_labels: Optional[Tensor] = None
        self.labels: Optional[Tensor] = None
        self._estimated_noise: Optional[float] = None

    # ------------------------------------------------------------------ pieces

    def _graph(self, features: Tensor, normalised: bool):
        return knn_graph(features, k=self.k, metric="cosine" if normalised else "ip", power=self.gamma,
                              symmetrize="sum", normalize="sym")

    def _propagate(self, features: Tensor, labels: Tensor, weights: Optional[Tensor], normalised: bool) -> Tensor:
        """``max(Z, 0)`` of the propagation (AML-KD takes its softmax and argmax)."""
        graph = self._graph(features, normalised)
        res = propagate(graph, labels, num_classes=self.num_classes, weights=weights, alpha=self.alpha,
                             solver=self.solver, max_iter=self.max_iter, tol=self.tol)
        return torch.as_tensor(res.raw_scores).clamp_min(0.0)

    def _check(self, features, name: str, n: Optional[int] = None) -> Tensor:
        f = _as_tensor(features, name, torch.float32)
        if f.dim() != 2:
            raise ValueError(f"LabelRefinery: {name} must be (N, d), got shape {tuple(f.shape)}")
        if n is not None and f.shape[0] != n:
            raise ValueError(f"LabelRefinery: {name} has {f.shape[0]} rows, expected {n}")
        if not torch.isfinite(f).all():
            raise ValueError(f"LabelRefinery: {name} has NaN or inf entries")
        return f

    def _labels(self, labels, n: int) -> Tensor:
        y = _as_tensor(labels, "noisy_labels")
        if y.dtype.is_floating_point or y.shape != (n,):
            raise ValueError(f"LabelRefinery: noisy_labels must be ({n},) integers, got {tuple(y.shape)} {y.dtype}")
        y = y.to(torch.int64)
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"LabelRefinery: noisy_labels must be in [0, {self.num_classes})")
        return y

    @staticmethod
    def _to_dataset_order(x: Tensor, indices: Optional[Tensor]) -> Tensor:
        if indices is None:
            return x
        out = torch.empty_like(x)
        out[indices] = x
        return out

    # ------------------------------------------------------------------ API

    def initial(self, teacher_features, teacher_logits, noisy_labels=None, *, indices=None) -> RefineResult:
        """Step 1: propagate the teacher's predicted classes over the teacher-feature graph.

        Args:
            teacher_features: ``(N, d)`` float penultimate teacher features.
            teacher_logits: ``(N, C)`` float teacher logits.
            noisy_labels: ``(N,)`` int, optional: samples below ``initial_percentile`` of confidence keep
                them (without them every sample takes the propagated label).
            indices: ``(N,)`` dataset index of each row, when rows are not in dataset order.
        """
        idx = None if indices is None else _as_tensor(indices, "indices", torch.int64)
        feats = self._to_dataset_order(self._check(teacher_features, "teacher_features"), idx)
        n = feats.shape[0]
        logits = self._to_dataset_order(self._check(teacher_logits, "teacher_logits", n), idx)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"LabelRefinery: teacher_logits must have {self.num_classes} columns")
        pred = logits.argmax(1)
        z = self._propagate(feats, pred, None, normalised=not self.faithful)
        conf = torch.softmax(z, 1).max(1).values
        lp = z.argmax(1)
        labels = lp.clone()
        noisy = None
        if noisy_labels is not None:
            noisy = self._to_dataset_order(self._labels(_as_tensor(noisy_labels, "noisy_labels"), n), idx)
            low = conf < torch.quantile(conf, self.initial_percentile / 100.0)
            labels[low] = noisy[low]
            self._estimated_noise = float((lp != noisy).float().mean())
        self.initial_labels = labels
        self.labels = labels.clone()
        changed = labels != noisy if noisy is not None else torch.zeros(n, dtype=torch.bool)
        return RefineResult(labels=labels.clone(), weights=torch.ones(n), changed=changed,
                            clean=torch.zeros(n, dtype=torch.bool), noise_rate=self._noise_rate(None),
                            stage="initial")

    def _noise_rate(self, losses: Optional[Tensor]) -> float:
        if self.noise_rate is not None:
            return float(self.noise_rate)
        if self._estimated_noise is not None:
            return self._estimated_noise
        if losses is None:
            return 0.0
        return float(1.0 - (torch.as_tensor(gmm_clean_prob(losses)) > 0.5).float().mean())

    def step(self, epoch: int, student_features, student_logits, teacher_features, noisy_labels, *,
             indices=None) -> RefineResult:
        """One epoch's refinement (Steps 3-6 of the AML-KD algorithm).

        Args:
            epoch: 0-based epoch number.
            student_features: ``(N, d_s)`` float penultimate student features.
            student_logits: ``(N, C)`` float student logits.
            teacher_features: ``(N, d_t)`` float teacher features.
            noisy_labels: ``(N,)`` int original noisy labels.
            indices: ``(N,)`` dataset index of each row (rows from a shuffled loader); the rows' order is also
                the mini-batch order of the "batch" selection rule.

        The noise rate of the small-loss rule is ``noise_rate`` if given, else the fraction of labels the
        initial propagation changed, else ``1 - P(clean)`` from the GMM on this epoch's losses.
        """
        if self.labels is None:
            raise RuntimeError("LabelRefinery.step: call initial() first")
        idx = None if indices is None else _as_tensor(indices, "indices", torch.int64)
        hs = self._to_dataset_order(self._check(student_features, "student_features"), idx)
        n = hs.shape[0]
        if n != self.labels.shape[0]:
            raise ValueError(f"LabelRefinery.step: got {n} samples, initial() saw {self.labels.shape[0]}")
        zs = self._to_dataset_order(self._check(student_logits, "student_logits", n), idx)
        ht = self._to_dataset_order(self._check(teacher_features, "teacher_features", n), idx)
        noisy = self._to_dataset_order(self._labels(_as_tensor(noisy_labels, "noisy_labels"), n), idx)
        if epoch < self.warmup_epochs:
            w = awe_weights(F.normalize(hs, dim=1), self.labels, self.num_classes)
            return RefineResult(self.labels.clone(), w, self.labels != noisy, torch.zeros(n, dtype=torch.bool),
                                self._noise_rate(None), "warmup")

        # Step 3: small-loss selection against the noisy labels.
        losses = F.cross_entropy(zs, noisy, reduction="none")
        rate = self._noise_rate(losses)
        if self.selection == "batch":
            order = idx if idx is not None else None
            clean = batch_small_loss_mask(losses, 1.0 - rate, self.batch_size, order)
        elif self.selection == "class":
            clean = torch.as_tensor(small_loss_mask(losses, noisy, 1.0 - rate, per_class=True))
        else:
            clean = torch.as_tensor(gmm_clean_prob(losses)) > 0.5
        selected = torch.where(clean, noisy, zs.argmax(1))

        # Steps 4-5: AWE-weighted seeds, propagation over the stage's graph.
        if epoch <= self.stage2_epoch:
            stage, feats, seeds, normalised = "stage1", ht, selected, not self.faithful
        else:
            student_turn = epoch % 2 == 0
            stage = "stage2-student" if student_turn else "stage2-teacher"
            feats, seeds, normalised = (hs if student_turn else ht), self.labels, True
        w_seed = awe_weights(hs if self.faithful else F.normalize(hs, dim=1), seeds, self.num_classes,
                             centre_labels=selected)
        if self.faithful and idx is not None:
            w_seed = w_seed[idx]  # published bug: dataset-order weights applied to extraction-order rows
        z = self._propagate(feats, seeds, w_seed, normalised)
        labels = z.argmax(1)
        labels[clean] = noisy[clean]
        self.labels = labels

        # Step 6: centres from the new labels give the training weights.
        weights = awe_weights(hs if self.faithful else F.normalize(hs, dim=1), labels, self.num_classes)
        return RefineResult(labels.clone(), weights, labels != noisy, clean, rate, stage)


def aml_kd_loss(student_logits: Tensor, labels: Tensor, weights: Optional[Tensor] = None,
                teacher_logits: Optional[Tensor] = None, *, temperature: float = 4.0, kd_weight: float = 0.9,
                mixup: Optional[tuple] = None, faithful: bool = False) -> Tensor:
    """The AML-KD student objective, built on :func:`pysd.kd_loss`.

    ``CE_w(s, labels) + kd_weight * T^2 * KL(softmax(t~/T) || softmax(s~/T)) + lam CE(s~/T, y) + (1-lam) CE(s~/T, y_perm)``

    Args:
        student_logits: ``(B, C)`` float student logits on the clean inputs.
        labels: ``(B,)`` int refined labels.
        weights: ``(B,)`` float AWE weights or None.  The CE term is ``mean_i(w_i CE_i)``; with
            ``faithful=True`` it is ``mean(w) * mean(CE)`` as the published code computes it.
        teacher_logits: ``(B, C)`` teacher logits for the KD term (on the mixed inputs when ``mixup`` is
            given), or None for no KD term.
        mixup: optional ``(mixed_student_logits, perm, lam)``: student logits on ``lam x + (1-lam) x[perm]``,
            the in-batch permutation and the mixing coefficient; adds the two temperature-scaled CE terms and
            moves the KD term onto the mixed logits.
    """
    if weights is None:
        ce = kd_loss(student_logits, target=labels, reduction="mean")
    elif faithful:
        ce = weights.detach().mean() * kd_loss(student_logits, target=labels, reduction="mean")
    else:
        ce = kd_loss(student_logits, target=labels, weight=weights.detach(), reduction="batchmean")
    total = ce
    kd_input = student_logits
    if mixup is not None:
        mixed, perm, lam = mixup
        lam = float(lam)
        scaled = mixed / temperature
        total = total + lam * kd_loss(scaled, target=labels) + (1.0 - lam) * kd_loss(scaled, target=labels[perm])
        kd_input = mixed
    if teacher_logits is not None:
        total = total + kd_loss(kd_input, teacher_logits.detach(), temperature=temperature, soft_weight=kd_weight,
                                reduction="batchmean")
    return total
