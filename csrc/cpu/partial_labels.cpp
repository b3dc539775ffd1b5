// CPU launcher of the partial-label refinement: OpenMP over rows, each row
// selected by one pass with a sorted list (k <= kListMax, from the top) or by
// the streaming passes of pysd/partial_labels.h.
#include <omp.h>

#include <algorithm>

#include "pysd/partial_labels.h"
#include "simd.h"

namespace pysd {
namespace partial_labels {
namespace {

constexpr int64_t kListMax = 16;  // k up to this: one pass with a sorted list instead of k passes
constexpr int64_t kChunk = 64;    // candidates per vector threshold test

// The key of rank k-1 (k <= kListMax) in one pass over the row: the best k so far are kept
// sorted in ranking order.  Candidates arrive in index order, so a later one with an equal
// value ranks after every key in the list: only `v > last` enters.  Once the list is full a
// chunk is first tested against its last value with one vector loop; chunks with no hit,
// nearly all of them after the first few, cost no scalar work.
template <typename In, typename A = acc_t<In>>
PYSD_INLINE Key<A> rank_key(const In* __restrict p, int64_t n, int64_t k) {
  A val[kListMax];
  int64_t idx[kListMax];
  int64_t size = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk);
    if (size == k) {
      const A thr = val[k - 1];
      int hits = 0;
#pragma omp simd reduction(+ : hits)
      for (int64_t j = c0; j < c1; ++j) hits += A(to_float(p[j])) > thr;
      if (!hits) continue;
    }
    for (int64_t j = c0; j < c1; ++j) {
      const A v = A(to_float(p[j]));
      if (size == k && !(v > val[k - 1])) continue;
      int64_t q = size < k ? size++ : k - 1;
      for (; q > 0 && v > val[q - 1]; --q) {
        val[q] = val[q - 1];
        idx[q] = idx[q - 1];
      }
      val[q] = v;
      idx[q] = j;
    }
  }
  return Key<A>{val[k - 1], idx[k - 1]};
}

template <typename In>
PYSD_INLINE void row(const Config& c, const Args<In>& a, int64_t i) {
  using A = acc_t<In>;
  const int64_t n = c.cols;
  const In* __restrict p = a.probs + i * a.probs_stride;
  In* __restrict o = a.out + i * a.out_stride;
  const bool top = from_top(n, c.k);
  Key<A> last = no_key<A>();
  if (top && c.k <= kListMax) {
    last = rank_key(p, n, c.k);
  } else {
    for (int64_t pass = 0, m = passes(n, c.k); pass < m; ++pass) {
      Key<A> best = no_key<A>();
      for (int64_t j = 0; j < n; ++j) offer(top, last, Key<A>{A(to_float(p[j])), j}, best);
      last = best;
    }
  }
  A mass = 0;
  if (c.renormalize) {
    for (int64_t j = 0; j < n; ++j) {
      const Key<A> e{A(to_float(p[j])), j};
      if (selected(top, last, e)) mass += e.value;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const Key<A> e{A(to_float(p[j])), j};
    o[j] = from_acc<In>(selected(top, last, e) ? out_value(c, e.value, mass) : A(0));
  }
}

template <typename In>
void launch(const Config& c, const Args<In>& a) {
  if (c.rows == 0 || c.cols == 0) return;
  const int64_t work = c.rows * c.cols * std::min(c.k, c.cols - c.k + 1);
  const bool parallel = work >= (int64_t(1) << 15) && c.rows > 1;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < c.rows; ++i) row(c, a, i);
}

}  // namespace

void run_cpu(const Config& c, const Args<float>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<double>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<bf16_t>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<f16_t>& a) { launch(c, a); }

}  // namespace partial_labels
}  // namespace pysd
