"""Peak extra resident memory of one fwd+bwd, measured in a fresh process.

``python bench/peak_memory.py IMPL N C`` prints how many bytes the resident set grew
at its peak while running IMPL once, measured from just before the call (after the
inputs exist and one warm-up call has run, so JIT compilation does not count).
Linux only: the peak is reset through /proc/self/clear_refs.
"""

import gc
import os
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(impl: str, n: int, c: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_kd_loss import make_inputs, step_fn

    s, t, y = make_inputs(n, c)
    fn = step_fn(impl)
    fn(s.clone().requires_grad_(), t, y)
    x = s.clone().requires_grad_()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _status_kb("VmRSS")
    fn(x, t, y)
    print((_status_kb("VmHWM") - base) * 1024)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
