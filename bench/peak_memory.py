"""Peak extra resident memory of one step, measured in a fresh process.

``python bench/peak_memory.py MODULE IMPL ARG...`` builds ``MODULE.make_step(IMPL, *ARGS)``
(integer ARGS), runs it once as a warm-up (JIT compilation, first-use pages), then prints how
many bytes the resident set grew at its peak during a second call, measured from just before
it.  Outputs the step keeps alive between calls (a gradient) are in the baseline, so the
figure is the step's extra memory.  pysd's idle cached CPU buffers (``pysd.empty_cpu_cache``) are
released before the baseline: the work buffers a step reuses from the cache count as its memory.  Linux only: the peak is reset through /proc/self/clear_refs.
"""

import gc
import importlib
import os
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(module: str, impl: str, *args: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    step = importlib.import_module(module).make_step(impl, *args)
    step()
    gc.collect()
    if "pysd" in sys.modules:
        sys.modules["pysd"].empty_cpu_cache()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _status_kb("VmRSS")
    step()
    print((_status_kb("VmHWM") - base) * 1024)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
