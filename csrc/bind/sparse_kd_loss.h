// pybind11 glue of sparse_kd_loss: keyword-only arguments → sparse_kd_loss::Config /
// Args, then the launcher with the GIL released.  module.cpp calls def_cpu or def_cuda.
#pragma once

#include "common.h"
#include "pysd/sparse_kd_loss.h"

namespace pysd {
namespace sparse_kd_loss {

// `launch(config, phase, args, stream)` is called once with the Args<In, A> matching `dtype`;
// see pysd/sparse_kd_loss.h for the phases.
template <typename Launch>
void def(pybind11::module_& m, Launch launch) {
  namespace py = pybind11;
  using bind::ptr;
  bind::export_codes(m, "sparse_kd_loss.Tail",
                     {{"RENORMALIZE", kRenormalize}, {"BUCKET", kBucket}, {"UNIFORM", kUniform}});
  bind::export_codes(m, "sparse_kd_loss.Phase", {{"FUSED", kFused}, {"STATS", kStats}, {"JSD_TAIL", kJsdTail},
                                                 {"FINALIZE", kFinalize}, {"APPLY", kApply}});
  m.def(
      "sparse_kd_loss",
      [launch](const std::string& dtype, int phase, int64_t rows, int64_t vocab, int64_t v0, int64_t width,
               int64_t k, uintptr_t student, int64_t student_stride, uintptr_t ids, uintptr_t vals,
               uintptr_t target, uintptr_t weight, uintptr_t grad_scale, uintptr_t grad, int64_t grad_stride,
               uintptr_t loss, uintptr_t stats, uintptr_t gathered, uintptr_t coef, uintptr_t delta,
               int divergence, int format, int tail, double beta, double temperature, double retemper,
               double soft_coef, double hard_weight, double label_smoothing, int64_t ignore_index,
               uintptr_t stream) {
        Config c;
        c.rows = rows; c.vocab = vocab; c.k = k; c.v0 = v0; c.width = width;
        c.divergence = divergence; c.format = format; c.tail = tail; c.beta = beta;
        c.temperature = temperature; c.retemper = retemper; c.soft_coef = soft_coef;
        c.hard_weight = hard_weight; c.label_smoothing = label_smoothing; c.ignore_index = ignore_index;
        c.has_target = target != 0; c.compute_grad = grad != 0;
        bind::dispatch<true>(dtype, "sparse_kd_loss", [&](auto tag_in) {
          using In = decltype(tag_in);
          using A = typename acc<In>::type;
          Args<In, A> a;
          a.student = ptr<const In>(student); a.student_stride = student_stride;
          a.ids = ptr<const int64_t>(ids); a.vals = ptr<const A>(vals);
          a.target = ptr<const int64_t>(target); a.weight = ptr<const A>(weight);
          a.grad_scale = ptr<const double>(grad_scale);
          a.grad = ptr<In>(grad); a.grad_stride = grad_stride; a.loss = ptr<A>(loss);
          a.stats = ptr<A>(stats); a.gathered = ptr<A>(gathered); a.coef = ptr<A>(coef); a.delta = ptr<A>(delta);
          py::gil_scoped_release nogil;
          launch(c, phase, a, stream);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("phase"), py::arg("rows"), py::arg("vocab"), py::arg("v0"),
      py::arg("width"), py::arg("k"), py::arg("student"), py::arg("student_stride"), py::arg("ids"),
      py::arg("vals"), py::arg("target"), py::arg("weight"), py::arg("grad_scale"), py::arg("grad"),
      py::arg("grad_stride"), py::arg("loss"), py::arg("stats"), py::arg("gathered"), py::arg("coef"),
      py::arg("delta"), py::arg("divergence"), py::arg("format"), py::arg("tail"), py::arg("beta"),
      py::arg("temperature"), py::arg("retemper"), py::arg("soft_coef"), py::arg("hard_weight"),
      py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  def(m, [](const auto& c, int phase, const auto& a, uintptr_t) { run_cpu(c, phase, a); });
}
inline void def_cuda(pybind11::module_& m) {
  def(m, [](const auto& c, int phase, const auto& a, uintptr_t stream) { run_cuda(c, phase, a, stream); });
}

}  // namespace sparse_kd_loss
}  // namespace pysd
