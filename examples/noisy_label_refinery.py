"""AML-KD's label refinery in a real training loop: scikit-learn's digits with 40% symmetric label
noise, a teacher trained on the noisy labels, and a student trained on the refined labels and weights
with mixup and distillation from the teacher.

    python examples/noisy_label_refinery.py
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

from pysd import theory
from pysd.recipes import LabelRefinery, aml_kd_loss

torch.manual_seed(0)
digits = load_digits()
x_all = torch.tensor(digits.data / 16.0, dtype=torch.float32)              # (1797, 64)
clean = torch.tensor(digits.target)
noisy_labels = torch.tensor(theory.symmetric_noise(digits.target, 10, 0.4, seed=0))
train_set = torch.utils.data.TensorDataset(x_all, torch.arange(len(x_all)))  # (input, dataset index)
loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
epochs = 8


class Net(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x, features=False):
        h = self.body(x)
        return (h, self.head(h)) if features else self.head(h)


@torch.no_grad()
def extract(model, dataset):
    """Penultimate features and logits of every sample, in a shuffled loader's order, with the indices."""
    feats, logits, order = [], [], []
    for x, idx in torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True):
        h, z = model(x, features=True)
        feats.append(h), logits.append(z), order.append(idx)
    return torch.cat(feats), torch.cat(logits), torch.cat(order)


# the teacher: trained on the noisy labels for a few epochs (before it memorises them)
teacher = Net(128)
opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
for epoch in range(3):
    for x, idx in loader:
        loss = torch.nn.functional.cross_entropy(teacher(x), noisy_labels[idx])
        opt.zero_grad(); loss.backward(); opt.step()
teacher.eval()
with torch.no_grad():
    teacher_feats, teacher_logits = teacher(x_all, features=True)

refinery = LabelRefinery(num_classes=10, warmup_epochs=2, stage2_epoch=5, k=10)   # faithful=False
labels = refinery.initial(teacher_feats, teacher_logits, noisy_labels).labels
student = Net(64)
opt = torch.optim.Adam(student.parameters(), lr=3e-3)
for epoch in range(epochs):
    feats, logits, order = extract(student, train_set)     # (N, d) and (N, C) in a shuffled order
    # every per-row input in that same order; `indices` says where each row belongs
    res = refinery.step(epoch, feats, logits, teacher_feats[order], noisy_labels[order], indices=order)
    for x, idx in loader:                                  # res.labels / res.weights are in dataset order
        perm = torch.randperm(len(x))
        lam = float(np.random.default_rng(epoch).beta(4.0, 4.0))
        x_mixed = lam * x + (1 - lam) * x[perm]
        with torch.no_grad():
            t_mixed = teacher(x_mixed)
        loss = aml_kd_loss(student(x), res.labels[idx], res.weights[idx], t_mixed,
                           mixup=(student(x_mixed), perm, lam))
        opt.zero_grad(); loss.backward(); opt.step()

with torch.no_grad():
    acc_student = (student(x_all).argmax(1) == clean).float().mean().item()
    acc_teacher = (teacher_logits.argmax(1) == clean).float().mean().item()
print(f"noisy labels agree with the clean ones on {(noisy_labels == clean).float().mean():.3f}; refined labels "
      f"on {(res.labels == clean).float().mean():.3f}; teacher {acc_teacher:.3f}, student {acc_student:.3f}")
assert (res.labels == clean).float().mean() > (noisy_labels == clean).float().mean() + 0.2
