// Streaming exact top-k of a self-join, shared by the CPU and CUDA launchers.
//
// On a GPU the caller computes tiles of G = X X^T with cuBLAS and a launcher
// merges each tile into per-row lists of the k best candidates; the CPU
// computes and filters the dot products itself (search_cpu).  A list is kept
// sorted best first, so its last entry is the admission threshold that the
// vector loops test against before the (rare) scalar insert.
//
// Order: higher similarity first, lower column index on equal similarity.
// Because this is a total order, the final lists do not depend on the order
// in which tiles (or the two halves of a symmetric tile) arrive.
#pragma once

#include "pysd/common.h"

namespace pysd {
namespace knn_graph {

template <typename A>
PYSD_HD bool better(A s, int32_t j, A s_other, int32_t j_other) {
  return s > s_other || (s == s_other && j < j_other);
}

// Similarity of rows i and j from their dot product.  With squared norms
// (metric "l2") it is the negative squared distance; the norms are summed
// first so that sim(i, j) and sim(j, i) round identically.
template <bool L2, typename A>
PYSD_HD A similarity(A dot, A sqnorm_i, A sqnorm_j) {
  return L2 ? A(2) * dot - (sqnorm_i + sqnorm_j) : dot;
}

// Inserts (s, j) into the sorted list (sims, idx) of length k if it beats
// the worst entry; returns whether it did.
template <typename A>
PYSD_HD bool insert(A* sims, int32_t* idx, int64_t k, A s, int32_t j) {
  if (!better(s, j, sims[k - 1], idx[k - 1])) return false;
  int64_t p = k - 1;
  while (p > 0 && better(s, j, sims[p - 1], idx[p - 1])) {
    sims[p] = sims[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  sims[p] = s;
  idx[p] = j;
  return true;
}

// One tile of dot products and where it sits in G.
template <typename A>
struct Tile {
  const A* dots = nullptr;   // (i1 - i0, j1 - j0), row stride ld
  int64_t ld = 0;
  int64_t i0 = 0, i1 = 0;    // global rows
  int64_t j0 = 0, j1 = 0;    // global columns
  const A* sqnorm = nullptr; // (N,) squared norms for l2, else null
  bool exclude_self = true;
};

// The running (N, k) lists, best first.  The caller fills empty slots with
// (-inf, INT32_MAX), worse than every finite candidate (pysd/_codes.py NO_INDEX).
template <typename A>
struct Lists {
  A* sims = nullptr;
  int32_t* idx = nullptr;
  int64_t k = 0;
};

// A whole search on the CPU (csrc/cpu/knn_graph.cpp, search_cpu): a
// register-tiled kernel computes dot products in blocks of rows and tests each
// small tile of them against its rows' (and columns') thresholds while it is
// still in registers, so no tile is ever stored.
//   Self-join (y == null): the lists of x's rows against x's rows; every pair
//   i < j is computed once and offered to both lists.
//   Cross (y != null): the lists of x's rows against y's rows (a shard of the
//   columns), offered to x's rows only.
// Ids in the lists are global: x_id0 + i for row i of x, y_id0 + j for row j
// of y; "self" is an equal global id.
template <typename A>
struct Features {
  const A* x = nullptr;         // (n, d), row stride ld
  int64_t n = 0, d = 0, ld = 0;
  const A* sqnorm = nullptr;    // (n,) squared norms for l2, else null
  const A* y = nullptr;         // cross: (m, d), row stride ldy
  int64_t m = 0, ldy = 0;
  const A* y_sqnorm = nullptr;  // cross with l2: (m,) squared norms
  int64_t x_id0 = 0, y_id0 = 0;
  bool exclude_self = true;
  int64_t max_block = 0;        // caps the rows per block (rounded up to kBlockQuantum)
};
constexpr int64_t kBlockQuantum = 48;  // a multiple of every register tile's rows and columns

// Launchers.  merge_cuda: feed one tile of X X^T to its rows' top-k lists.
// search_cpu: the whole search of f (self-join or cross) into the lists.
void search_cpu(const Features<float>& f, const Lists<float>& l);
void search_cpu(const Features<double>& f, const Lists<double>& l);
void merge_cuda(const Tile<float>& t, const Lists<float>& l, uintptr_t stream);
void merge_cuda(const Tile<double>& t, const Lists<double>& l, uintptr_t stream);

}  // namespace knn_graph
}  // namespace pysd
