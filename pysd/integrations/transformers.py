"""Knowledge distillation inside a Hugging Face ``transformers.Trainer`` (importing this module imports
transformers; ``pip install "pysd[transformers]"``).

* :class:`DistillationTrainer`: a ``Trainer`` whose loss distils ``teacher_model`` into the trained model through
  :func:`pysd.kd_loss` (dense logits) or, with ``fused=True``, :func:`pysd.fused_linear_kd_loss` on the
  student's last hidden states and ``lm_head`` weight (and the teacher's), so no ``(tokens, vocabulary)`` logits
  tensor is ever formed.
* :func:`distillation_loss`: the same loss on logits, for a training loop of one's own.

Gradient accumulation and multi-device runs: the loss is the sum over the non-ignored target tokens of the
micro-batch divided by ``num_items_in_batch`` (the Trainer's count over all micro-batches of the optimiser step,
and over devices with ``average_tokens_across_devices``), passed to pysd as ``normalizer`` without a host sync,
so the accumulated gradient equals that of one large batch.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..ops.fused_linear_kd_loss import fused_linear_kd_loss
from ..ops.kd_loss import kd_loss

__all__ = ["DistillationTrainer", "distillation_loss"]

IGNORE_INDEX = -100  # Hugging Face's label padding


def _normalizer(num_items_in_batch, device) -> Optional[Tensor]:
    if num_items_in_batch is None:
        return None
    return torch.as_tensor(num_items_in_batch, device=device).reshape(()).to(torch.float32)


def _shifted(x: Optional[Tensor], shift: bool, labels: bool = False) -> Optional[Tensor]:
    """Causal LMs predict token ``t + 1`` at position ``t``: drop the last position (the first label)."""
    if x is None or not shift:
        return x
    return x[:, 1:] if labels else x[:, :-1]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None, *,
                      shift_labels: bool = True, num_items_in_batch=None, **kd_options) -> Tensor:
    """:func:`pysd.kd_loss` over the token positions of a batch.

    Args:
        student_logits: ``(B, T, V)`` (or ``(B, V)`` with ``shift_labels=False``) float logits.
        teacher_logits: same leading shape, ``(..., V_t)`` with ``V_t == V``.
        labels: ``(B, T)`` int64 target ids, ``-100`` where no token is predicted (padding, prompt), or None
            (every position counts, soft term only).
        shift_labels: position ``t`` predicts label ``t + 1`` (causal LMs); False for classification heads.
        num_items_in_batch: the divisor (int or 0-d tensor): the Trainer's non-ignored label count of the
            whole optimiser step; None: the mean over this batch's non-ignored positions.
        kd_options: :func:`pysd.kd_loss` keywords (``temperature``, ``hard_weight``, ``soft_weight``,
            ``divergence``, ``beta``, ``scale_t2``, ``label_smoothing``).

    Returns:
        0-d loss.  Allocates what :func:`pysd.kd_loss` does: one ``(tokens, V)`` gradient buffer.
    """
    s = _shifted(student_logits, shift_labels)
    t = _shifted(teacher_logits, shift_labels)
    y = _shifted(labels, shift_labels, labels=True)
    v = s.shape[-1]
    return kd_loss(s.reshape(-1, v), t.reshape(-1, t.shape[-1]), None if y is None else y.reshape(-1),
                   ignore_index=IGNORE_INDEX, reduction="mean",
                   normalizer=_normalizer(num_items_in_batch, s.device), **kd_options)


def _fused_loss(model, teacher, inputs: Dict[str, Any], labels, shift: bool, normalizer, chunk_size,
                kd_options) -> Tensor:
    """:func:`pysd.fused_linear_kd_loss` on the final hidden states and output heads of both models."""
    caps = [getattr(m.config, "final_logit_softcapping", None) for m in (model, teacher)]
    if caps[0] != caps[1]:
        raise ValueError(f"DistillationTrainer(fused=True): student and teacher soft-cap their logits differently "
                         f"({caps[0]} vs {caps[1]}); use fused=False")
    hidden = _shifted(model.base_model(**inputs).last_hidden_state, shift)
    with torch.no_grad():
        t_hidden = _shifted(teacher.base_model(**inputs).last_hidden_state, shift)
    head, t_head = model.get_output_embeddings(), teacher.get_output_embeddings()
    return fused_linear_kd_loss(hidden, head.weight, t_hidden, _shifted(labels, shift, labels=True),
                                student_bias=head.bias,
                                teacher_weight=t_head.weight, teacher_bias=t_head.bias, logit_softcap=caps[0],
                                chunk_size=chunk_size, ignore_index=IGNORE_INDEX, reduction="mean",
                                normalizer=normalizer, **kd_options)


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` that trains ``model`` (the student) on a distillation loss from ``teacher_model``.

    Per target token: ``hard_weight * CE(student, label) + soft_weight * T^2 * D(teacher_T, student_T)``
    (:func:`pysd.kd_loss`), summed over the non-ignored tokens (``labels != -100``) and divided by the
    Trainer's ``num_items_in_batch`` (see the module docstring), or averaged over the batch when the batch
    has no ``labels``.  The teacher runs in eval mode under ``torch.no_grad()`` on the same inputs.

    Args:
        teacher_model: a model with the student's tokenizer (same vocabulary); moved to the training device
            unless it was dispatched with a ``device_map``.
        temperature, hard_weight, soft_weight, divergence, beta, scale_t2, label_smoothing: as
            :func:`pysd.kd_loss`.
        fused: compute the loss with :func:`pysd.fused_linear_kd_loss` from both models' final hidden states
            (``model.base_model(...).last_hidden_state``) and output heads (``get_output_embeddings()``),
            never forming the logits; for models whose logits are ``lm_head(last_hidden_state)``, optionally
            soft-capped by ``config.final_logit_softcapping`` (Llama, Mistral, Qwen2, Gemma 2, GPT-2, ...).
            Evaluation calls that ask for outputs use the dense path.
        chunk_size: rows per chunk of the fused path (None: pysd's default).
        shift_labels: position ``t`` predicts label ``t + 1``; None: True for causal-LM model classes.
        every other argument: as ``transformers.Trainer``.
    """

    def __init__(self, *args, teacher_model, temperature: float = 1.0, hard_weight: float = 0.5,
                 soft_weight: float = 0.5, divergence: str = "fkl", beta: float = 0.5, scale_t2: bool = True,
                 label_smoothing: float = 0.0, fused: bool = False, chunk_size=None,
                 shift_labels: Optional[bool] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(teacher_model, torch.nn.Module):
            raise TypeError(f"DistillationTrainer: teacher_model must be a torch.nn.Module, "
                            f"got {type(teacher_model).__name__}")
        if getattr(teacher_model, "hf_device_map", None) is None:
            teacher_model = teacher_model.to(self.args.device)
        self.teacher_model = teacher_model.eval().requires_grad_(False)
        self.kd_options = dict(temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight,
                               divergence=divergence, beta=beta, scale_t2=scale_t2, label_smoothing=label_smoothing)
        self.fused, self.chunk_size, self.shift_labels = bool(fused), chunk_size, shift_labels
        # The Trainer counts num_items_in_batch (and treats the loss as already scaled for gradient
        # accumulation) only for models that take loss kwargs; this loss always takes the count.
        self.model_accepts_loss_kwargs = True

    def _shift(self, model) -> bool:
        if self.shift_labels is not None:
            return bool(self.shift_labels)
        name = self.accelerator.unwrap_model(model)._get_name()
        return name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The distillation loss of one micro-batch (see the class docstring); ``(loss, outputs)`` with
        ``return_outputs``."""
        labels = inputs.get("labels")
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        shift = self._shift(model)
        dev = next(model.parameters()).device
        normalizer = _normalizer(num_items_in_batch, dev)
        if self.fused and not return_outputs:
            outputs = None
            loss = _fused_loss(model, self.teacher_model, inputs, labels, shift, normalizer, self.chunk_size,
                               self.kd_options)
        else:
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = self.teacher_model(**inputs).logits
            loss = distillation_loss(outputs.logits, teacher_logits, labels, shift_labels=shift,
                                     num_items_in_batch=normalizer, **self.kd_options)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts the tokens of every device and DDP averages the gradients over
            # devices: scale back up, as Trainer.compute_loss does for models that take the count.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
