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


MIN_SAMPLES, MIN_PER_CLASS = 50, 5  # the stratified 70/30 split and the refinery's k=10 graph need this


def load_dataset(name: str, features_key=None, labels_key=None, header="auto"):
    """``(X, y, classes)``: scikit-learn's 8x8 digits, or one user file holding features and clean labels.

    ``y`` are class ids ``0..K-1``; ``classes`` the user's value of each id (labels may be strings, 1-based
    or sparse integers: see :func:`pysd.io.encode_labels`, whose notes are printed as warnings).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64), d.target.astype(np.int64), np.arange(10)
    from .io import InputError, encode_labels, load_features, load_labels

    column, raw = load_labels(name, labels_key, header)
    x = load_features(name, features_key, header, [column] if column is not None else []).astype(np.float64)
    labels = encode_labels(raw, f"{name}: labels")
    y = labels.ids
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{name}: features have {x.shape[0]} rows but labels have {y.shape[0]}")
    if (y < 0).any():
        raise InputError(f"{name}: the demo needs every sample labelled (clean labels); "
                         f"{int((y < 0).sum())} are unlabelled")
    counts = np.bincount(y, minlength=labels.num_classes)
    if len(y) < MIN_SAMPLES or counts.min() < MIN_PER_CLASS or labels.num_classes < 2:
        raise InputError(f"{name}: {len(y)} samples in {labels.num_classes} classes (smallest: "
                         f"{int(counts.min())}); the demo needs at least {MIN_SAMPLES} samples, 2 classes and "
                         f"{MIN_PER_CLASS} per class")
    for note in labels.notes:
        print(f"pysd demo: warning: {note}", file=sys.stderr)
    return x, y, labels.classes


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
                 lam=LAM, data=None) -> dict:
    """Run the four methods and return every number the table, plot and JSON show."""
    from . import theory
    from .recipes import linear_probe_sd

    progress = progress or (lambda it, desc=None: it)
    x, y, _ = data if data is not None else load_dataset(dataset)
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
             f"{'method':<18}{'test acc':>10}{'train acc*':>12}{'time (s)':>11}"]
    for name, r in res["methods"].items():
        shared = name.startswith(("teacher", "SD round", "theory round"))
        lines.append(f"{name:<18}{r['test_acc']:>10.3f}{r['train_acc']:>12.3f}{r['seconds']:>10.2f}"
                     + ("+" if shared else ""))
    lines.append("* predictions on the training inputs against their clean labels "
                 f"(the noisy labels themselves: {res['noisy_label_acc']:.3f})")
    lines.append("+ one run computes the teacher and every SD round (one solve every theory round): "
                 "its time divided by the rounds")
    if "AML-KD refinery" in res["methods"]:
        lines.append(f"  refined labels agree with the clean labels on "
                     f"{res['methods']['AML-KD refinery']['refined_label_acc']:.3f} of the training set")
    return "\n".join(lines)


def _limits(values, pad=0.02):
    lo, hi = min(values), max(values)
    margin = max(pad, 0.1 * (hi - lo))
    return max(0.0, lo - margin), min(1.0, hi + margin)


def plot(res: dict, path) -> None:
    """Two panels (test accuracy; training inputs vs clean labels) against the round, every line labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, cfg = res["methods"], res["config"]
    r = list(range(cfg["rounds"] + 1))
    sd = [m["teacher" if i == 0 else f"SD round {i}"] for i in r]
    th = [m[f"theory round {i}"] for i in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    panels = ((axes[0], "test_acc", "held-out test split", "test accuracy"),
              (axes[1], "train_acc", "training inputs vs their clean labels",
               "accuracy against the clean labels"))
    for ax, key, title, ylabel in panels:
        ax.plot(r, [s[key] for s in sd], "o-", color="tab:blue", label="self-distillation, trained (round 0 = teacher)")
        ax.plot(r, [s[key] for s in th], "s--", color="tab:orange",
                label="closed form, linearised (pysd.theory): exact only near uniform outputs")
        ax.plot([1], [m["PLL student"][key]], "*", ms=14, color="tab:green", label="partial-label student (1 round)")
        values = [s[key] for s in sd + th] + [m["PLL student"][key]]
        if "AML-KD refinery" in m:
            ax.axhline(m["AML-KD refinery"][key], color="tab:red", ls=":", label="student on AML-KD-refined labels")
            values.append(m["AML-KD refinery"][key])
        ax.set_ylim(*_limits(values))
        ax.set_xlabel("self-distillation round (0 = teacher)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(r)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{cfg['dataset']}: {cfg['noise_type']} label noise {cfg['noise']:.0%} "
                 f"(noisy labels agree with the clean ones on {res['noisy_label_acc']:.1%}), lam={cfg['lam']:g}",
                 fontsize=10)
    fig.text(0.5, 0.115, "The closed form linearises softmax around uniform outputs; at this lam the trained probes "
             "are nonlinear, so the curves differ (theory.sd_outputs(mode='exact') matches training).",
             ha="center", fontsize=7.5, style="italic")
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def run_demo(args) -> int:
    from . import _atomic
    from .io import InputError

    if not 0.0 <= args.noise < 1.0:
        raise InputError(f"--noise must be in [0, 1), got {args.noise}")
    if args.rounds < 1 or args.rounds > 50:
        raise InputError(f"--rounds must be in [1, 50], got {args.rounds}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file, not a directory")
    targets = [("png", out_dir / "demo.png", "--out-dir"), ("json", out_dir / "demo.json", "--out-dir")]
    with _atomic.reserve(targets, args.force) as outs:
        data = load_dataset(args.dataset, args.features_key, args.labels_key, args.header)
        progress = None
        if not args.no_progress:
            from tqdm.auto import tqdm

            def progress(it, desc=None):
                return tqdm(it, desc=desc, leave=False, file=sys.stderr)

        res = run_pipeline(args.dataset, args.noise, args.noise_type, args.rounds, args.seed, args.quick, progress,
                           data=data)
        plot(res, outs.tmp("png"))
        Path(outs.tmp("json")).write_text(json.dumps(res, indent=2))
        outs.commit()
    print(format_table(res))
    print(f"wrote {outs.target('png')} and {outs.target('json')}")
    return 0
