"""Adapters of the compiled kernels: ``pysd/_cpp/<op>.py`` packs tensors into the raw pointers, sizes,
strides and stream of the binding ``<op>`` (csrc/bind/<op>.h).  Each ``backend(ext, ...)`` serves both
extension modules, ``pysd._C`` (CPU) and ``pysd._C_cuda`` (GPU): :mod:`pysd._backend` passes the module."""
