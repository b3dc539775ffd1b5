"""``pysd bench``: run bench/ with pytest-benchmark and write a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BASELINE_PREFIXES = ("eager", "compile", "liger", "scipy", "faiss", "sklearn", "lbfgs")


def find_bench_dir(explicit=None) -> Path:
    """The repository's bench/ folder: --bench-dir, ./bench, or next to the package (editable installs)."""
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "bench", Path(__file__).resolve().parents[1] / "bench"]
    for c in candidates:
        if (c / "conftest.py").exists():
            return c
    raise FileNotFoundError("pysd bench: cannot find the bench/ folder (run from the repository root or pass "
                            "--bench-dir)")


def _baselines(impls: dict):
    return [b for b in impls if b.startswith(BASELINE_PREFIXES)]


def markdown_table(data: dict) -> str:
    """One table per benchmark group: time and speed-up against every baseline measured in the same run."""
    meta = data.get("meta", {})
    lines = ["# pysd benchmark results", "",
             f"mode: {'full' if meta.get('full') else 'quick'}, threads: {meta.get('threads')}, "
             f"copy bandwidth: {meta.get('copy_gbs', float('nan')):.1f} GB/s", ""]
    for group, impls in data["results"].items():
        base = _baselines(impls)
        lines += [f"## {group}", "",
                  "| impl | time (ms) | " + " | ".join(f"speed-up vs {b}" for b in base) + " | notes |",
                  "|---|---:|" + "---:|" * len(base) + "---|"]
        for impl, res in impls.items():
            ratios = " | ".join(f"{impls[b]['seconds'] / res['seconds']:.2f}x" for b in base)
            notes = ", ".join(f"{k}={v}" for k, v in res.items() if k != "seconds")
            lines.append(f"| {impl} | {res['seconds'] * 1e3:.2f} | {ratios} | {notes} |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(data: dict, path: Path) -> None:
    """Speed-up of every implementation against its group's first baseline, one bar group per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(g, impls) for g, impls in data["results"].items() if _baselines(impls)]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.2 + 1.2 * len(groups)), squeeze=False)
    for ax, (group, impls) in zip(axes[:, 0], groups):
        base = _baselines(impls)[0]
        names = list(impls)
        speed = [impls[base]["seconds"] / impls[n]["seconds"] for n in names]
        colors = ["tab:gray" if n.startswith(BASELINE_PREFIXES) else "tab:blue" for n in names]
        ax.barh(names, speed, color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel(f"speed-up vs {base} (higher is better)", fontsize=8)
        for i, v in enumerate(speed):
            ax.text(v, i, f" {v:.1f}x", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(args) -> int:
    try:
        bench_dir = find_bench_dir(args.bench_dir)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = (out_dir / "bench_results.json").resolve()
    files = sorted(str(p) for p in bench_dir.glob("bench_*.py") if not args.only or args.only in p.name)
    if not files:
        print(f"pysd bench: no bench files match {args.only!r} in {bench_dir}", file=sys.stderr)
        return 2
    env = {**os.environ, "PYSD_BENCH_OUT": str(results), "PYSD_BENCH_FULL": "1" if args.full else "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable-gc", *files]
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=bench_dir, env=env)
    if rc != 0 or not results.exists():
        print(f"pysd bench: the benchmark run failed (exit {rc})", file=sys.stderr)
        return rc or 1
    data = json.loads(results.read_text())
    table = out_dir / "bench_results.md"
    table.write_text(markdown_table(data))
    chart = out_dir / "bench_speedups.png"
    bar_chart(data, chart)
    print(f"pysd bench: wrote {table}, {chart} and {results}")
    return 0
