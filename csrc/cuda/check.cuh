// Error handling shared by the CUDA launchers.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pysd {
namespace cuda {

// Turns a CUDA error into std::runtime_error (a Python RuntimeError through pybind11).
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("pysd CUDA ") + what + ": " + cudaGetErrorString(err));
  }
}

}  // namespace cuda
}  // namespace pysd
