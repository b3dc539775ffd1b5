// Entry points of the CPU kernels (csrc/cpu/*.cpp), called by the bindings.
#pragma once

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"
#include "pysd/knn_graph.h"

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

// Merges one tile of X X^T into the running top-k lists (OpenMP inside).
void knn_merge(const knn::Tile<float>& t, const knn::Lists<float>& l);
void knn_merge(const knn::Tile<double>& t, const knn::Lists<double>& l);

}  // namespace cpu
}  // namespace pysd
