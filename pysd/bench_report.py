"""``pysd bench``: run the benchmarks with pytest-benchmark and write a Markdown table and a PNG chart.

The benchmarks ship with the package (``pysd/bench/``, built from the repository's ``bench/``); every
``bench_*.py`` there is run and every timed benchmark appears in the table and the chart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .io import InputError

BASELINE_PREFIXES = ("eager", "compile", "liger", "scipy", "faiss", "sklearn", "lbfgs", "torch", "dense", "naive", "numpy")
NEEDS = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "faiss": "faiss-cpu"}
OUTPUTS = ("bench_results.md", "bench_speedups.png", "bench_results.json")


def find_bench_dir(explicit=None) -> Path:
    """--bench-dir, else the repository's bench/ next to the package (source checkouts, editable
    installs), else the benchmarks installed with the package (pysd/bench/)."""
    here = Path(__file__).resolve().parent
    candidates = [Path(explicit)] if explicit else [here.parent / "bench", here / "bench"]
    for c in candidates:
        if (c / "conftest.py").exists() and any(c.glob("bench_*.py")):
            return c.resolve()  # absolute: pytest runs with the folder as its working directory
    where = f"{explicit} has no conftest.py and bench_*.py files" if explicit else (
        "this pysd has no benchmarks installed (reinstall it from a wheel or a source checkout)")
    raise InputError(f"cannot find the bench/ folder: {where}")


def missing_requirements() -> list:
    return [pkg for mod, pkg in NEEDS.items() if importlib.util.find_spec(mod) is None]


def _baselines(impls: dict) -> list:
    """Implementations named as baselines (eager, scipy, faiss, ...), else the group's first entry."""
    named = [b for b in impls if b.lower().startswith(BASELINE_PREFIXES)]
    return named or list(impls)[:1]


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table(data: dict) -> str:
    """One table per benchmark group: time and speed-up against every baseline measured in the same run."""
    meta = data.get("meta", {})
    lines = ["# pysd benchmark results", "",
             f"mode: {'full' if meta.get('full') else 'quick'}, threads: {meta.get('threads')}"
             + (f", copy bandwidth: {meta['copy_gbs']:.1f} GB/s" if "copy_gbs" in meta else "")
             + (f", machine: {meta['machine']}" if meta.get("machine") else ""), ""]
    for group, impls in data["results"].items():
        impls = {k: v for k, v in impls.items() if isinstance(v, dict) and v.get("seconds", 0) > 0}
        if not impls:
            continue
        base = _baselines(impls)
        header = ["impl", "time (ms)", *(f"speed-up vs {b}" for b in base), "notes"]
        lines += [f"## {group}", "", _row(header), "|" + "|".join(["---", "---:"] + ["---:"] * len(base) + ["---"]) + "|"]
        for impl, res in impls.items():
            ratios = [f"{impls[b]['seconds'] / res['seconds']:.2f}x" for b in base]
            notes = ", ".join(f"{k}={v}" for k, v in res.items() if k != "seconds")
            lines.append(_row([impl, f"{res['seconds'] * 1e3:.2f}", *ratios, notes]))
        lines.append("")
    return "\n".join(lines)


def _paired_span(res: dict, base: str):
    """(min, max) of the paired speed-up against ``base`` that a bench stored as
    ``paired_vs_<base> = "median (min-max)"``, or None."""
    text = res.get(f"paired_vs_{base}")
    if not isinstance(text, str) or "(" not in text:
        return None
    try:
        lo, hi = text.split("(", 1)[1].rstrip(")x ").split("-")
        return float(lo.rstrip("x")), float(hi.rstrip("x"))
    except ValueError:
        return None


def bar_chart(data: dict, path) -> None:
    """Speed-up of every implementation against its group's first baseline, one panel per benchmark group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(g, {k: v for k, v in impls.items() if isinstance(v, dict) and v.get("seconds", 0) > 0})
              for g, impls in data["results"].items()]
    groups = [(g, impls) for g, impls in groups if impls]
    heights = [0.9 + 0.32 * len(impls) for _, impls in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.6 + sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (group, impls) in zip(axes[:, 0], groups):
        base = _baselines(impls)[0]
        names = list(impls)
        speed = [impls[base]["seconds"] / impls[n]["seconds"] for n in names]
        colors = ["tab:gray" if n == base or n.lower().startswith(BASELINE_PREFIXES) else "tab:blue" for n in names]
        spans = [_paired_span(impls[n], base) for n in names]
        err = [[max(v - s[0], 0) if s else 0 for v, s in zip(speed, spans)],
               [max(s[1] - v, 0) if s else 0 for v, s in zip(speed, spans)]]
        ax.barh(names, speed, color=colors, xerr=err, error_kw={"lw": 0.8, "capsize": 2})
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlim(0, max(speed + [s[1] for s in spans if s]) * 1.3)  # room for the value labels right of the longest bar
        ax.set_title(group, fontsize=9)
        ax.set_xlabel(f"speed-up vs {base} (higher is better; whiskers: min-max of the paired rounds)", fontsize=8)
        ax.tick_params(labelsize=8)
        for i, v in enumerate(speed):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _run_pytest(args, bench_dir: Path) -> tuple[int, dict]:
    """Runs every selected bench file in its own pytest process (one file's compiled graphs and allocator
    caches never count against the next file's memory) and merges their results group by group, as one
    process would have; returns (exit code, data)."""
    files = sorted(str(p) for p in bench_dir.glob("bench_*.py") if not args.only or args.only in p.name)
    if not files:
        raise InputError(f"no bench files match {args.only!r} in {bench_dir}")
    # the benchmarks import the pysd this command runs from, wherever the working directory is
    path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    merged = {"meta": {}, "results": {}}
    with tempfile.TemporaryDirectory(prefix="pysd-bench-") as tmp:
        for i, file in enumerate(files):
            out = Path(tmp) / f"{i}.json"
            env = {**os.environ, "PYTHONPATH": path, "PYSD_BENCH_OUT": str(out),
                   "PYSD_BENCH_FULL": "1" if args.full else "0"}
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable-gc",
                   "--rootdir", str(bench_dir), file]
            print("+ " + " ".join(cmd), flush=True)
            rc = subprocess.call(cmd, cwd=bench_dir, env=env)
            if rc != 0:
                return rc, merged
            if out.exists():  # a file whose benchmarks all skipped writes nothing
                data = json.loads(out.read_text())
                merged["meta"].update(data["meta"])
                for group, impls in data["results"].items():
                    merged["results"].setdefault(group, {}).update(impls)
    return 0, merged


def run_bench(args) -> int:
    from . import _atomic

    missing = missing_requirements()
    if missing:
        raise InputError(f"pysd bench needs {', '.join(missing)}: install the bench extra, "
                         "pip install 'pysd[bench]' (from a source checkout: pip install '.[bench]')")
    bench_dir = find_bench_dir(args.bench_dir)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file, not a directory")
    with _atomic.reserve([(n, out_dir / n, "--out-dir") for n in OUTPUTS], args.force) as outs:
        rc, data = _run_pytest(args, bench_dir)
        if rc != 0:
            print(f"pysd bench: error: the benchmark run failed (pytest exit {rc}); nothing written", file=sys.stderr)
            return rc
        if not data["results"]:
            raise InputError("the benchmark run timed nothing (every benchmark skipped?); nothing written")
        Path(outs.tmp("bench_results.json")).write_text(json.dumps(data, indent=2))
        Path(outs.tmp("bench_results.md")).write_text(markdown_table(data))
        bar_chart(data, outs.tmp("bench_speedups.png"))
        outs.commit()
    print(f"pysd bench: wrote {', '.join(str(out_dir / n) for n in OUTPUTS)}")
    return 0
