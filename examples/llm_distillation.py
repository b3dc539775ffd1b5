"""Offline language-model distillation with pysd on a tiny randomly initialised model (no download).

1. teacher pass: the teacher's logits -> pysd.topk_teacher (log-sum-exp + top-k in one pass)
2. save the SparseTeacher once (.npz, memory-mapped on load)
3. student steps: load rows by index, pysd.fused_linear_kd_loss on the student's last hidden
   states and head weight: the (tokens, vocab) logits are never formed.
"""

import os
import tempfile

import torch

import pysd

torch.manual_seed(0)
VOCAB, TOKENS, K = 5003, 64, 16


class TinyLM(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, hidden)
        self.body = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU())
        self.head = torch.nn.Linear(hidden, VOCAB, bias=False)

    def hidden(self, tokens):
        return self.body(self.embed(tokens))


teacher, student = TinyLM(96), TinyLM(32)
data = torch.randint(0, VOCAB, (8, TOKENS + 1))  # 8 sequences
inputs, labels = data[:, :-1], data[:, 1:]

# 1-2. teacher pass, stored once
with torch.no_grad():
    logits = teacher.head(teacher.hidden(inputs))                        # (8, TOKENS, VOCAB)
    sparse = pysd.topk_teacher(logits, K, temperature=1.0, tail="bucket")  # (8, TOKENS, K) ids + logprobs
path = os.path.join(tempfile.mkdtemp(), "teacher_topk.npz")
sparse.save(path)

# 3. student steps, the teacher streamed back by index
stored = pysd.SparseTeacher.load(path)  # memory-mapped
opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
for step in range(3):
    batch = torch.tensor([step % 8, (step + 3) % 8])
    h = student.hidden(inputs[batch])                                    # (2, TOKENS, 32)
    loss = pysd.fused_linear_kd_loss(h, student.head.weight, stored[batch], labels[batch],
                                     hard_weight=0.5, temperature=2.0, divergence="fkl")
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step}: loss {loss.item():.4f}")
