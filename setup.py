"""Builds pysd._C (and pysd._C_cuda when nvcc is found and a GPU is visible) with CMake, and ships the
benchmarks of bench/ as pysd/bench/ so that ``pysd bench`` works from an installed wheel.

Environment knobs: PYSD_CUDA=AUTO|ON|OFF, PYSD_CUDA_ARCHS="80-real;90-real;90-virtual",
PYSD_BUILD_JOBS (default: CPU count), PYSD_BUILD_TYPE (default Release),
PYSD_BUILD_DIR (a persistent CMake build folder, for fast incremental rebuilds).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """One CMake build produces every module; modules it skipped (no nvcc) are dropped."""

    def build_extensions(self) -> None:
        self._cmake(Path(self.get_ext_fullpath(self.extensions[0].name)).parent.resolve())
        self.extensions = [e for e in self.extensions if Path(self.get_ext_fullpath(e.name)).exists()]

    def _cmake(self, out_dir: Path) -> None:
        import pybind11

        build_dir = Path(os.environ.get("PYSD_BUILD_DIR") or Path(self.build_temp) / "cmake").resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('PYSD_BUILD_TYPE', 'Release')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPYSD_VERSION={VERSION}",
            f"-DPYSD_CUDA={os.environ.get('PYSD_CUDA', 'AUTO')}",
        ]
        if os.environ.get("PYSD_CUDA_ARCHS"):
            config.append(f"-DPYSD_CUDA_ARCHS={os.environ['PYSD_CUDA_ARCHS']}")
        jobs = os.environ.get("PYSD_BUILD_JOBS", str(os.cpu_count() or 1))
        t0 = time.perf_counter()
        _say(f"pysd: configuring with CMake in {build_dir} (PYSD_CUDA={os.environ.get('PYSD_CUDA', 'AUTO')})")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], check=True)
        _say(f"pysd: compiling with {jobs} jobs (pip shows this progress with -v)")
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        _say(f"pysd: build finished in {time.perf_counter() - t0:.0f} s")


def _say(msg: str) -> None:
    print(msg, flush=True)


setup(
    version=VERSION,
    packages=find_packages(include=["pysd", "pysd.*"]) + ["pysd.bench"],
    package_dir={"pysd.bench": "bench"},
    ext_modules=[CMakeExtension("pysd._C"), CMakeExtension("pysd._C_cuda")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
