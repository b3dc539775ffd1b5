// Helpers shared by the per-op pybind11 glue (csrc/bind/<op>.h): raw pointers
// from Python integers, dtype dispatch, and the export of C++ option codes.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "pysd/common.h"

namespace pysd {
namespace bind {

namespace py = pybind11;

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// Calls `run(T{})` for the storage type named `dtype`; `LowPrecision` admits bfloat16/float16.
template <bool LowPrecision, typename Run>
auto dispatch(const std::string& dtype, const char* op, Run run) {
  if (dtype == "float32") return run(float{});
  if (dtype == "float64") return run(double{});
  if constexpr (LowPrecision) {
    if (dtype == "bfloat16") return run(bf16_t{});
    if (dtype == "float16") return run(f16_t{});
  }
  throw py::type_error(std::string(op) + ": unsupported dtype '" + dtype + "'");
}

// module.codes["<op>.<Enum>"] = {name: value}: the C++ option codes, which
// tests/test_backend.py compares with the IntEnums of pysd/_codes.py.
inline void export_codes(py::module_& m, const char* key,
                         std::initializer_list<std::pair<const char*, int>> values) {
  if (!py::hasattr(m, "codes")) m.attr("codes") = py::dict();
  py::dict entries;
  for (const auto& kv : values) entries[kv.first] = kv.second;
  py::dict(m.attr("codes"))[key] = entries;
}

}  // namespace bind
}  // namespace pysd
