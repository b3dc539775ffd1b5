"""``pysd refine``: refine a user's noisy labels from saved features."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from .io import InputError, Labels, encode_labels, load_features, load_labels

# (N, C) float32 arrays alive at the peak of a refinement: four solver buffers, the scores and oos scores
# copied out, and the confident-learning thresholds' working copy.
_NC_BUFFERS = 7


def physical_memory() -> int:
    """Bytes of physical memory (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_size(n: int, c: int, what: str) -> None:
    """Refuse a class count whose ``(N, C)`` arrays would not fit in memory, naming ``what`` and the size."""
    need = _NC_BUFFERS * 4 * n * c
    have = physical_memory()
    if have and need > have:
        raise InputError(f"{what}: {c} classes for {n} samples need {_NC_BUFFERS} (N, C) float32 arrays = "
                         f"{need / 2**30:.3g} GiB, more than this machine's {have / 2**30:.3g} GiB")


def estimate_noise_rate(pred_probs: np.ndarray, given: np.ndarray) -> float:
    """Confident-learning estimate of the fraction of wrong labels (Northcutt et al., 2021).

    A labelled row counts as mislabelled when some class ``j != given`` has ``p[j] >= t_j`` (the mean
    ``p[j]`` over rows labelled ``j``) and is the largest such class.  ``pred_probs: (N, C)`` out-of-sample
    probabilities (rows summing to 1, or all zero for rows without neighbours); ``given: (N,)`` ids, -1 =
    unlabelled.  NaN when no row is labelled.
    """
    rows = np.flatnonzero((given >= 0) & (pred_probs.sum(1) > 0))
    if rows.size == 0:
        return float("nan")
    p, y = pred_probs[rows], given[rows]
    c = p.shape[1]
    counts = np.bincount(y, minlength=c)
    thresholds = np.bincount(y, weights=p[np.arange(len(y)), y], minlength=c) / np.maximum(counts, 1)
    above = np.where(p >= np.where(counts > 0, thresholds, np.inf), p, -1.0)
    confident = np.where(above.max(1) >= 0, above.argmax(1), y)
    return float((confident != y).mean())


def refine_labels(features: np.ndarray, labels: np.ndarray, *, num_classes=None, k=10, alpha=0.99, solver="cg",
                  max_iter=20, metric="cosine", power=3.0) -> dict:
    """kNN graph + label propagation with every labelled sample as a seed of its given label.

    ``features: (N, d)`` float32, ``labels: (N,)`` int64 class ids (-1 = unlabelled) → dict of numpy
    arrays: ``labels`` (refined ids; -1 for a sample without neighbours), ``given_labels``, ``confidence``,
    ``weights`` (LP-DeepSSL entropy weights times class weights), ``issues`` (indices whose label changed,
    most suspicious first), ``oos_scores`` ``(N, C)`` (neighbours-only scores, e.g. for cleanlab),
    ``scores`` ``(N, C)``.
    """
    import pysd

    c = int(num_classes if num_classes is not None else labels.max() + 1)
    graph = pysd.knn_graph(features, k=k, metric=metric, power=power, symmetrize="sum", normalize="sym")
    res = pysd.propagate(graph, labels, num_classes=c, alpha=alpha, solver=solver, max_iter=max_iter)
    refined = np.asarray(res.labels, dtype=np.int64)
    # isolated samples (no neighbour, label -1) get weight 0
    class_w = np.where(refined >= 0, np.asarray(res.class_weight)[np.clip(refined, 0, None)], 0.0)
    weights = np.asarray(res.entropy_weight) * class_w
    return {
        "labels": refined,
        "given_labels": labels,
        "confidence": np.asarray(res.confidence, dtype=np.float32),
        "weights": weights.astype(np.float32),
        "issues": np.asarray(res.issues, dtype=np.int64),
        "oos_scores": np.asarray(res.oos_scores, dtype=np.float32),
        "scores": np.asarray(res.scores, dtype=np.float32),
    }


def _check_options(args) -> None:
    if args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    if not 0.0 < args.alpha < 1.0:
        raise InputError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.max_iter < 1:
        raise InputError(f"--max-iter must be >= 1, got {args.max_iter}")
    if not np.isfinite(args.power) or args.power <= 0:
        raise InputError(f"--power must be a positive number, got {args.power}")
    if args.num_classes is not None and args.num_classes < 1:
        raise InputError(f"--num-classes must be >= 1, got {args.num_classes}")


def _load(args):
    """Features ``(N, d)`` and :class:`Labels`, every check that needs only the files."""
    same = Path(args.features).resolve() == Path(args.labels).resolve()
    column, raw = load_labels(args.labels, args.labels_key, args.header)
    exclude = [column] if same and column is not None else []
    x = load_features(args.features, args.features_key, args.header, exclude)
    if x.shape[0] != raw.shape[0]:
        raise InputError(f"features have {x.shape[0]} rows but labels have {raw.shape[0]}")
    if x.shape[0] <= args.k:
        raise InputError(f"{x.shape[0]} samples are too few for k={args.k} neighbours (need more than k)")
    if args.num_classes is not None:
        check_size(x.shape[0], args.num_classes, "--num-classes")
    labels = encode_labels(raw, f"labels ({args.labels})", args.num_classes)
    if labels.num_classes == 0:
        raise InputError(f"{args.labels}: every sample is unlabelled (-1); give at least one label")
    check_size(x.shape[0], labels.num_classes, f"labels ({args.labels})")
    return x, labels


def _write_csv(path: str, labels: Labels, res: dict) -> None:
    n = labels.ids.shape[0]
    rank = np.full(n, -1, dtype=np.int64)
    rank[res["issues"]] = np.arange(res["issues"].size)
    given, refined = labels.decode(labels.ids), labels.decode(res["labels"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "given_label", "refined_label", "confidence", "weight", "issue_rank"])
        for i in range(n):
            w.writerow([i, given[i], refined[i], f"{res['confidence'][i]:.6g}", f"{res['weights'][i]:.6g}", rank[i]])


def _report(args, x, labels: Labels, res: dict, outs) -> None:
    ids, refined = labels.ids, res["labels"]
    labelled = ids >= 0
    changed = (refined != ids) & labelled
    c = labels.num_classes
    noise = estimate_noise_rate(res["oos_scores"], ids)
    print(f"pysd refine: {ids.shape[0]} samples ({int((~labelled).sum())} unlabelled), {x.shape[1]} features, "
          f"{c} classes, k={args.k}, solver={args.solver}")
    print(f"  labels changed: {int(changed.sum())} ({100 * changed.sum() / max(labelled.sum(), 1):.1f}% of the "
          f"labelled)  estimated noise rate: {noise:.3f} (confident learning on the neighbours-only scores)")
    given = np.bincount(ids[labelled], minlength=c)
    new = np.bincount(refined[refined >= 0], minlength=c)
    width = max([5] + [len(str(v)) for v in labels.classes])
    print(f"  {'class':>{width}}  given  refined")
    for cls in range(c):
        print(f"  {str(labels.classes[cls]):>{width}}  {given[cls]:5d}  {new[cls]:7d}")
    print("  wrote " + " and ".join(str(outs.target(k)) for k in ("npz", "csv") if k in outs.names))


def run_refine(args) -> int:
    from . import _atomic

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise InputError(f"--out must end in .npz, got {out}")
    _check_options(args)
    paths = [("npz", out, "--out")] + ([("csv", out.with_suffix(".csv"), "--csv")] if args.csv else [])
    with _atomic.reserve(paths, args.force) as outs:
        x, labels = _load(args)
        for note in labels.notes:
            hint = "" if "strings" in note else " (pass --num-classes to take them as ids)"
            print(f"pysd refine: warning: {note}{hint}", file=sys.stderr)
        res = refine_labels(x, labels.ids, num_classes=labels.num_classes, k=args.k, alpha=args.alpha,
                            solver=args.solver, max_iter=args.max_iter, metric=args.metric, power=args.power)
        saved = {**res, "labels": labels.decode(res["labels"]), "given_labels": labels.decode(labels.ids),
                 "label_ids": res["labels"], "given_ids": labels.ids, "classes": labels.classes}
        with open(outs.tmp("npz"), "wb") as f:
            np.savez(f, **saved)
        if args.csv:
            _write_csv(outs.tmp("csv"), labels, res)
        outs.commit()
        _report(args, x, labels, res, outs)
    return 0
