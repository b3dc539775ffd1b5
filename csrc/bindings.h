// Shared pybind11 glue of the CPU (_C) and CUDA (_C_cuda) modules: turns the
// Python-side integers (pointers, sizes, strides, option codes) into kernel
// arguments and calls a launcher with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"
#include "pysd/knn_graph.h"

namespace pysd {
namespace bind {

namespace py = pybind11;

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// `launch(config, args)` is called once with the Args<In, A> matching `dtype`.
template <typename Launch>
void def_kd_loss(py::module_& m, Launch launch) {
  m.def(
      "kd_loss",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t student,
               int64_t student_stride, uintptr_t teacher, int64_t teacher_stride,
               uintptr_t target, uintptr_t weight, uintptr_t grad_scale, uintptr_t grad,
               int64_t grad_stride, uintptr_t loss, int divergence, int teacher_format,
               double beta, double temperature, double soft_coef, double hard_weight,
               double label_smoothing, int64_t ignore_index, uintptr_t stream) {
        kd::Config c;
        c.rows = rows; c.cols = cols; c.divergence = divergence;
        c.teacher_format = teacher_format; c.beta = beta; c.temperature = temperature;
        c.soft_coef = soft_coef; c.hard_weight = hard_weight;
        c.label_smoothing = label_smoothing; c.ignore_index = ignore_index;
        c.has_target = target != 0; c.compute_grad = grad != 0;
        auto run = [&](auto tag_in, auto tag_acc) {
          using In = decltype(tag_in);
          using A = decltype(tag_acc);
          kd::Args<In, A> a;
          a.student = ptr<const In>(student); a.student_stride = student_stride;
          a.teacher = ptr<const In>(teacher); a.teacher_stride = teacher_stride;
          a.target = ptr<const int64_t>(target); a.weight = ptr<const A>(weight);
          a.grad_scale = ptr<const double>(grad_scale);
          a.grad = ptr<In>(grad); a.grad_stride = grad_stride;
          a.loss = ptr<A>(loss);
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        };
        if (dtype == "float32") run(float{}, float{});
        else if (dtype == "float64") run(double{}, double{});
        else if (dtype == "bfloat16") run(bf16_t{}, float{});
        else if (dtype == "float16") run(f16_t{}, float{});
        else throw py::type_error("kd_loss: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("student"),
      py::arg("student_stride"), py::arg("teacher"), py::arg("teacher_stride"),
      py::arg("target"), py::arg("weight"), py::arg("grad_scale"), py::arg("grad"),
      py::arg("grad_stride"), py::arg("loss"), py::arg("divergence"),
      py::arg("teacher_format"), py::arg("beta"), py::arg("temperature"),
      py::arg("soft_coef"), py::arg("hard_weight"), py::arg("label_smoothing"),
      py::arg("ignore_index"), py::arg("stream") = 0);
}

// `launch(config, args, stream)` is called once with the Args<In> matching `dtype`.
template <typename Launch>
void def_partial_labels(py::module_& m, Launch launch) {
  m.def(
      "partial_labels",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t probs,
               int64_t probs_stride, uintptr_t out, int64_t out_stride, int64_t k,
               bool renormalize, uintptr_t stream) {
        pll::Config c;
        c.rows = rows; c.cols = cols; c.k = k; c.renormalize = renormalize;
        auto run = [&](auto tag) {
          using In = decltype(tag);
          pll::Args<In> a;
          a.probs = ptr<const In>(probs); a.probs_stride = probs_stride;
          a.out = ptr<In>(out); a.out_stride = out_stride;
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        };
        if (dtype == "float32") run(float{});
        else if (dtype == "float64") run(double{});
        else if (dtype == "bfloat16") run(bf16_t{});
        else if (dtype == "float16") run(f16_t{});
        else throw py::type_error("partial_labels: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("probs"),
      py::arg("probs_stride"), py::arg("out"), py::arg("out_stride"), py::arg("k"),
      py::arg("renormalize"), py::arg("stream") = 0);
}

// `launch(tile, lists, stream)` merges one tile of X X^T into the top-k lists.
template <typename Launch>
void def_knn_merge(py::module_& m, Launch launch) {
  m.def(
      "knn_merge",
      [launch](const std::string& dtype, uintptr_t dots, int64_t ld, int64_t i0, int64_t i1, int64_t j0,
               int64_t j1, int64_t col_from, uintptr_t sqnorm, bool exclude_self, uintptr_t sims,
               uintptr_t idx, int64_t k, uintptr_t stream) {
        auto run = [&](auto tag) {
          using A = decltype(tag);
          knn::Tile<A> t;
          t.dots = ptr<const A>(dots); t.ld = ld;
          t.i0 = i0; t.i1 = i1; t.j0 = j0; t.j1 = j1; t.col_from = col_from;
          t.sqnorm = ptr<const A>(sqnorm); t.exclude_self = exclude_self;
          knn::Lists<A> l;
          l.sims = ptr<A>(sims); l.idx = ptr<int32_t>(idx); l.k = k;
          py::gil_scoped_release nogil;
          launch(t, l, stream);
        };
        if (dtype == "float32") run(float{});
        else if (dtype == "float64") run(double{});
        else throw py::type_error("knn_merge: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("dots"), py::arg("ld"), py::arg("i0"), py::arg("i1"), py::arg("j0"),
      py::arg("j1"), py::arg("col_from"), py::arg("sqnorm"), py::arg("exclude_self"), py::arg("sims"),
      py::arg("idx"), py::arg("k"), py::arg("stream") = 0);
}

}  // namespace bind
}  // namespace pysd
