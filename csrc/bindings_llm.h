// pybind11 glue of the language-model-scale ops (sparse_kd_loss, topk_teacher),
// shared by the CPU and CUDA modules.  Same conventions as bindings.h.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "pysd/sparse_kd_loss.h"
#include "pysd/topk_teacher.h"

namespace pysd {
namespace bind {

namespace py = pybind11;

// `launch(config, phase, args, stream)`; see pysd/sparse_kd_loss.h for the phases.
template <typename Launch>
void def_sparse_kd_loss(py::module_& m, Launch launch) {
  m.def(
      "sparse_kd_loss",
      [launch](const std::string& dtype, int phase, int64_t rows, int64_t vocab, int64_t v0, int64_t width,
               int64_t k, uintptr_t student, int64_t student_stride, uintptr_t ids, uintptr_t vals,
               uintptr_t target, uintptr_t weight, uintptr_t grad_scale, uintptr_t grad, int64_t grad_stride,
               uintptr_t loss, uintptr_t stats, uintptr_t gathered, uintptr_t coef, uintptr_t delta,
               int divergence, int format, int tail, double beta, double temperature, double retemper,
               double soft_coef, double hard_weight, double label_smoothing, int64_t ignore_index,
               uintptr_t stream) {
        skd::Config c;
        c.rows = rows; c.vocab = vocab; c.k = k; c.v0 = v0; c.width = width;
        c.divergence = divergence; c.format = format; c.tail = tail; c.beta = beta;
        c.temperature = temperature; c.retemper = retemper; c.soft_coef = soft_coef;
        c.hard_weight = hard_weight; c.label_smoothing = label_smoothing; c.ignore_index = ignore_index;
        c.has_target = target != 0; c.compute_grad = grad != 0;
        auto run = [&](auto tag_in, auto tag_acc) {
          using In = decltype(tag_in);
          using A = decltype(tag_acc);
          skd::Args<In, A> a;
          a.student = ptr<const In>(student); a.student_stride = student_stride;
          a.ids = ptr<const int64_t>(ids); a.vals = ptr<const A>(vals);
          a.target = ptr<const int64_t>(target); a.weight = ptr<const A>(weight);
          a.grad_scale = ptr<const double>(grad_scale);
          a.grad = ptr<In>(grad); a.grad_stride = grad_stride; a.loss = ptr<A>(loss);
          a.stats = ptr<A>(stats); a.gathered = ptr<A>(gathered); a.coef = ptr<A>(coef); a.delta = ptr<A>(delta);
          py::gil_scoped_release nogil;
          launch(c, phase, a, stream);
        };
        if (dtype == "float32") run(float{}, float{});
        else if (dtype == "float64") run(double{}, double{});
        else if (dtype == "bfloat16") run(bf16_t{}, float{});
        else if (dtype == "float16") run(f16_t{}, float{});
        else throw py::type_error("sparse_kd_loss: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("phase"), py::arg("rows"), py::arg("vocab"), py::arg("v0"), py::arg("width"),
      py::arg("k"), py::arg("student"), py::arg("student_stride"), py::arg("ids"), py::arg("vals"),
      py::arg("target"), py::arg("weight"), py::arg("grad_scale"), py::arg("grad"), py::arg("grad_stride"),
      py::arg("loss"), py::arg("stats"), py::arg("gathered"), py::arg("coef"), py::arg("delta"),
      py::arg("divergence"), py::arg("format"), py::arg("tail"), py::arg("beta"), py::arg("temperature"),
      py::arg("retemper"), py::arg("soft_coef"), py::arg("hard_weight"), py::arg("label_smoothing"),
      py::arg("ignore_index"), py::arg("stream") = 0);
}

// `launch(config, args, stream)`.
template <typename Launch>
void def_topk_teacher(py::module_& m, Launch launch) {
  m.def(
      "topk_teacher",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, int64_t k, uintptr_t logits, int64_t stride,
               uintptr_t indices, uintptr_t values, double temperature, int format, uintptr_t stream) {
        topk::Config c;
        c.rows = rows; c.cols = cols; c.k = k; c.temperature = temperature; c.format = format;
        auto run = [&](auto tag_in, auto tag_acc) {
          using In = decltype(tag_in);
          using A = decltype(tag_acc);
          topk::Args<In, A> a;
          a.logits = ptr<const In>(logits); a.stride = stride;
          a.indices = ptr<int64_t>(indices); a.values = ptr<A>(values);
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        };
        if (dtype == "float32") run(float{}, float{});
        else if (dtype == "float64") run(double{}, double{});
        else if (dtype == "bfloat16") run(bf16_t{}, float{});
        else if (dtype == "float16") run(f16_t{}, float{});
        else throw py::type_error("topk_teacher: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("k"), py::arg("logits"), py::arg("stride"),
      py::arg("indices"), py::arg("values"), py::arg("temperature"), py::arg("format"), py::arg("stream") = 0);
}

}  // namespace bind
}  // namespace pysd
