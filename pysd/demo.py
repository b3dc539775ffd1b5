"""``pysd demo``: the end-to-end noisy-label pipeline on an embedded data set.

On the same features, noisy training labels and held-out test split:

1. the teacher, a linear probe trained on the noisy labels;
2. multi-round self-distillation (rounds 1..R) and the closed-form prediction of the same
   rounds from :func:`pysd.theory.sd_outputs` (linearised);
3. the one-round partial-label (PLL) student;
4. a student trained with AML-KD-refined labels (:class:`pysd.recipes.LabelRefinery`).

Prints a table (test accuracy, accuracy on the training inputs against their clean labels,
time), writes a PNG plot and a JSON of the numbers.  Seeded: the same command gives the same numbers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

LAM = 3e-3  # weight decay of the linear probes (the regime where SD corrects noisy labels on digits)


def load_dataset(name: str):
    """``(X, y)``: scikit-learn's 8x8 digits, or a user's ``.npz`` with arrays ``X`` (N, d) and ``y`` (N,)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64), d.target.astype(np.int64)
    from .io import load_features, load_labels

    return load_features(name).astype(np.float64), load_labels(name)


def split(x, y, seed: int, test_fraction: float = 0.3):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def standardize(train, test):
    mu, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return (train - mu) / sd, (test - mu) / sd


def _acc(pred, y) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean())


def train_refinery_student(x_tr, noisy, teacher_logits, num_classes, *, epochs, seed, progress):
    """A one-hidden-layer student trained on AML-KD-refined labels with KD from the teacher."""
    import pysd
    from .recipes import LabelRefinery, aml_kd_loss

    torch.manual_seed(seed)
    x = torch.as_tensor(x_tr, dtype=torch.float32)
    t_logits = torch.as_tensor(teacher_logits, dtype=torch.float32)
    y_noisy = torch.as_tensor(noisy)
    warm = max(1, epochs // 4)
    refinery = LabelRefinery(num_classes, warmup_epochs=warm, stage2_epoch=epochs // 2, k=10,
                             initial_percentile=5.0)
    labels = refinery.initial(x, t_logits, y_noisy).labels
    weights = torch.ones(len(labels))
    hidden = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU())
    head = torch.nn.Linear(128, num_classes)
    opt = torch.optim.Adam([*hidden.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for epoch in progress(range(epochs), desc="AML-KD refinery student"):
        h = hidden(x)
        logits = head(h)
        res = refinery.step(epoch, h.detach(), logits.detach(), x, y_noisy)
        labels, weights = res.labels, res.weights
        for _ in range(10):
            perm = torch.randperm(len(x), generator=gen)
            lam = float(torch.distributions.Beta(4.0, 4.0).sample())
            mixed_x = lam * x + (1 - lam) * x[perm]
            logits = head(hidden(x))
            mixed = head(hidden(mixed_x))
            t_mixed = lam * t_logits + (1 - lam) * t_logits[perm]
            loss = aml_kd_loss(logits, labels, weights, t_mixed, mixup=(mixed, perm, lam))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (lambda z: head(hidden(torch.as_tensor(z, dtype=torch.float32))).argmax(1).numpy()), labels.numpy()


def run_pipeline(dataset="digits", noise=0.4, noise_type="sym", rounds=4, seed=0, quick=False, progress=None,
                 lam=LAM) -> dict:
    """Run the four methods and return every number the table, plot and JSON show."""
    from . import theory
    from .recipes import linear_probe_sd

    progress = progress or (lambda it, desc=None: it)
    x, y = load_dataset(dataset)
    k = int(y.max()) + 1
    x_tr, x_te, y_tr, y_te = split(x, y, seed)
    x_tr, x_te = standardize(x_tr, x_te)
    noise_fn = theory.symmetric_noise if noise_type == "sym" else theory.asymmetric_noise
    noisy = noise_fn(y_tr, k, noise, seed=seed)
    out = {"config": {"dataset": dataset, "noise": noise, "noise_type": noise_type, "rounds": rounds, "seed": seed,
                      "lam": lam, "n_train": int(len(y_tr)), "n_test": int(len(y_te)), "num_classes": k,
                      "features": int(x.shape[1]), "actual_noise": float((noisy != y_tr).mean())},
           "methods": {}}
    rows = out["methods"]

    steps = progress(["teacher + self-distillation", "closed form", "PLL student", "AML-KD refinery"],
                     desc="pysd demo")
    for step in steps:
        t0 = time.perf_counter()
        if step == "teacher + self-distillation":
            sd = linear_probe_sd(x_tr, noisy, rounds=rounds, lam=lam, variant="sd", num_classes=k, true_labels=y_tr)
            dt = (time.perf_counter() - t0) / (rounds + 1)
            for r in range(rounds + 1):
                w = sd.weights[r].numpy()
                rows["teacher" if r == 0 else f"SD round {r}"] = {
                    "test_acc": _acc((x_te @ w).argmax(1), y_te), "train_acc": float(sd.accuracy[r]),
                    "seconds": dt, "round": r}
            teacher_w = sd.weights[0].numpy()
        elif step == "closed form":
            th = theory.sd_outputs(x_tr, noisy, k, lam, rounds, mode="linearized", test_gram=x_te @ x_tr.T,
                                   true_labels=y_tr)
            dt = (time.perf_counter() - t0) / (rounds + 1)
            for r in range(rounds + 1):
                rows[f"theory round {r}"] = {"test_acc": _acc(th.test_outputs[r].argmax(1), y_te),
                                             "train_acc": float(th.accuracy[r]), "seconds": dt, "round": r}
        elif step == "PLL student":
            pll = linear_probe_sd(x_tr, noisy, rounds=1, lam=lam, variant="pll", num_classes=k, true_labels=y_tr)
            rows["PLL student"] = {"test_acc": _acc((x_te @ pll.weights[1].numpy()).argmax(1), y_te),
                                   "train_acc": float(pll.accuracy[1]), "seconds": time.perf_counter() - t0,
                                   "round": 1}
        else:
            predict, refined = train_refinery_student(x_tr, noisy, x_tr @ teacher_w, k, epochs=12 if quick else 40,
                                                      seed=seed, progress=progress)
            rows["AML-KD refinery"] = {"test_acc": _acc(predict(x_te), y_te), "train_acc": _acc(predict(x_tr), y_tr),
                                       "refined_label_acc": _acc(refined, y_tr), "seconds": time.perf_counter() - t0}
    out["noisy_label_acc"] = float((noisy == y_tr).mean())
    return out


def format_table(res: dict) -> str:
    cfg = res["config"]
    lines = [f"pysd demo: {cfg['dataset']}, {cfg['n_train']} train / {cfg['n_test']} test, {cfg['num_classes']} "
             f"classes, {cfg['noise_type']} noise {cfg['noise']:.0%} (actual {cfg['actual_noise']:.1%}), "
             f"lam={cfg['lam']:g}, seed {cfg['seed']}",
             f"{'method':<18}{'test acc':>10}{'train acc*':>12}{'time (s)':>10}"]
    for name, r in res["methods"].items():
        lines.append(f"{name:<18}{r['test_acc']:>10.3f}{r['train_acc']:>12.3f}{r['seconds']:>10.2f}")
    lines.append("* predictions on the training inputs against their clean labels "
                 f"(the noisy labels themselves: {res['noisy_label_acc']:.3f})")
    if "AML-KD refinery" in res["methods"]:
        lines.append(f"  refined labels agree with the clean labels on "
                     f"{res['methods']['AML-KD refinery']['refined_label_acc']:.3f} of the training set")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["methods"]
    rounds = res["config"]["rounds"]
    r = list(range(rounds + 1))
    sd = [m["teacher" if i == 0 else f"SD round {i}"] for i in r]
    th = [m[f"theory round {i}"] for i in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "test_acc", "test accuracy"),
                           (axes[1], "train_acc", "training inputs vs clean labels")):
        ax.plot(r, [s[key] for s in sd], "o-", label="self-distillation (trained)")
        ax.plot(r, [s[key] for s in th], "s--", label="closed form (pysd.theory)")
        ax.plot([1], [m["PLL student"][key]], "*", ms=14, label="PLL student (1 round)")
        if "AML-KD refinery" in m:
            ax.axhline(m["AML-KD refinery"][key], color="tab:red", ls=":", label="AML-KD refinery student")
        if key == "train_acc":
            ax.axhline(res["noisy_label_acc"], color="gray", lw=0.8, label="noisy labels")
        ax.set_xlabel("round (0 = teacher)")
        ax.set_title(title)
        ax.set_xticks(r)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    cfg = res["config"]
    fig.suptitle(f"{cfg['dataset']}: {cfg['noise_type']} label noise {cfg['noise']:.0%}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(args) -> int:
    from .io import InputError

    if not 0.0 <= args.noise < 1.0:
        print(f"pysd demo: error: --noise must be in [0, 1), got {args.noise}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"pysd demo: error: --rounds must be >= 1, got {args.rounds}", file=sys.stderr)
        return 2
    if args.no_progress:
        progress = None
    else:
        from tqdm.auto import tqdm

        def progress(it, desc=None):
            return tqdm(it, desc=desc, leave=False, file=sys.stderr)

    try:
        res = run_pipeline(args.dataset, args.noise, args.noise_type, args.rounds, args.seed, args.quick, progress)
    except InputError as exc:
        print(f"pysd demo: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / "demo.png", out_dir / "demo.json"
    plot(res, png)
    js.write_text(json.dumps(res, indent=2))
    print(format_table(res))
    print(f"wrote {png} and {js}")
    return 0
