// Module-wide CUDA runtime queries (csrc/cuda/runtime.cu).  Plain C++: the
// host-compiled module.cpp includes it without CUDA headers.
#pragma once

#include <string>

namespace pysd {
namespace cuda {

int device_count();            // 0 when no driver / no device
std::string runtime_version();

}  // namespace cuda
}  // namespace pysd
