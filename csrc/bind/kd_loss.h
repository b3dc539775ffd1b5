// pybind11 glue of kd_loss: keyword-only arguments → kd_loss::Config / Args,
// then the launcher with the GIL released.  module.cpp calls def_cpu or def_cuda.
#pragma once

#include "common.h"
#include "pysd/kd_loss.h"

namespace pysd {
namespace kd_loss {

// `launch(config, args, stream)` is called once with the Args<In, A> matching `dtype`.
template <typename Launch>
void def(pybind11::module_& m, Launch launch) {
  namespace py = pybind11;
  using bind::ptr;
  bind::export_codes(m, "kd_loss.Divergence", {{"FKL", kFKL}, {"RKL", kRKL}, {"JSD", kJSD}});
  bind::export_codes(m, "kd_loss.TeacherFormat",
                     {{"NONE", kNoTeacher}, {"LOGITS", kLogits}, {"PROBS", kProbs}, {"LOGPROBS", kLogProbs}});
  m.def(
      "kd_loss",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t student, int64_t student_stride,
               uintptr_t teacher, int64_t teacher_stride, uintptr_t target, uintptr_t weight,
               uintptr_t grad_scale, uintptr_t grad, int64_t grad_stride, uintptr_t loss, int divergence,
               int teacher_format, double beta, double temperature, double soft_coef, double hard_weight,
               double label_smoothing, int64_t ignore_index, uintptr_t stream) {
        Config c;
        c.rows = rows; c.cols = cols; c.divergence = divergence;
        c.teacher_format = teacher_format; c.beta = beta; c.temperature = temperature;
        c.soft_coef = soft_coef; c.hard_weight = hard_weight;
        c.label_smoothing = label_smoothing; c.ignore_index = ignore_index;
        c.has_target = target != 0; c.compute_grad = grad != 0;
        bind::dispatch<true>(dtype, "kd_loss", [&](auto tag_in) {
          using In = decltype(tag_in);
          using A = typename acc<In>::type;
          Args<In, A> a;
          a.student = ptr<const In>(student); a.student_stride = student_stride;
          a.teacher = ptr<const In>(teacher); a.teacher_stride = teacher_stride;
          a.target = ptr<const int64_t>(target); a.weight = ptr<const A>(weight);
          a.grad_scale = ptr<const double>(grad_scale);
          a.grad = ptr<In>(grad); a.grad_stride = grad_stride;
          a.loss = ptr<A>(loss);
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("student"),
      py::arg("student_stride"), py::arg("teacher"), py::arg("teacher_stride"), py::arg("target"),
      py::arg("weight"), py::arg("grad_scale"), py::arg("grad"), py::arg("grad_stride"), py::arg("loss"),
      py::arg("divergence"), py::arg("teacher_format"), py::arg("beta"), py::arg("temperature"),
      py::arg("soft_coef"), py::arg("hard_weight"), py::arg("label_smoothing"), py::arg("ignore_index"),
      py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t) { run_cpu(c, a); });
}
inline void def_cuda(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t stream) { run_cuda(c, a, stream); });
}

}  // namespace kd_loss
}  // namespace pysd
