"""`import pysd` stays light: the heavy subpackages and their dependencies load on first use."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pysd.theory", "pysd.recipes", "pysd.distributed", "scipy.linalg", "sklearn", "matplotlib", "numba")


def test_import_loads_no_heavy_module_and_lazy_names_work():
    code = ("import sys, pysd; print(sorted(m for m in %r if m in sys.modules)); "
            "print(pysd.theory.sd_outputs.__module__, pysd.recipes.LabelRefinery.__name__, "
            "pysd.distributed.knn_graph.__name__, set(%r[:3]) <= {'pysd.' + n for n in dir(pysd)})" % (HEAVY, HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded, names = out.stdout.splitlines()
    assert loaded == "[]"
    assert names.startswith("pysd.theory") and names.endswith("LabelRefinery knn_graph True")


def test_unknown_attribute_is_an_attribute_error():
    import pysd

    try:
        pysd.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("pysd.no_such_thing did not raise")


def test_first_knn_graph_call_does_not_import_dynamo():
    """The op wrapper's first call imports torch._dynamo (seconds); eager knn_graph calls go around it."""
    code = ("import sys, torch, pysd; g = pysd.knn_graph(torch.randn(40, 6), 5); "
            "print(g.knn_indices.shape[1], 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "False"]
