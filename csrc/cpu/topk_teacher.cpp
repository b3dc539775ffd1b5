// CPU launcher of the offline teacher pass: OpenMP over rows; per row one
// sweep in blocks that stay in L1: the block max (vector), the heap offers of
// the rare entries above the current k-th best (scalar), and the online
// sum of exp((x - m)/T) rescaled when the max grows (vector).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "pysd/topk_teacher.h"
#include "simd.h"

namespace pysd {
namespace topk_teacher {
namespace {

constexpr int64_t kBlock = 256;

template <typename In, typename A>
PYSD_INLINE void row(const Config& c, const Args<In, A>& a, int64_t i, A* hv, int64_t* hi) {
  const In* __restrict x = a.logits + i * a.stride;
  const int64_t n = c.cols, k = c.k;
  const A inv_t = A(1) / A(c.temperature);
  for (int64_t j = 0; j < k; ++j) { hv[j] = A(to_float(x[j])); hi[j] = j; }
  heapify(hv, hi, k);
  A m = neg_inf<A>(), sum = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t j1 = std::min(n, j0 + kBlock);
    A bm = neg_inf<A>();
#pragma omp simd reduction(max : bm)
    for (int64_t j = j0; j < j1; ++j) bm = std::max(bm, A(to_float(x[j])));
    if (bm > hv[0]) {
      for (int64_t j = std::max(j0, k); j < j1; ++j) offer(hv, hi, k, A(to_float(x[j])), j);
    }
    if (bm > m) {
      if (m != neg_inf<A>()) sum *= fexp((m - bm) * inv_t);
      m = bm;
    }
    if (m == neg_inf<A>()) continue;
    A bs = 0;
#pragma omp simd reduction(+ : bs)
    for (int64_t j = j0; j < j1; ++j) bs += fexp_le0((A(to_float(x[j])) - m) * inv_t);
    sum += bs;
  }
  drain(hv, hi, k);
  const A log_sum = flog(sum);
  for (int64_t j = 0; j < k; ++j) {
    a.indices[i * k + j] = hi[j];
    a.values[i * k + j] = value(c.format, hv[j], m, inv_t, log_sum);
  }
}

template <typename In, typename A>
PYSD_INLINE void rows(const Config& c, const Args<In, A>& a, int64_t r0, int64_t r1) {
  std::vector<A> hv(std::max<int64_t>(c.k, 1));
  std::vector<int64_t> hi(hv.size());
  for (int64_t i = r0; i < r1; ++i) row(c, a, i, hv.data(), hi.data());
}

PYSD_ISA_CLONES void rows_f32(const Config& c, const Args<float, float>& a, int64_t r0, int64_t r1) { rows(c, a, r0, r1); }
PYSD_ISA_CLONES void rows_f64(const Config& c, const Args<double, double>& a, int64_t r0, int64_t r1) { rows(c, a, r0, r1); }
PYSD_ISA_CLONES void rows_bf16(const Config& c, const Args<bf16_t, float>& a, int64_t r0, int64_t r1) { rows(c, a, r0, r1); }
PYSD_ISA_CLONES void rows_f16(const Config& c, const Args<f16_t, float>& a, int64_t r0, int64_t r1) { rows(c, a, r0, r1); }

template <typename In, typename A, typename Fn>
void launch(const Config& c, const Args<In, A>& a, Fn fn) {
  if (c.rows == 0 || c.k == 0) return;
  const bool parallel = c.rows * c.cols >= (int64_t(1) << 15) && c.rows > 1;
#pragma omp parallel if (parallel)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (c.rows + nt - 1) / nt;
    const int64_t r0 = std::min(c.rows, t * chunk), r1 = std::min(c.rows, r0 + chunk);
    if (r0 < r1) fn(c, a, r0, r1);
  }
}

}  // namespace

void run_cpu(const Config& c, const Args<float, float>& a) { launch(c, a, rows_f32); }
void run_cpu(const Config& c, const Args<double, double>& a) { launch(c, a, rows_f64); }
void run_cpu(const Config& c, const Args<bf16_t, float>& a) { launch(c, a, rows_bf16); }
void run_cpu(const Config& c, const Args<f16_t, float>& a) { launch(c, a, rows_f16); }

}  // namespace topk_teacher
}  // namespace pysd
