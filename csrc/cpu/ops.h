// Entry points of the CPU kernels (csrc/cpu/*.cpp), called by the bindings.
#pragma once

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"
#include "pysd/knn_graph.h"
#include "pysd/propagate.h"
#include "pysd/sparse_kd_loss.h"
#include "pysd/topk_teacher.h"

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

// Label propagation (the whole solve in one OpenMP region); `it` receives the
// number of iterations run, `fl` the rows whose argmax changed in the last one.
void propagate_cg(const prop::Csr<float>& g, const prop::CgArgs<float>& a, int64_t* it);
void propagate_cg(const prop::Csr<double>& g, const prop::CgArgs<double>& a, int64_t* it);
void propagate_iterate(const prop::Csr<float>& g, const prop::IterArgs<float>& a, int64_t* it, int64_t* fl);
void propagate_iterate(const prop::Csr<double>& g, const prop::IterArgs<double>& a, int64_t* it, int64_t* fl);
void propagate_post(const prop::Csr<float>& g, const prop::PostArgs<float>& a);
void propagate_post(const prop::Csr<double>& g, const prop::PostArgs<double>& a);

// Sparse-teacher distillation loss, one phase of pysd/sparse_kd_loss.h (OpenMP over rows).
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<float, float>& a);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<double, double>& a);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<bf16_t, float>& a);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<f16_t, float>& a);

// Offline teacher pass: log-sum-exp and top-k per row (OpenMP over rows).
void topk_teacher(const topk::Config& c, const topk::Args<float, float>& a);
void topk_teacher(const topk::Config& c, const topk::Args<double, double>& a);
void topk_teacher(const topk::Config& c, const topk::Args<bf16_t, float>& a);
void topk_teacher(const topk::Config& c, const topk::Args<f16_t, float>& a);

}  // namespace cpu
}  // namespace pysd
