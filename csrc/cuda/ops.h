// Entry points of the CUDA kernels (csrc/cuda/*.cu), called by the bindings.
// Plain C++ interface: no CUDA headers needed by the caller.
#pragma once

#include <string>
#include <utility>

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"
#include "pysd/knn_graph.h"
#include "pysd/propagate.h"
#include "pysd/sparse_kd_loss.h"
#include "pysd/topk_teacher.h"

namespace pysd {
namespace cuda {

// Each launcher enqueues on `stream` (a cudaStream_t as an integer) and
// throws std::runtime_error with the CUDA error string on failure.
void kd_loss(const kd::Config& c, const kd::Args<float, float>& a, uintptr_t stream);
void kd_loss(const kd::Config& c, const kd::Args<double, double>& a, uintptr_t stream);
void kd_loss(const kd::Config& c, const kd::Args<bf16_t, float>& a, uintptr_t stream);
void kd_loss(const kd::Config& c, const kd::Args<f16_t, float>& a, uintptr_t stream);
void partial_labels(const pll::Config& c, const pll::Args<float>& a, uintptr_t stream);
void partial_labels(const pll::Config& c, const pll::Args<double>& a, uintptr_t stream);
void partial_labels(const pll::Config& c, const pll::Args<bf16_t>& a, uintptr_t stream);
void partial_labels(const pll::Config& c, const pll::Args<f16_t>& a, uintptr_t stream);

// Row pass only: t.col_from must equal t.j1 (the GPU runs full tiles, see knn_graph.cu).
void knn_merge(const knn::Tile<float>& t, const knn::Lists<float>& l, uintptr_t stream);
void knn_merge(const knn::Tile<double>& t, const knn::Lists<double>& l, uintptr_t stream);

// Label propagation; the host waits for the stream once, at the end, for the
// iteration count (and, for iterate, the rows whose argmax flipped last).
int64_t propagate_cg(const prop::Csr<float>& g, const prop::CgArgs<float>& a, uintptr_t stream);
int64_t propagate_cg(const prop::Csr<double>& g, const prop::CgArgs<double>& a, uintptr_t stream);
std::pair<int64_t, int64_t> propagate_iterate(const prop::Csr<float>& g, const prop::IterArgs<float>& a,
                                              uintptr_t stream);
std::pair<int64_t, int64_t> propagate_iterate(const prop::Csr<double>& g, const prop::IterArgs<double>& a,
                                              uintptr_t stream);
void propagate_post(const prop::Csr<float>& g, const prop::PostArgs<float>& a, uintptr_t stream);
void propagate_post(const prop::Csr<double>& g, const prop::PostArgs<double>& a, uintptr_t stream);

// Sparse-teacher loss (fused phase only) and the offline teacher pass.
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<float, float>& a, uintptr_t stream);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<double, double>& a, uintptr_t stream);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<bf16_t, float>& a, uintptr_t stream);
void sparse_kd_loss(const skd::Config& c, int phase, const skd::Args<f16_t, float>& a, uintptr_t stream);
void topk_teacher(const topk::Config& c, const topk::Args<float, float>& a, uintptr_t stream);
void topk_teacher(const topk::Config& c, const topk::Args<double, double>& a, uintptr_t stream);
void topk_teacher(const topk::Config& c, const topk::Args<bf16_t, float>& a, uintptr_t stream);
void topk_teacher(const topk::Config& c, const topk::Args<f16_t, float>& a, uintptr_t stream);

int device_count();            // 0 when no driver / no device
std::string runtime_version();

}  // namespace cuda
}  // namespace pysd
