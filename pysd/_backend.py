"""The one place that picks an implementation for an op.

Order: ``cuda`` (tensor on a GPU and ``pysd._C_cuda`` usable) → ``cpp``
(``pysd._C``) → ``numba`` → ``torch`` (the pure-torch reference in
``pysd._ref``).  ``PYSD_BACKEND=cuda|cpp|numba|torch`` forces one; a forced
backend that cannot serve a call raises :class:`BackendError` saying why.

Each op declares its backends with one :func:`register` call; the adapters live in
``pysd/_cpp/<op>.py`` (both extension modules), ``pysd/_numba/<op>.py`` and ``pysd/_ref/<op>.py`` and
are imported on first use.  This module is the only one that knows the extension modules: they are
imported once, at ``import pysd``, and a failure to load ``pysd._C`` is reported with one warning and
falls back to numba.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

BACKENDS = ("cuda", "cpp", "numba", "torch")
ENV_VAR = "PYSD_BACKEND"


class BackendError(RuntimeError):
    """A forced or required backend cannot serve the call."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    usable: bool
    reason: str


_impls: Dict[str, Dict[str, Callable]] = {}
_modules: Dict[str, object] = {}
_load_errors: Dict[str, str] = {}


def _load(module: str) -> Optional[object]:
    if module in _modules:
        return _modules[module]
    if module in _load_errors:
        return None
    try:
        mod = importlib.import_module(f"pysd.{module}")
    except Exception as exc:  # ImportError, OSError (missing shared libs), ...
        _load_errors[module] = f"{type(exc).__name__}: {exc}"
        return None
    _modules[module] = mod
    return mod


def extension(name: str = "_C"):
    """The loaded extension module ``pysd._C`` / ``pysd._C_cuda`` (or None).

    For ``pysd._C`` it also sets the calling thread's OpenMP team size to
    ``torch.get_num_threads()``: adapters call this right before a launch, so every CPU
    kernel follows the torch setting of the thread that launches it (see README "Threads").
    """
    mod = _load(name)
    if mod is not None and name == "_C":
        import torch

        mod.set_num_threads(torch.get_num_threads())
    return mod


def _numba_reason() -> Optional[str]:
    try:
        import numba  # noqa: F401
    except Exception as exc:
        return f"numba not importable ({type(exc).__name__}: {exc})"
    return None


def status(name: str) -> BackendStatus:
    """Whether backend ``name`` is usable on this machine, and why not."""
    if name == "cpp":
        ok = _load("_C") is not None
        return BackendStatus(name, ok, "pysd._C loaded" if ok else f"pysd._C not loadable ({_load_errors['_C']})")
    if name == "cuda":
        mod = _load("_C_cuda")
        if mod is None:
            return BackendStatus(name, False, f"pysd._C_cuda not built or not loadable ({_load_errors['_C_cuda']})")
        count = mod.device_count()
        if count == 0:
            return BackendStatus(name, False, "pysd._C_cuda is built, but no CUDA device or driver is present")
        import torch

        if not torch.cuda.is_available():
            return BackendStatus(name, False, "pysd._C_cuda sees a GPU but this torch build has no CUDA support")
        return BackendStatus(name, True, f"pysd._C_cuda loaded, {count} device(s)")
    if name == "numba":
        reason = _numba_reason()
        return BackendStatus(name, reason is None, reason or "numba importable (JIT on first call)")
    if name == "torch":
        return BackendStatus(name, True, "pure-torch reference, always available")
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


# Where each backend's adapter of op ``<op>`` lives, and the extension module it is handed:
# ``pysd/_cpp/<op>.py`` serves both compiled modules, ``pysd/_numba/<op>.py`` and ``pysd/_ref/<op>.py``
# the fallbacks.  Every adapter module defines ``backend``; it is imported on first use.
_ADAPTERS = {"cuda": ("pysd._cpp", "_C_cuda"), "cpp": ("pysd._cpp", "_C"), "numba": ("pysd._numba", None),
             "torch": ("pysd._ref", None)}


def register(op: str, backends: Tuple[str, ...] = BACKENDS) -> None:
    """Declare that ``op`` has an adapter in each of ``backends`` (``pysd/<package>/<op>.py:backend``).

    Nothing is imported here: the adapter module (and numba's JIT) load when a call first needs it.
    """
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
        _impls.setdefault(op, {})[name] = None


def _resolve(op: str, name: str) -> Callable:
    fn = _impls[op][name]
    if fn is None:
        package, ext = _ADAPTERS[name]
        fn = importlib.import_module(f"{package}.{op}").backend
        if ext is not None:
            fn = functools.partial(fn, _load(ext))
        _impls[op][name] = fn
    return fn


def _serves(op: str, name: str, device_type: str) -> Tuple[bool, str]:
    st = status(name)
    if not st.usable:
        return False, st.reason
    if name not in _impls.get(op, {}):
        return False, f"backend {name!r} has no implementation of {op!r}"
    if name == "cuda" and device_type != "cuda":
        return False, f"backend 'cuda' needs CUDA tensors, got {device_type} tensors"
    if name in ("cpp", "numba") and device_type != "cpu":
        return False, f"backend {name!r} needs CPU tensors, got {device_type} tensors"
    return True, ""


def forced() -> Optional[str]:
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        return None
    if name not in BACKENDS:
        raise BackendError(f"{ENV_VAR}={name!r} is not a backend; expected one of {BACKENDS}")
    return name


def select(op: str, device_type: str) -> Tuple[str, Callable]:
    """Backend name and implementation of ``op`` for tensors on ``device_type``."""
    name = forced()
    if name is not None:
        ok, why = _serves(op, name, device_type)
        if not ok:
            raise BackendError(f"{ENV_VAR}={name} cannot run pysd.{op}: {why}")
        return name, _resolve(op, name)
    order = ("cuda", "torch") if device_type == "cuda" else ("cpp", "numba", "torch")
    for name in order:
        if _serves(op, name, device_type)[0]:
            return name, _resolve(op, name)
    raise BackendError(f"no backend can run pysd.{op} on {device_type} tensors")


def implementation(op: str, name: str) -> Callable:
    """The registered implementation of ``op`` by backend ``name`` (for tests/benches)."""
    ok, why = _serves(op, name, "cuda" if name == "cuda" else "cpu")
    if not ok:
        raise BackendError(f"backend {name!r} cannot run pysd.{op}: {why}")
    return _resolve(op, name)


def usable(op: str, device_type: str = "cpu") -> Tuple[str, ...]:
    """Names of the backends that can run ``op`` on ``device_type`` tensors."""
    return tuple(n for n in BACKENDS if _serves(op, n, device_type)[0])


def warn_if_cpp_missing() -> None:
    """One warning, at import, when the C++ extension failed to load."""
    if _load("_C") is None and not os.environ.get("PYSD_NO_EXTENSION_WARNING"):
        warnings.warn(
            f"pysd: the C++ extension pysd._C could not be loaded ({_load_errors['_C']}); "
            "CPU ops fall back to numba. Reinstall pysd to build it.",
            RuntimeWarning,
            stacklevel=3,
        )


def info() -> dict:
    """Backends (usable or not, and why), build configuration and versions."""
    import torch

    out = {"backends": {n: {"usable": s.usable, "reason": s.reason} for n, s in ((n, status(n)) for n in BACKENDS)}}
    cpu = _load("_C")
    out["build"] = dict(cpu.build_info()) if cpu is not None else {"error": _load_errors.get("_C")}
    cuda = _load("_C_cuda")
    out["cuda_build"] = dict(cuda.build_info()) if cuda is not None else {"error": _load_errors.get("_C_cuda")}
    try:
        import numba

        numba_version = numba.__version__
    except Exception:
        numba_version = None
    from . import __version__

    out["versions"] = {"pysd": __version__, "torch": torch.__version__, "numba": numba_version}
    out["forced_backend"] = os.environ.get(ENV_VAR) or None
    out["ops"] = {op: sorted(impls) for op, impls in sorted(_impls.items())}
    return out


def select_part(op: str, device_type: str, attr: str) -> Optional[Callable]:
    """``attr`` of the adapter module of the backend that serves ``op`` on ``device_type`` tensors, bound
    to its extension module like ``backend``; None when that adapter has no ``attr`` (e.g. the tile merge
    of ``knn_graph``, which only the compiled backends expose)."""
    name = select(op, device_type)[0]
    package, ext = _ADAPTERS[name]
    fn = getattr(importlib.import_module(f"{package}.{op}"), attr, None)
    if fn is None or ext is None:
        return fn
    return functools.partial(fn, _load(ext))
