"""Backend dispatch, forced backends, pysd.info() and the build itself."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import pysd
from pysd import _backend


def test_cpp_extension_is_built():
    # A broken C++ build must fail CI, not silently fall back to numba.
    st = _backend.status("cpp")
    assert st.usable, st.reason


# PYSD_CUDA=AUTO builds the CUDA module where nvcc exists and a GPU is visible; CI forces it with PYSD_CUDA=ON.
_CUDA_EXPECTED = shutil.which("nvcc") is not None and (os.environ.get("PYSD_CUDA") == "ON"
                                                       or torch.cuda.is_available())


@pytest.mark.skipif(not _CUDA_EXPECTED, reason="the CUDA module is built with nvcc and a GPU, or PYSD_CUDA=ON")
def test_cuda_module_is_built_when_nvcc_exists():
    assert _backend.extension("_C_cuda") is not None, _backend.status("cuda").reason
    info = pysd.info()["cuda_build"]
    assert "80-real" in info["cuda_archs"] and "90" in info["cuda_archs"]


def test_cuda_call_without_gpu_fails_cleanly():
    mod = _backend.extension("_C_cuda")
    if mod is None or mod.device_count() > 0:
        pytest.skip("needs the CUDA module on a machine without a GPU")
    x = torch.zeros(2, 3)
    rows = torch.zeros(2)
    one = torch.ones((), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="CUDA"):
        mod.kd_loss(dtype="float32", rows=2, cols=3, student=x.data_ptr(), student_stride=3, teacher=x.data_ptr(),
                    teacher_stride=3, target=0, weight=0, grad_scale=one.data_ptr(), grad=0, grad_stride=3,
                    loss=rows.data_ptr(), divergence=0, teacher_format=0, beta=0.5, temperature=1.0, soft_coef=1.0,
                    hard_weight=0.0, label_smoothing=0.0, ignore_index=-100, stream=0)


def test_default_order_on_cpu(monkeypatch):
    monkeypatch.delenv("PYSD_BACKEND", raising=False)
    assert _backend.select("kd_loss", "cpu")[0] == "cpp"
    assert _backend.usable("kd_loss", "cpu") == ("cpp", "numba", "torch")


@pytest.mark.parametrize("name", ["cpp", "numba", "torch"])
def test_forced_backend_is_used(monkeypatch, name):
    monkeypatch.setenv("PYSD_BACKEND", name)
    assert _backend.select("kd_loss", "cpu")[0] == name


def test_forced_backend_that_cannot_serve(monkeypatch):
    monkeypatch.setenv("PYSD_BACKEND", "cuda")
    with pytest.raises(pysd.BackendError, match="PYSD_BACKEND=cuda cannot run pysd.kd_loss"):
        pysd.kd_loss(torch.randn(2, 3), torch.randn(2, 3))
    monkeypatch.setenv("PYSD_BACKEND", "fortran")
    with pytest.raises(pysd.BackendError, match="not a backend"):
        pysd.kd_loss(torch.randn(2, 3), torch.randn(2, 3))


def test_unknown_op_and_backend():
    with pytest.raises(pysd.BackendError, match="no backend"):
        _backend.select("no_such_op", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.status("opencl")


def test_info_lists_every_backend_with_reason():
    info = pysd.info()
    assert list(info["backends"]) == ["cuda", "cpp", "numba", "torch"]
    for st in info["backends"].values():
        assert isinstance(st["usable"], bool) and st["reason"]
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["pysd"] == pysd.__version__
    assert "x86-64-v3" in info["build"]["isa_paths"] and info["build"]["compiler"]
    assert "numba" in info["ops"]["kd_loss"]


def test_vector_path_follows_cpu_features_not_vendor():
    """The row kernels run the widest ISA clone the CPU has (an AVX2 AMD CPU once got the SSE2 clone,
    and the AVX2 clone once had no FMA)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    v3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"} <= flags
    v4 = v3 and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags
    build = pysd.info()["build"]
    assert build["isa_active"] == ("x86-64-v4" if v4 else "x86-64-v3" if v3 else "x86-64")
    # What actually ran: the probe's multiply-add is fused only in the v3 / v4 clones.
    assert build["isa_fma"] is v3


def _run(args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_python_m_pysd_info():
    out = _run(["-m", "pysd", "info"])
    assert out.returncode == 0, out.stderr
    assert "cpp    yes" in out.stdout and "numba" in out.stdout and "isa_paths" in out.stdout
    js = _run(["-m", "pysd", "info", "--json"])
    assert json.loads(js.stdout)["backends"]["torch"]["usable"] is True


def test_missing_extension_falls_back_to_numba_with_one_warning():
    code = (
        "import sys, warnings; sys.modules['pysd._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import pysd, torch\n"
        "    from pysd import _backend\n"
        "    name = _backend.select('kd_loss', 'cpu')[0]\n"
        "    pysd.kd_loss(torch.randn(2, 3), torch.randn(2, 3))\n"
        "msgs = [str(x.message) for x in w if 'pysd._C' in str(x.message)]\n"
        "print(name, len(msgs)); print(msgs[0])\n"
    )
    out = _run(["-c", code], env={"PYSD_BACKEND": ""})
    assert out.returncode == 0, out.stderr
    first, reason = out.stdout.splitlines()[:2]
    assert first == "numba 1"
    assert "could not be loaded" in reason and "import of pysd._C halted" in reason


def test_cpp_kernels_follow_torch_threads_in_a_fresh_thread():
    # A thread that has run no torch op still has OpenMP's default team size (all cores);
    # fetching the extension for a launch must apply torch.get_num_threads() there.
    import threading

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    seen = []
    try:
        t = threading.Thread(target=lambda: seen.append(_backend.extension("_C").build_info()["max_threads"]))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(old)
    assert seen == [1]


def test_numba_kernels_follow_torch_threads():
    import numba

    from pysd._numba import match_torch_threads

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert match_torch_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
    assert match_torch_threads() == min(old, numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("module", ["_C", pytest.param("_C_cuda", marks=pytest.mark.cuda)])
def test_extension_codes_match_python_enums(module):
    from pysd._codes import EXPORTED

    ext = _backend.extension(module)
    if ext is None:
        pytest.skip(f"pysd.{module} is not built here")
    assert set(ext.codes) == set(EXPORTED)
    for key, enum in EXPORTED.items():
        assert ext.codes[key] == {m.name: int(m) for m in enum}, key
