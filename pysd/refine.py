"""``pysd refine``: refine a user's noisy labels from saved features."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .io import InputError, load_features, load_labels


def _fail(msg: str) -> int:
    print(f"pysd refine: error: {msg}", file=sys.stderr)
    return 2


def refine_labels(features: np.ndarray, labels: np.ndarray, *, num_classes=None, k=10, alpha=0.99, solver="cg",
                  max_iter=20, metric="cosine", power=3.0) -> dict:
    """kNN graph + label propagation with every sample as a seed of its given label.

    ``features: (N, d)`` float32, ``labels: (N,)`` int64 → dict of numpy arrays: ``labels`` (refined; -1 for
    a sample without neighbours),
    ``given_labels``, ``confidence``, ``weights`` (LP-DeepSSL entropy weights times class weights),
    ``issues`` (indices whose label changed, most suspicious first), ``oos_scores`` ``(N, C)``
    (neighbours-only scores, e.g. for cleanlab), ``scores`` ``(N, C)``.
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


def run_refine(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        return _fail(f"--out must end in .npz, got {out}")
    csv_path = out.with_suffix(".csv")
    for path in [out] + ([csv_path] if args.csv else []):
        if path.exists() and not args.force:
            return _fail(f"{path} exists; pass --force to overwrite it")
    try:
        x = load_features(args.features, args.features_key)
        y = load_labels(args.labels, args.labels_key)
    except InputError as exc:
        return _fail(str(exc))
    if x.shape[0] != y.shape[0]:
        return _fail(f"features have {x.shape[0]} rows but labels have {y.shape[0]}")
    if x.shape[0] <= args.k:
        return _fail(f"{x.shape[0]} samples are too few for k={args.k} neighbours (need more than k)")
    if args.num_classes is not None and y.max() >= args.num_classes:
        return _fail(f"labels go up to {int(y.max())} but --num-classes is {args.num_classes}")
    if not 0.0 < args.alpha < 1.0:
        return _fail(f"--alpha must be in (0, 1), got {args.alpha}")
    try:
        res = refine_labels(x, y, num_classes=args.num_classes, k=args.k, alpha=args.alpha, solver=args.solver,
                            max_iter=args.max_iter, metric=args.metric, power=args.power)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **res)
    if args.csv:
        rank = np.full(y.shape[0], -1, dtype=np.int64)
        rank[res["issues"]] = np.arange(res["issues"].size)
        table = np.column_stack([np.arange(y.shape[0]), y, res["labels"], res["confidence"], res["weights"], rank])
        np.savetxt(csv_path, table, delimiter=",", fmt=["%d", "%d", "%d", "%.6g", "%.6g", "%d"],
                   header="index,given_label,refined_label,confidence,weight,issue_rank", comments="")
    changed = res["labels"] != y
    c = res["scores"].shape[1]
    print(f"pysd refine: {y.shape[0]} samples, {x.shape[1]} features, {c} classes, k={args.k}, solver={args.solver}")
    print(f"  labels changed: {int(changed.sum())} ({100 * changed.mean():.1f}%)  "
          f"estimated noise rate: {changed.mean():.3f}")
    given = np.bincount(y, minlength=c)
    refined = np.bincount(res["labels"], minlength=c)
    print("  class  given  refined")
    for cls in range(c):
        print(f"  {cls:5d}  {given[cls]:5d}  {refined[cls]:7d}")
    print(f"  wrote {out}" + (f" and {csv_path}" if args.csv else ""))
    return 0
