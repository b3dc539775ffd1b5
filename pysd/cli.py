"""The ``pysd`` command line: ``pysd info``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _print_info(as_json: bool) -> int:
    import pysd

    data = pysd.info()
    if as_json:
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pysd", description="pysd: distillation under label noise")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="backends, build configuration and versions")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _print_info(args.json)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
