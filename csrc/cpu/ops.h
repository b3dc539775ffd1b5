// Entry points of the CPU kernels (csrc/cpu/*.cpp), called by the bindings.
#pragma once

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"

namespace pysd {
namespace cpu {

// Fused distillation loss over `c.rows` rows (OpenMP over rows).
void kd_loss(const kd::Config& c, const kd::Args<float, float>& a);
void kd_loss(const kd::Config& c, const kd::Args<double, double>& a);
void kd_loss(const kd::Config& c, const kd::Args<bf16_t, float>& a);
void kd_loss(const kd::Config& c, const kd::Args<f16_t, float>& a);

// Partial-label refinement of `c.rows` rows (OpenMP over rows).
void partial_labels(const pll::Config& c, const pll::Args<float>& a);
void partial_labels(const pll::Config& c, const pll::Args<double>& a);
void partial_labels(const pll::Config& c, const pll::Args<bf16_t>& a);
void partial_labels(const pll::Config& c, const pll::Args<f16_t>& a);

}  // namespace cpu
}  // namespace pysd
