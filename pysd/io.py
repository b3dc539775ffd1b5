"""Reading features and labels for the command line.

Formats: ``.npy``; ``.npz`` and ``.pt`` (a tensor/array, or a dict of them: the array is picked by name);
``.csv`` (with or without a header row; with one, columns are picked by name); ``.parquet`` (needs
``pyarrow``; columns by name, a list column holds one feature vector per row).  Labels may be integers,
integer-valued floats or strings; :func:`encode_labels` maps them to class ids.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FEATURE_KEYS = ("features", "feats", "X", "x", "embeddings", "embedding")
LABEL_KEYS = ("labels", "label", "noisy_labels", "noisy_label", "y", "targets", "target", "class")


class InputError(ValueError):
    """A user file or option that cannot be used; the message is one line meant for the command line."""


def _pick(named: dict, keys, what: str, path: Path, key: Optional[str]) -> Tuple[str, object]:
    if key is not None:
        if key not in named:
            raise InputError(f"{path}: no array or column named {key!r} (has {sorted(named)})")
        return key, named[key]
    if len(named) == 1:
        return next(iter(named.items()))
    for k in keys:
        if k in named:
            return k, named[k]
    raise InputError(f"{path}: cannot tell which array or column holds the {what} (has {sorted(named)}); "
                     f"name it one of {list(keys)} or pass --{what}-key")


# --------------------------------------------------------------------------- tables (.csv, .parquet)


def _number_column(cells: Sequence[str]) -> np.ndarray:
    """Numbers when every non-empty cell parses (empty cells: NaN), else the strings themselves."""
    try:
        return np.array([float(c) if c.strip() else np.nan for c in cells], dtype=np.float64)
    except ValueError:
        return np.array([c.strip() for c in cells])


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _has_header(rows: List[List[str]], header: str) -> bool:
    """``auto``: the first row names columns when a cell of it is not a number while the cell below is,
    or when it is one of the usual feature/label names."""
    if header != "auto":
        return header == "yes"
    first = rows[0]
    names = {k.lower() for k in FEATURE_KEYS + LABEL_KEYS}
    if all(c.strip().lower() in names for c in first):
        return True
    below = rows[1] if len(rows) > 1 else []
    return any(not _is_number(a) and _is_number(b) for a, b in zip(first, below))


def _read_csv(p: Path, header: str):
    """``dict`` name -> column (header row) or a list of columns (no header)."""
    with open(p, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{p}: the file is empty")
    width = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise InputError(f"{p}: row {bad + 1} has {len(rows[bad])} cells, the first row has {width}")
    named = _has_header(rows, header)
    body = rows[1:] if named else rows
    if not body:
        raise InputError(f"{p}: the file has a header row but no data")
    cols = [_number_column([r[j] for r in body]) for j in range(width)]
    if not named:
        return cols
    names = [c.strip() for c in rows[0]]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"{p}: the header names columns {sorted(dup)} more than once")
    return dict(zip(names, cols))


def _read_parquet(p: Path) -> Dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(f"{p}: reading .parquet needs pyarrow (pip install pyarrow)") from exc
    table = pq.read_table(p)
    out = {}
    for name in table.column_names:
        col = table.column(name).to_numpy(zero_copy_only=False)
        if col.dtype == object and col.size and isinstance(col[0], np.ndarray):
            col = np.stack(col)  # a list column: one vector per row
        out[name] = col
    return out


def _table_features(cols, p: Path, key: Optional[str], exclude: Sequence[str]) -> np.ndarray:
    if isinstance(cols, list):
        return np.column_stack(cols)
    if key is not None:
        return np.asarray(_pick(cols, FEATURE_KEYS, "features", p, key)[1])
    if len(cols) == 1 and next(iter(cols.values())).ndim == 2:
        return next(iter(cols.values()))
    keep = {n: c for n, c in cols.items() if n not in exclude}
    text = [n for n, c in keep.items() if c.dtype.kind in "USO"]
    if text:
        raise InputError(f"{p}: feature columns must be numbers, column {text[0]!r} is not")
    if not keep:
        raise InputError(f"{p}: no feature columns left (has {sorted(cols)})")
    return np.column_stack([c.reshape(len(c), -1) for c in keep.values()])


def _table_labels(cols, p: Path, key: Optional[str]) -> Tuple[Optional[str], np.ndarray]:
    if isinstance(cols, list):
        if len(cols) != 1:
            raise InputError(f"{p}: a labels .csv without a header must have one column, got {len(cols)} "
                             "(with a header row, pick the column with --labels-key)")
        return None, cols[0]
    name, col = _pick(cols, LABEL_KEYS, "labels", p, key)
    return name, np.asarray(col)


# --------------------------------------------------------------------------- files


def _read(p: Path, what: str, key: Optional[str], header: str, exclude: Sequence[str]):
    """``(column name or None, array)`` from one file."""
    keys = FEATURE_KEYS if what == "features" else LABEL_KEYS
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return None, np.load(p, allow_pickle=False)
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return _pick({k: z[k] for k in z.files}, keys, what, p, key)
    if suffix == ".pt":
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
        name = None
        if isinstance(obj, dict):
            name, obj = _pick(obj, keys, what, p, key)
        return name, (obj.numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj))
    if suffix in (".csv", ".parquet"):
        cols = _read_csv(p, header) if suffix == ".csv" else _read_parquet(p)
        if what == "labels":
            return _table_labels(cols, p, key)
        return None, _table_features(cols, p, key, exclude)
    raise InputError(f"{p}: unsupported file type {suffix or '(none)'}; use .npy, .npz, .pt, .csv or .parquet")


def load_array(path, what: str, key: Optional[str] = None, header: str = "auto",
               exclude: Sequence[str] = ()) -> Tuple[Optional[str], np.ndarray]:
    """``(column or array name, array)``: the ``what`` ("features" or "labels") of one file.

    ``header``: ``"auto"``, ``"yes"`` or ``"no"`` for ``.csv``; ``exclude``: table columns that are not
    features (the labels' column when features and labels share a file).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a file")
    try:
        name, arr = _read(p, what, key, header, exclude)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (a corrupt file: say which and why, on one line)
        msg = " ".join(str(exc).split())
        raise InputError(f"{p}: cannot read {what} ({type(exc).__name__}: {msg})") from exc
    return name, np.asarray(arr)


def load_features(path, key: Optional[str] = None, header: str = "auto", exclude: Sequence[str] = ()) -> np.ndarray:
    """``(N, d)`` float32 features; errors name the file and the problem."""
    x = load_array(path, "features", key, header, exclude)[1]
    if x.ndim != 2:
        raise InputError(f"{path}: features must be a 2-D (N, d) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{path}: features must be real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{path}: features are empty (shape {x.shape})")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise InputError(f"{path}: features have NaN or inf (or values beyond float32) in {bad.size} rows "
                         f"(first: {bad[:5].tolist()})")
    return x


def load_labels(path, key: Optional[str] = None, header: str = "auto") -> Tuple[Optional[str], np.ndarray]:
    """``(column name or None, (N,) labels)`` as stored: integers, floats or strings."""
    name, y = load_array(path, "labels", key, header)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise InputError(f"{path}: labels must be a 1-D (N,) array, got shape {y.shape}")
    return name, y


# --------------------------------------------------------------------------- labels -> class ids


@dataclass
class Labels:
    """Class ids for a user's labels.

    ``ids``: ``(N,)`` int64 in ``[0, C)``, -1 = unlabelled.  ``classes``: ``(C,)`` the user's value of each
    id (strings or integers).  ``notes``: what was mapped, for a warning line.
    """

    ids: np.ndarray
    classes: np.ndarray
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Ids back to the user's values; -1 becomes -1 (integers) or ``""`` (strings)."""
        ids = np.asarray(ids)
        missing = "" if self.classes.dtype.kind in "US" else -1
        out = np.where(ids >= 0, self.classes[np.clip(ids, 0, None)] if len(self.classes) else missing, missing)
        return out.astype(self.classes.dtype) if self.classes.dtype.kind in "US" else out.astype(np.int64)


def _unlabelled_strings(y: np.ndarray) -> np.ndarray:
    return (y == "") | (y == "-1")


def encode_labels(y: np.ndarray, what: str = "labels", num_classes: Optional[int] = None) -> Labels:
    """Map labels to class ids (see :class:`Labels`).

    * strings: classes in sorted order; ``""`` and ``"-1"`` are unlabelled.
    * numbers (integers, or integer-valued floats; NaN = unlabelled): -1 is unlabelled.  With
      ``num_classes`` the values are the ids and must lie in ``[0, num_classes)``.  Without it, values
      ``0..K-1`` (no gap) are the ids; anything else (1-based labels, gaps, huge values) is mapped to ids in
      sorted order, with a note saying so.
    """
    if y.dtype.kind == "b":
        raise InputError(f"{what} must be integers or strings, got booleans")
    if y.dtype.kind in "USO":
        return _encode_strings(y.astype(str), what)
    if y.dtype.kind == "f":
        missing = np.isnan(y)
        if not np.isfinite(y[~missing]).all() or not np.all(y[~missing] == np.round(y[~missing])):
            raise InputError(f"{what} must be integers, got non-integer values")
        y = np.where(missing, -1, y)
    elif y.dtype.kind not in "iu":
        raise InputError(f"{what} must be integers or strings, got dtype {y.dtype}")
    if y.size and y.min() < -1:
        raise InputError(f"{what} must be >= 0 (or -1 for unlabelled), got {int(y.min())}")
    if y.size and y.max() > np.iinfo(np.int64).max // 2:
        raise InputError(f"{what} must fit in int64, got {y.max()}")
    ids = y.astype(np.int64)
    labelled = ids[ids >= 0]
    if num_classes is not None:
        if labelled.size and labelled.max() >= num_classes:
            raise InputError(f"{what} go up to {int(labelled.max())} but --num-classes is {num_classes}")
        return Labels(ids, np.arange(num_classes, dtype=np.int64))
    values = np.unique(labelled)
    if values.size and values[0] == 0 and values[-1] == values.size - 1:
        return Labels(ids, values)
    out = np.full_like(ids, -1)
    out[ids >= 0] = np.searchsorted(values, labelled)
    if values.size and values[0] == 1 and values[-1] == values.size:
        note = f"{what} run 1..{values.size} (no class 0): read as 1-based, {values.size} classes"
    else:
        note = (f"{what} are not 0..K-1 ({_preview(values)}): mapped to {values.size} classes in sorted order")
    return Labels(out, values, [note + "; outputs use your values"])


def _encode_strings(y: np.ndarray, what: str) -> Labels:
    missing = _unlabelled_strings(y)
    classes = np.unique(y[~missing])
    ids = np.full(y.shape, -1, dtype=np.int64)
    ids[~missing] = np.searchsorted(classes, y[~missing])
    return Labels(ids, classes, [f"{what} are strings: {classes.size} classes ({_preview(classes)}) "
                                 f"mapped to ids 0..{classes.size - 1} in sorted order"])


def _preview(values: np.ndarray, n: int = 4) -> str:
    head = ", ".join(str(v) for v in values[:n])
    return head + (", ..." if len(values) > n else "")
