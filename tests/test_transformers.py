"""pysd.integrations.transformers: DistillationTrainer trains tiny random Llama models (built from configs, no
download): the loss falls, and with gradient accumulation its gradients equal a plain-PyTorch dense KD loss."""

import copy

import pytest
import torch
import torch.nn.functional as F

import pysd
from readme_blocks import run_section

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # the test extra has it

from pysd.integrations.transformers import DistillationTrainer, distillation_loss

V, T = 48, 12
OPTIONS = dict(temperature=2.0, hard_weight=0.3, soft_weight=0.7)


def tiny_llama(seed, hidden=32, layers=1):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T)
    return LlamaForCausalLM(cfg)


class TokenData(torch.utils.data.Dataset):
    """Seeded random sequences; the first 3 positions of each are prompt (label -100) and a random tail is
    padding (label -100), so micro-batches differ in their number of target tokens."""

    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, V, (n, T), generator=g)
        self.labels = self.ids.clone()
        self.labels[:, :3] = -100
        pad = torch.randint(0, 6, (n,), generator=g)
        for i, p in enumerate(pad.tolist()):
            if p:
                self.labels[i, -p:] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class DenseKDTrainer(Trainer):
    """Plain-PyTorch reference: the same loss written from its formula, normalised by num_items_in_batch."""

    def __init__(self, *args, teacher_model, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model.eval()
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"][:, 1:]
        x = {"input_ids": inputs["input_ids"]}
        s = model(**x).logits[:, :-1].double()
        with torch.no_grad():
            t = self.teacher_model(**x).logits[:, :-1].double()
        keep = labels != -100
        tau = OPTIONS["temperature"]
        ce = F.cross_entropy(s[keep], labels[keep], reduction="sum")
        p_t = F.log_softmax(t[keep] / tau, -1)
        kl = (p_t.exp() * (p_t - F.log_softmax(s[keep] / tau, -1))).sum() * tau ** 2
        return ((OPTIONS["hard_weight"] * ce + OPTIONS["soft_weight"] * kl) / num_items_in_batch).float()


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})


def test_one_step_gradients_equal_plain_pytorch_dense_kd(tmp_path):
    teacher, student = tiny_llama(1, hidden=48, layers=2), tiny_llama(2)
    args = _args(tmp_path, gradient_accumulation_steps=2)
    data = TokenData(8)
    ours = DistillationTrainer(model=copy.deepcopy(student), args=args, train_dataset=data, teacher_model=teacher,
                               **OPTIONS)
    ref = DenseKDTrainer(model=copy.deepcopy(student), args=args, train_dataset=data, teacher_model=teacher)
    batches = [torch.utils.data.default_collate([data[i] for i in rows]) for rows in (range(4), range(4, 8))]
    n_items = sum((b["labels"][:, 1:] != -100).sum() for b in batches)
    for trainer in (ours, ref):
        trainer.model.train()
        for b in batches:                                   # one optimiser step = two accumulated micro-batches
            trainer.training_step(trainer.model, dict(b), n_items)
    grads = [(a.grad, b.grad) for a, b in zip(ours.model.parameters(), ref.model.parameters())]
    assert all(a is not None for a, _ in grads)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_reduces_the_distillation_loss(tmp_path):
    teacher, student = tiny_llama(3, hidden=48, layers=2), tiny_llama(4)
    trainer = DistillationTrainer(model=student, args=_args(tmp_path, max_steps=8, learning_rate=2e-2,
                                                            lr_scheduler_type="constant",
                                                            gradient_accumulation_steps=2),
                                  train_dataset=TokenData(16), teacher_model=teacher, **OPTIONS)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2


def test_distillation_loss_without_labels_and_unshifted():
    s, t = torch.randn(2, 5, V, requires_grad=True), torch.randn(2, 5, V)
    soft = distillation_loss(s, t, None, hard_weight=0.0, soft_weight=1.0)        # every position counts
    ref = F.kl_div(F.log_softmax(s[:, :-1].double(), -1), F.log_softmax(t[:, :-1].double(), -1),
                   log_target=True, reduction="sum") / 8
    torch.testing.assert_close(soft.double(), ref, rtol=1e-5, atol=1e-6)
    y = torch.randint(0, V, (6,))
    cls = distillation_loss(s[:, 0].reshape(2, V).repeat(3, 1), t[:, 0].repeat(3, 1), y, shift_labels=False,
                            num_items_in_batch=12, hard_weight=1.0, soft_weight=0.0)
    torch.testing.assert_close(cls.double(), F.cross_entropy(s[:, 0].repeat(3, 1).double(), y,
                                                             reduction="sum") / 12, rtol=1e-5, atol=1e-6)


def test_readme_section_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                             # the snippet's output_dir
    scope = run_section("Use with Hugging Face")
    assert scope["trainer"].state.global_step > 0


def test_fused_path_equals_dense_path(tmp_path):
    teacher, student = tiny_llama(5, hidden=48, layers=2), tiny_llama(6)
    args = _args(tmp_path, gradient_accumulation_steps=2)
    data = TokenData(8, seed=1)
    batches = [torch.utils.data.default_collate([data[i] for i in rows]) for rows in (range(4), range(4, 8))]
    n_items = sum((b["labels"][:, 1:] != -100).sum() for b in batches)
    trainers = [DistillationTrainer(model=copy.deepcopy(student), args=args, train_dataset=data,
                                    teacher_model=teacher, fused=fused, chunk_size=7, **OPTIONS)
                for fused in (False, True)]
    losses = []
    for trainer in trainers:
        trainer.model.train()
        losses.append([trainer.training_step(trainer.model, dict(b), n_items) for b in batches])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(trainers[1].model.parameters(), trainers[0].model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
