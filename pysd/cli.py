"""The ``pysd`` command line: ``info``, ``demo``, ``refine``, ``bench``.

Every user error (a bad option, an unreadable file, an output that cannot be written) is one line on
stderr, ``pysd <command>: error: ...``, and exit code 2; outputs are checked before any work and written
atomically (see :mod:`pysd._atomic`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import __version__

FORMATS = ".npy, .npz, .pt (a tensor or a dict of them), .csv (header row optional) or .parquet (needs pyarrow)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_info(args) -> int:
    import pysd

    data = pysd.info()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"pysd {data['versions']['pysd']}  (torch {data['versions']['torch']}, numba {data['versions']['numba']})")
    print("backends (in dispatch order):")
    for name, st in data["backends"].items():
        mark = "yes" if st["usable"] else "no "
        print(f"  {name:6s} {mark}  {st['reason']}")
    if data["forced_backend"]:
        print(f"forced by PYSD_BACKEND: {data['forced_backend']}")
    print("cpu build: " + ", ".join(f"{k}={v}" for k, v in data["build"].items()))
    print("cuda build: " + ", ".join(f"{k}={v}" for k, v in data["cuda_build"].items()))
    print("ops: " + "; ".join(f"{op} [{', '.join(b)}]" for op, b in data["ops"].items()))
    return 0


def _refine(args) -> int:
    from .refine import run_refine

    return run_refine(args)


def _bench(args) -> int:
    from .bench_report import run_bench

    return run_bench(args)


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _add_file_options(p) -> None:
    p.add_argument("--features-key", default=None, metavar="NAME",
                   help="array (.npz/.pt dict) or column (.csv/.parquet) holding the features; default: the only "
                        "one, or one named features/feats/X/x/embeddings")
    p.add_argument("--labels-key", default=None, metavar="NAME",
                   help="array or column holding the labels; default: the only one, or one named "
                        "labels/label/noisy_labels/y/targets/target/class")
    p.add_argument("--header", choices=["auto", "yes", "no"], default="auto",
                   help="whether a .csv starts with a row of column names (default auto: yes when that row "
                        "holds words over numbers, or only usual feature/label names)")


def _refine_parser(sub) -> None:
    p = sub.add_parser(
        "refine", help="refine noisy labels from saved features (kNN graph + label propagation)",
        description="Refine a data set's noisy labels: an exact kNN graph of the features, label propagation "
                    "seeded by every labelled sample, then the refined label, its confidence, a sample weight and "
                    "a ranking of suspicious labels. Labels may be integers (-1 = unlabelled; 1-based or sparse "
                    "values are mapped to classes in sorted order, with a warning), integer-valued floats (NaN = "
                    "unlabelled) or strings (empty = unlabelled); outputs use the given values.",
        epilog="Outputs (.npz): labels, given_labels (your values), label_ids, given_ids, classes (your value of "
               "each id), confidence, weights, issues (rows whose label changed, most suspicious first), scores "
               "and oos_scores (N, C) (neighbours-only probabilities, cleanlab's pred_probs). With --csv: index, "
               "given_label, refined_label, confidence, weight, issue_rank (-1 = not an issue).")
    p.add_argument("features", help=f"(N, d) features: {FORMATS}")
    p.add_argument("labels", help="(N,) labels, same formats; may be the features' own file (a dict, or a table "
                                  "with a label column, which is then left out of the features)")
    p.add_argument("--out", required=True, metavar="OUT.npz", help="output .npz (checked before any work)")
    p.add_argument("--csv", action="store_true", help="also write a per-sample OUT.csv next to --out")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    p.add_argument("--alpha", type=float, default=0.99,
                   help="propagation alpha in (0, 1): weight of the neighbours against the seeds (default 0.99)")
    p.add_argument("--solver", choices=["cg", "iterate"], default="cg",
                   help="cg: conjugate gradients on (I - alpha S) Z = Y (default); iterate: Zhou's Z <- alpha S Z + Y")
    p.add_argument("--max-iter", type=int, default=20, help="solver iterations at most (default 20)")
    p.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine",
                   help="kNN similarity: cosine (default), inner product, or negative squared L2 distance")
    p.add_argument("--power", type=float, default=3.0, help="affinity power gamma: weight = sim^gamma (default 3)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes; integer labels are then the class ids as given (default: from the labels)")
    _add_file_options(p)
    p.set_defaults(fn=_refine)


def _demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end noisy-label pipeline on an embedded data set",
        description="Noisy-label pipeline: a linear-probe teacher on noisy labels, multi-round self-distillation "
                    "next to pysd.theory's closed form, the one-round partial-label student, and a student trained "
                    "on AML-KD-refined labels. Prints a table; writes demo.png and demo.json to --out-dir.")
    p.add_argument("--dataset", default="digits",
                   help="'digits' (scikit-learn's 8x8 digits, bundled, default) or one file holding features and "
                        f"clean labels: {FORMATS}; arrays/columns are found by name (see --features-key)")
    p.add_argument("--noise", type=float, default=0.4, help="label noise rate in [0, 1) (default 0.4)")
    p.add_argument("--noise-type", choices=["sym", "asym"], default="sym",
                   help="sym: uniform over the other classes (default); asym: class c -> c+1")
    p.add_argument("--rounds", type=int, default=4, help="self-distillation rounds (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the noise and the training (default 0)")
    p.add_argument("--out-dir", default="pysd_results", help="where demo.png and demo.json go (default pysd_results)")
    p.add_argument("--force", action="store_true", help="overwrite demo.png / demo.json if they exist")
    p.add_argument("--quick", action="store_true", help="reduced mode (fewer refinery epochs), for tests")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_file_options(p)
    p.set_defaults(fn=_demo)


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmark suite; write a Markdown table and a PNG chart",
        description="Run pysd's benchmarks (pytest-benchmark; install with: pip install 'pysd[bench]'), each "
                    "checked against its baseline before timing, and write bench_results.md, "
                    "bench_speedups.png and bench_results.json to --out-dir.")
    p.add_argument("--full", action="store_true", help="headline sizes (slow, tens of minutes) instead of quick mode")
    p.add_argument("--out-dir", default="pysd_results", help="where the table, chart and JSON go (default pysd_results)")
    p.add_argument("--force", action="store_true", help="overwrite existing result files")
    p.add_argument("--only", default=None, help="run only bench files whose name contains this (e.g. kd_loss)")
    p.add_argument("--bench-dir", default=None,
                   help="a folder of bench_*.py files (default: the benchmarks shipped in pysd.bench)")
    p.set_defaults(fn=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pysd", description="pysd: distillation and label refinement under label noise")
    parser.add_argument("--version", action="version", version=f"pysd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,demo,refine,bench}")
    p = sub.add_parser("info", help="backends, build configuration and versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=_print_info)
    _demo_parser(sub)
    _refine_parser(sub)
    _bench_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit 2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        # user errors (pysd.io.InputError is a ValueError) and errors pysd's ops raise on bad values
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pysd {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
