"""Knowledge distillation with pysd.kd_loss: a small teacher trained on scikit-learn's digits, then a
smaller student trained from it (soft targets at temperature 4 plus the hard labels).

    python examples/kd_training_step.py        # a few seconds on a laptop CPU
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pysd

torch.manual_seed(0)
digits = load_digits()
x_tr, x_te, y_tr, y_te = train_test_split(digits.data / 16.0, digits.target, test_size=0.3, random_state=0)
x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=128, shuffle=True)


def mlp(hidden):
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def accuracy(model):
    with torch.no_grad():
        return (model(x_te).argmax(1) == y_te).float().mean().item()


# the teacher: plain cross-entropy (kd_loss with no teacher is the hard-label CE)
teacher = mlp(128)
opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
for epoch in range(6):
    for x, y in loader:
        loss = pysd.kd_loss(teacher(x), None, y)
        opt.zero_grad(); loss.backward(); opt.step()
teacher.eval()

# the student: soft targets from the teacher plus the labels
model = mlp(32)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for epoch in range(6):
    for x, y in loader:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = pysd.kd_loss(model(x), t_logits, y, temperature=4.0,
                            hard_weight=0.5, soft_weight=1.0, divergence="fkl")
        opt.zero_grad(); loss.backward(); opt.step()

print(f"teacher test accuracy {accuracy(teacher):.3f}, student (32 hidden units) {accuracy(model):.3f}")
assert accuracy(model) > 0.85
