// Entry points of the CPU kernels (csrc/cpu/*.cpp), called by the bindings.
#pragma once

#include "pysd/kd_loss.h"

namespace pysd {
namespace cpu {

// Fused distillation loss over `c.rows` rows (OpenMP over rows).
void kd_loss(const kd::Config& c, const kd::Args<float, float>& a);
void kd_loss(const kd::Config& c, const kd::Args<double, double>& a);
void kd_loss(const kd::Config& c, const kd::Args<bf16_t, float>& a);
void kd_loss(const kd::Config& c, const kd::Args<f16_t, float>& a);

}  // namespace cpu
}  // namespace pysd
