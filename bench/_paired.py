"""Interleaved timing and peak-memory helpers of the language-model benches.

``paired(steps, rounds)`` runs every implementation once per round, in turn, so the
machine's drift hits all of them alike; ``ratios`` gives the median paired ratio with its
min-max.  ``python bench/_paired.py MODULE IMPL ARG...`` prints the peak resident-set growth
of one call of ``MODULE.make_step(IMPL, *ARGS)()`` in a fresh process (after a warm-up call,
so compilation does not count); ``peak_rss`` runs that.
"""

import gc
import importlib
import os
import statistics
import subprocess
import sys
import time


def paired(steps: dict, rounds: int) -> dict:
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def ratios(times: dict, base: str, impl: str):
    """Median, min and max over rounds of time(base) / time(impl)."""
    r = [b / i for b, i in zip(times[base], times[impl])]
    return statistics.median(r), min(r), max(r)


def record_paired(results: dict, group: str, times: dict, peaks: dict, pysd_impls):
    """Store median times, peak memory and the paired ratios of every pysd impl against every baseline."""
    baselines = [n for n in times if n not in pysd_impls]
    for name, ts in times.items():
        extra = {"peak_MiB": peaks.get(name)}
        if name in pysd_impls:
            for b in baselines:
                med, lo, hi = ratios(times, b, name)
                extra[f"paired_vs_{b}"] = f"{med:.2f}x ({lo:.2f}-{hi:.2f})"
        results[group][name] = {"seconds": statistics.median(ts), **extra}


def peak_rss(module: str, impl: str, *args) -> float:
    """Peak RSS growth (MiB) of one call, in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), module, impl, *map(str, args)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return float("nan")
    return round(int(out.stdout.strip().splitlines()[-1]) / 2**20, 1)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    mod = importlib.import_module(sys.argv[1])
    step = mod.make_step(sys.argv[2], *[int(a) for a in sys.argv[3:]])
    step()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kb("VmRSS")
    step()
    print((_status_kb("VmHWM") - base) * 1024)
