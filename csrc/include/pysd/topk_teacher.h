// Per-row math of the offline teacher pass: the log-sum-exp of x / T and the
// k largest entries of x, in one sweep over the row.  Shared by the CPU and
// CUDA launchers.
//
// The top-k is a binary min-heap ordered "worst first": a smaller value is
// worse, and among equal values the larger index is worse.  Entries arrive in
// increasing index, so an entry only enters when it is strictly larger than
// the current worst, which is what makes ties go to the lower index.
#pragma once

#include "pysd/common.h"

namespace pysd {
namespace topk_teacher {

enum Format : int { kLogits = 0, kProbs = 1, kLogProbs = 2 };  // same codes as kd_loss::TeacherFormat

struct Config {
  int64_t rows = 0, cols = 0, k = 0;
  double temperature = 1.0;
  int format = kLogProbs;
};

template <typename In, typename A>
struct Args {
  const In* logits = nullptr; int64_t stride = 0;
  int64_t* indices = nullptr;  // (rows, k), sorted by value descending, ties by lower index
  A* values = nullptr;         // (rows, k) in `format` at temperature T
};

// a is worse than b.
template <typename A>
PYSD_HD bool worse(A va, int64_t ia, A vb, int64_t ib) { return va < vb || (va == vb && ia > ib); }

template <typename A>
PYSD_HD void sift_down(A* hv, int64_t* hi, int64_t k, int64_t r) {
  for (;;) {
    int64_t w = r;
    const int64_t l = 2 * r + 1, rr = l + 1;
    if (l < k && worse(hv[l], hi[l], hv[w], hi[w])) w = l;
    if (rr < k && worse(hv[rr], hi[rr], hv[w], hi[w])) w = rr;
    if (w == r) return;
    const A tv = hv[r]; hv[r] = hv[w]; hv[w] = tv;
    const int64_t ti = hi[r]; hi[r] = hi[w]; hi[w] = ti;
    r = w;
  }
}

// Offers entry (v, j) to a full heap of size k.
template <typename A>
PYSD_HD void offer(A* hv, int64_t* hi, int64_t k, A v, int64_t j) {
  if (v > hv[0]) {
    hv[0] = v;
    hi[0] = j;
    sift_down(hv, hi, k, 0);
  }
}

template <typename A>
PYSD_HD void heapify(A* hv, int64_t* hi, int64_t k) {
  for (int64_t r = k / 2 - 1; r >= 0; --r) sift_down(hv, hi, k, r);
}

// Heap -> output order (best first) by repeated extraction of the worst.
template <typename A>
PYSD_HD void drain(A* hv, int64_t* hi, int64_t k) {
  for (int64_t n = k; n > 1; --n) {
    const A tv = hv[0]; hv[0] = hv[n - 1]; hv[n - 1] = tv;
    const int64_t ti = hi[0]; hi[0] = hi[n - 1]; hi[n - 1] = ti;
    sift_down(hv, hi, n - 1, 0);
  }
}

// Stored value of a top-k logit x given the row max m and the row's sum of exp((x - m)/T).
template <typename A>
PYSD_HD A value(int format, A x, A m, A inv_t, A log_sum) {
  const A z = (x - m) * inv_t;
  if (format == kLogits) return x * inv_t;
  if (format == kProbs) return fexp(z - log_sum);
  return z - log_sum;
}

// Row i's output from its heap, the row max m and sum of exp((x - m)/T).
template <typename In, typename A>
PYSD_HD void write_row(const Config& c, const Args<In, A>& a, int64_t i, A* hv, int64_t* hi, A m, A inv_t, A sum) {
  const int64_t k = c.k;
  drain(hv, hi, k);
  const A log_sum = flog(sum);
  for (int64_t j = 0; j < k; ++j) {
    a.indices[i * k + j] = hi[j];
    a.values[i * k + j] = value(c.format, hv[j], m, inv_t, log_sum);
  }
}

// Launchers: csrc/cpu/topk_teacher.cpp (OpenMP over rows) and csrc/cuda/topk_teacher.cu
// (enqueued on `stream`, a cudaStream_t as an integer; CUDA errors throw std::runtime_error).
void run_cpu(const Config& c, const Args<float, float>& a);
void run_cpu(const Config& c, const Args<double, double>& a);
void run_cpu(const Config& c, const Args<bf16_t, float>& a);
void run_cpu(const Config& c, const Args<f16_t, float>& a);
void run_cuda(const Config& c, const Args<float, float>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<double, double>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<bf16_t, float>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<f16_t, float>& a, uintptr_t stream);

}  // namespace topk_teacher
}  // namespace pysd
