"""Multi-round self-distillation against pysd.theory's closed form, and partial-label targets.

Part 1 is the block model of Jeong & Chung (K clusters, a Gram matrix, deterministic label flips): the
linearised closed form, the exact softmax-CE solution, and the minimum number of rounds.  Part 2 trains
linear probes on scikit-learn's digits with 40% symmetric noise: multi-round SD through pysd.kd_loss
(L-BFGS) and the one-round partial-label (PLL) student built from the teacher's top-2 classes.

    python examples/sd_vs_theory.py
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

import pysd
from pysd import theory as th

true, noisy = th.deterministic_flips(4, 30, 3)           # K=4 clusters of 30, 3 flips per cluster
G = th.block_gram(4, 30, c=0.4, d=0.1)                   # (120, 120) Gram matrix of the block model
sd = th.sd_outputs(G, noisy, 4, lam=1e-4, rounds=10, true_labels=true)            # linearised closed form
ex = th.sd_outputs(G, noisy, 4, lam=1e-4, rounds=3, mode="exact", true_labels=true)
print(sd.accuracy, ex.accuracy, ex.residuals.max())      # per-round accuracy; residual <= 1e-10 certifies
print(th.min_rounds(th.label_confusion(true, noisy, 4), 30, 0.4, 0.1, 1e-4).rounds)
pll = th.sd_outputs(G, noisy, 4, lam=1e-4, rounds=1, variant="pll", true_labels=true)

# part 2: trained probes on real data
digits = load_digits()
data = digits.data[:600]                                  # a 600-sample subset keeps this to seconds
features = (data - data.mean(0)) / (data.std(0) + 1e-8)
clean = digits.target[:600]
noisy_digits = th.symmetric_noise(clean, 10, 0.4, seed=0)
run = pysd.recipes.linear_probe_sd(features, noisy_digits, rounds=2, lam=3e-3, true_labels=clean)
print("SD rounds, accuracy on the training inputs vs clean labels:", np.round(run.accuracy, 3))

teacher_probs = torch.softmax(torch.as_tensor(features) @ run.weights[0], 1)   # the round-0 teacher
targets = pysd.partial_labels(teacher_probs, k=2)        # top-2 classes at 1/2 each (ties: lower index)
print("partial-label targets:", tuple(targets.shape), "rows sum to", float(targets.sum(1).min()))
assert run.accuracy[-1] > run.accuracy[0] > (noisy_digits == clean).mean()
