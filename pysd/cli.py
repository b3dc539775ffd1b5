"""The ``pysd`` command line: ``info``, ``demo``, ``refine``, ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysd", description="pysd: distillation and label refinement under label noise")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="backends, build configuration and versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=_print_info)

    p = sub.add_parser("refine", help="refine noisy labels from saved features (kNN graph + label propagation)")
    p.add_argument("features", help="(N, d) features: .npy, .npz, .pt or .csv")
    p.add_argument("labels", help="(N,) integer labels: .npy, .npz, .pt or .csv (may be the features' .npz)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--csv", action="store_true", help="also write a per-sample .csv next to --out")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    p.add_argument("--alpha", type=float, default=0.99, help="propagation alpha in (0, 1) (default 0.99)")
    p.add_argument("--solver", choices=["cg", "iterate"], default="cg")
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine")
    p.add_argument("--power", type=float, default=3.0, help="affinity power gamma (default 3)")
    p.add_argument("--num-classes", type=int, default=None, help="default: max label + 1")
    p.add_argument("--features-key", default=None, help="array name inside .npz/.pt for the features")
    p.add_argument("--labels-key", default=None, help="array name inside .npz/.pt for the labels")
    p.set_defaults(fn=_refine)

    p = sub.add_parser("bench", help="run the benchmark suite; write a Markdown table and a PNG chart")
    p.add_argument("--full", action="store_true", help="headline sizes (slow) instead of quick mode")
    p.add_argument("--out-dir", default="pysd_results", help="where the table, chart and JSON go")
    p.add_argument("--only", default=None, help="run only bench files whose name contains this (e.g. kd_loss)")
    p.add_argument("--bench-dir", default=None, help="the repository's bench/ folder (default: found automatically)")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("demo", help="end-to-end noisy-label pipeline on an embedded data set")
    p.add_argument("--dataset", default="digits", help="'digits' (scikit-learn, default) or a .npz with X/y arrays")
    p.add_argument("--noise", type=float, default=0.4, help="label noise rate (default 0.4)")
    p.add_argument("--noise-type", choices=["sym", "asym"], default="sym")
    p.add_argument("--rounds", type=int, default=4, help="self-distillation rounds (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="pysd_results", help="where the plot and JSON go")
    p.add_argument("--quick", action="store_true", help="reduced mode (fewer epochs) for tests")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(fn=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
