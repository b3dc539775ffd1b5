// CPU launcher of the streaming top-k merge (pysd/knn_graph.h).  One call
// consumes one tile of G = X X^T: the row pass feeds rows i0..i1 (threads own
// rows), the column pass feeds rows j >= col_from with the transposed tile
// (threads own column blocks).  The two passes write disjoint lists, so they
// run without a barrier between them.  Both test a chunk of candidates
// against the current threshold with one vector loop and fall back to the
// scalar insert only for chunks that hold a hit, which become rare once the
// lists fill: the tile is read about twice, at memory speed.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "pysd/knn_graph.h"
#include "simd.h"

namespace pysd {
namespace knn_graph {
namespace {

constexpr int64_t kChunk = 64;      // candidates per vector threshold test
constexpr int64_t kColBlock = 512;  // columns per task of the column pass (thresholds stay in L1)

template <bool L2, typename A>
PYSD_INLINE void row_pass(const Tile<A>& t, const Lists<A>& l, int64_t r) {
  const int64_t i = t.i0 + r, n = t.j1 - t.j0, k = l.k;
  const A* __restrict d = t.dots + r * t.ld;
  const A* __restrict nj = L2 ? t.sqnorm + t.j0 : nullptr;
  const A ni = L2 ? t.sqnorm[i] : A(0);
  A* sims = l.sims + i * k;
  int32_t* idx = l.idx + i * k;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk);
    const A thr = sims[k - 1];
    int hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t c = c0; c < c1; ++c) hits += similarity<L2>(d[c], ni, L2 ? nj[c] : A(0)) >= thr;
    if (!hits) continue;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j = t.j0 + c;
      if (t.exclude_self && j == i) continue;
      insert(sims, idx, k, similarity<L2>(d[c], ni, L2 ? nj[c] : A(0)), int32_t(j));
    }
  }
}

// Tile-local columns [cb0, cb1); `thr` caches their thresholds contiguously.
template <bool L2, typename A>
PYSD_INLINE void col_pass(const Tile<A>& t, const Lists<A>& l, int64_t cb0, int64_t cb1, A* __restrict thr) {
  const int64_t k = l.k, rows = t.i1 - t.i0;
  const A* __restrict nj = L2 ? t.sqnorm + t.j0 : nullptr;
  for (int64_t c = cb0; c < cb1; ++c) thr[c - cb0] = l.sims[(t.j0 + c) * k + k - 1];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = t.i0 + r;
    const A* __restrict d = t.dots + r * t.ld;
    const A ni = L2 ? t.sqnorm[i] : A(0);
    for (int64_t c0 = cb0; c0 < cb1; c0 += kChunk) {
      const int64_t c1 = std::min(cb1, c0 + kChunk);
      int hits = 0;
#pragma omp simd reduction(+ : hits)
      for (int64_t c = c0; c < c1; ++c) hits += similarity<L2>(d[c], ni, L2 ? nj[c] : A(0)) >= thr[c - cb0];
      if (!hits) continue;
      for (int64_t c = c0; c < c1; ++c) {
        A* sims = l.sims + (t.j0 + c) * k;
        if (insert(sims, l.idx + (t.j0 + c) * k, k, similarity<L2>(d[c], ni, L2 ? nj[c] : A(0)), int32_t(i))) {
          thr[c - cb0] = sims[k - 1];
        }
      }
    }
  }
}

template <typename A>
PYSD_INLINE void rows(const Tile<A>& t, const Lists<A>& l, int64_t r0, int64_t r1) {
  if (t.sqnorm) {
    for (int64_t r = r0; r < r1; ++r) row_pass<true>(t, l, r);
  } else {
    for (int64_t r = r0; r < r1; ++r) row_pass<false>(t, l, r);
  }
}

template <typename A>
PYSD_INLINE void cols(const Tile<A>& t, const Lists<A>& l, int64_t c0, int64_t c1, A* thr) {
  if (t.sqnorm) col_pass<true>(t, l, c0, c1, thr); else col_pass<false>(t, l, c0, c1, thr);
}

PYSD_ISA_CLONES void rows_f32(const Tile<float>& t, const Lists<float>& l, int64_t r0, int64_t r1) {
  rows(t, l, r0, r1);
}
PYSD_ISA_CLONES void rows_f64(const Tile<double>& t, const Lists<double>& l, int64_t r0, int64_t r1) {
  rows(t, l, r0, r1);
}
PYSD_ISA_CLONES void cols_f32(const Tile<float>& t, const Lists<float>& l, int64_t c0, int64_t c1, float* thr) {
  cols(t, l, c0, c1, thr);
}
PYSD_ISA_CLONES void cols_f64(const Tile<double>& t, const Lists<double>& l, int64_t c0, int64_t c1,
                              double* thr) {
  cols(t, l, c0, c1, thr);
}

template <typename A, typename Rows, typename Cols>
void launch(const Tile<A>& t, const Lists<A>& l, Rows row_fn, Cols col_fn) {
  constexpr int64_t kRowTask = 16;
  const int64_t nrows = t.i1 - t.i0, ncols = t.j1 - t.j0;
  const int64_t from = std::clamp<int64_t>(t.col_from - t.j0, 0, ncols);
  const int64_t row_tasks = (nrows + kRowTask - 1) / kRowTask;
  const int64_t col_tasks = (ncols - from + kColBlock - 1) / kColBlock;
  const bool parallel = nrows * ncols >= (int64_t(1) << 15);
#pragma omp parallel if (parallel)
  {
    std::vector<A> thr(kColBlock);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t b = 0; b < row_tasks; ++b) {
      row_fn(t, l, b * kRowTask, std::min(nrows, (b + 1) * kRowTask));
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < col_tasks; ++b) {
      const int64_t c0 = from + b * kColBlock;
      col_fn(t, l, c0, std::min(ncols, c0 + kColBlock), thr.data());
    }
  }
}

}  // namespace

void merge_cpu(const Tile<float>& t, const Lists<float>& l) { launch(t, l, rows_f32, cols_f32); }
void merge_cpu(const Tile<double>& t, const Lists<double>& l) { launch(t, l, rows_f64, cols_f64); }

}  // namespace knn_graph
}  // namespace pysd
