// CPU launcher of pysd/knn_graph.h: the fused search (search_cpu), what
// pysd.knn_graph and the CPU ring of pysd.distributed.knn_graph run.
//
// A register tile holds kMR rows x NR columns of dot products (12 vector
// accumulators, 15 of AVX2's 16 registers with the two column vectors and the
// broadcast).  The rows are read straight from X (broadcasts); the columns come
// from X^T packed once into panels of NR columns, [d][NR], so that each step of
// the d loop is two vector loads.  A block of rows (its rows of X in L2) meets a
// block of columns, and each finished tile is compared with its rows' and its
// columns' thresholds before the next one starts: the (rare) hits go through
// the scalar insert, the rest never leave the registers.
//
// Threads: a pair of blocks (I, J) writes the lists of I and of J, so pairs run
// in the rounds of a round-robin tournament (the circle method), in which no
// block meets two others; a round's pairs share nothing and need no locks.
// Diagonal pairs (I, I) run first, one per thread.  A cross search writes the
// rows' lists only, so a thread owns each block of rows and meets every block
// of columns.  Results do not depend on the schedule, because the insert keeps
// a total order (knn_graph.h).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <type_traits>

#include "pysd/knn_graph.h"
#include "simd.h"

namespace pysd {
namespace knn_graph {
namespace {

constexpr int kMR = 6;

// The 32-byte vector helpers below are always inlined into the ISA clones; GCC
// still notes that the baseline clone would pass them differently.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename A>
struct Simd {
  typedef A V __attribute__((vector_size(32)));
  typedef std::conditional_t<sizeof(A) == 4, int32_t, int64_t> I;
  typedef I M __attribute__((vector_size(32)));
  static constexpr int W = 32 / int(sizeof(A));
  static constexpr int NR = 2 * W;  // columns per register tile
};

template <typename V, typename A>
PYSD_INLINE V load(const A* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename M>
PYSD_INLINE bool any(const M& m) {
  uint64_t u[sizeof(M) / 8];
  __builtin_memcpy(u, &m, sizeof(M));
  uint64_t r = 0;
  for (uint64_t w : u) r |= w;
  return r != 0;
}

template <typename A>
struct Search {
  const Features<A>& f;
  const Lists<A>& l;
  const A* panels;  // the columns (x, or y when cross) in panels of NR, [d][NR] each, zero past m
  const A* norms;   // l2: the columns' squared norms padded with +inf (padding never qualifies), else null
  const A* zeros;   // (d,) row standing in for rows past n

  bool cross() const { return f.y != nullptr; }  // y's rows are the columns: offer to x's rows only
  int64_t m() const { return cross() ? f.m : f.n; }  // columns
};

// Offers the pairs of one register tile (rows i0.., columns j0..) that passed
// the vector test to both lists (cross: to the rows' lists only).  sim: the
// tile's similarities (kMR x NR, row-major); hits[r]: bit c set when pair (r, c)
// passed, against thresholds that can only have risen since, so the pairs not
// set could not enter any list.  thr_r / thr_c: thresholds of the tile's rows /
// columns, updated on insert.
template <typename A>
void offer(const Search<A>& s, const A* sim, const uint32_t* hits, int64_t i0, int64_t j0, A* thr_r, A* thr_c,
           bool diag) {
  constexpr int NR = Simd<A>::NR;
  const int64_t n = s.f.n, k = s.l.k;
  for (int r = 0; r < kMR && i0 + r < n; ++r) {
    const int64_t i = i0 + r;
    for (uint32_t bits = hits[r]; bits != 0; bits &= bits - 1) {
      const int c = __builtin_ctz(bits);
      const int64_t j = j0 + c;
      if (j >= s.m()) break;
      if (s.cross()) {
        const int64_t id = s.f.y_id0 + j;
        if (s.f.exclude_self && id == s.f.x_id0 + i) continue;
        const A v = sim[r * NR + c];
        if (v >= thr_r[r] && insert(s.l.sims + i * k, s.l.idx + i * k, k, v, int32_t(id))) {
          thr_r[r] = s.l.sims[i * k + k - 1];
        }
        continue;
      }
      if (diag && j <= i) {  // each pair once, from its upper triangle; self only to its own row
        if (j == i && !s.f.exclude_self) {
          if (insert(s.l.sims + i * k, s.l.idx + i * k, k, sim[r * NR + c], int32_t(s.f.x_id0 + i))) {
            thr_r[r] = s.l.sims[i * k + k - 1];
          }
        }
        continue;
      }
      const A v = sim[r * NR + c];
      if (v >= thr_r[r] && insert(s.l.sims + i * k, s.l.idx + i * k, k, v, int32_t(s.f.x_id0 + j))) {
        thr_r[r] = s.l.sims[i * k + k - 1];
      }
      if (v >= thr_c[c] && insert(s.l.sims + j * k, s.l.idx + j * k, k, v, int32_t(s.f.x_id0 + i))) {
        thr_c[c] = s.l.sims[j * k + k - 1];
      }
    }
  }
}

#define PYSD_KNN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

// Lane l of the masks lo / hi (all ones or zero) as bit l / W + l of the result.
template <typename M>
PYSD_INLINE uint32_t lane_bits(const M& lo, const M& hi) {
  constexpr int W = int(sizeof(M) / sizeof(lo[0]));
  M weight_lo, weight_hi;
  for (int l = 0; l < W; ++l) weight_lo[l] = decltype(lo[0] + 0)(1) << l, weight_hi[l] = weight_lo[l] << W;
  const M v = (lo & weight_lo) | (hi & weight_hi);
  uint32_t bits = 0;
  for (int l = 0; l < W; ++l) bits |= uint32_t(v[l]);
  return bits;
}

// One register tile: rows i0 .. i0+kMR, the NR columns of panel `bp` from j0.
template <bool L2, typename A>
PYSD_INLINE void tile(const Search<A>& s, int64_t i0, int64_t j0, const A* __restrict bp, A* thr_r,
                      A* thr_c, bool diag) {
  using V = typename Simd<A>::V;
  using M = typename Simd<A>::M;
  constexpr int W = Simd<A>::W, NR = Simd<A>::NR;
  const int64_t n = s.f.n, d = s.f.d;
#define PYSD_KNN_INIT(r)                                                        \
  const A* __restrict a##r = i0 + r < n ? s.f.x + (i0 + r) * s.f.ld : s.zeros; \
  V c##r##0 = {}, c##r##1 = {};
  PYSD_KNN_ROWS(PYSD_KNN_INIT)
#undef PYSD_KNN_INIT
  for (int64_t q = 0; q < d; ++q) {
    const V b0 = load<V>(bp + q * NR), b1 = load<V>(bp + q * NR + W);
#define PYSD_KNN_FMA(r) \
  c##r##0 += a##r[q] * b0; \
  c##r##1 += a##r[q] * b1;
    PYSD_KNN_ROWS(PYSD_KNN_FMA)
#undef PYSD_KNN_FMA
  }
  const V t0 = load<V>(thr_c), t1 = load<V>(thr_c + W);
  M hit = {};
  V n0 = {}, n1 = {};
  if (L2) n0 = load<V>(s.norms + j0), n1 = load<V>(s.norms + j0 + W);
#define PYSD_KNN_TEST(r)                                                                  \
  if (L2) {                                                                               \
    const A ni = i0 + r < n ? s.f.sqnorm[i0 + r] : A(INFINITY);                           \
    c##r##0 = A(2) * c##r##0 - (ni + n0);                                                 \
    c##r##1 = A(2) * c##r##1 - (ni + n1);                                                 \
  }                                                                                       \
  hit |= (c##r##0 >= thr_r[r]) | (c##r##1 >= thr_r[r]) | (c##r##0 >= t0) | (c##r##1 >= t1);
  PYSD_KNN_ROWS(PYSD_KNN_TEST)
#undef PYSD_KNN_TEST
  if (!any(hit)) return;
  alignas(32) A sim[kMR * NR];
#define PYSD_KNN_STORE(r)                                 \
  __builtin_memcpy(sim + r * NR, &c##r##0, sizeof(V));    \
  __builtin_memcpy(sim + r * NR + W, &c##r##1, sizeof(V));
  PYSD_KNN_ROWS(PYSD_KNN_STORE)
#undef PYSD_KNN_STORE
  uint32_t hits[kMR];
#define PYSD_KNN_HITS(r)                                                                                   \
  hits[r] = lane_bits<M>((c##r##0 >= thr_r[r]) | (c##r##0 >= t0), (c##r##1 >= thr_r[r]) | (c##r##1 >= t1));
  PYSD_KNN_ROWS(PYSD_KNN_HITS)
#undef PYSD_KNN_HITS
  offer(s, sim, hits, i0, j0, thr_r, thr_c, diag);
}
#undef PYSD_KNN_ROWS

// Caches the thresholds of rows r0 .. r0 + len (+inf past n) in thr.
template <typename A>
void thresholds(const Search<A>& s, int64_t r0, int64_t len, A* thr) {
  const int64_t k = s.l.k;
  for (int64_t r = 0; r < len; ++r) thr[r] = r0 + r < s.f.n ? s.l.sims[(r0 + r) * k + k - 1] : A(INFINITY);
}

// Block rows I0 .. I0 + B meet block columns J0 .. J0 + B (I0 == J0: a diagonal pair).
template <bool L2, typename A>
PYSD_INLINE void pair(const Search<A>& s, int64_t I0, int64_t J0, int64_t B, A* thr_r, A* thr_c) {
  constexpr int NR = Simd<A>::NR;
  const bool diag = !s.cross() && I0 == J0;
  const int64_t I1 = std::min(s.f.n, I0 + B), J1 = std::min(s.m(), J0 + B);
  thresholds(s, I0, B, thr_r);
  if (s.cross()) {
    std::fill(thr_c, thr_c + B, A(INFINITY));  // the columns' lists live on other ranks
  } else if (diag) {
    thr_c = thr_r;
  } else {
    thresholds(s, J0, B, thr_c);
  }
  for (int64_t j0 = J0; j0 < J1; j0 += NR) {
    const A* bp = s.panels + (j0 / NR) * s.f.d * NR;
    for (int64_t i0 = I0; i0 < I1; i0 += kMR) {
      if (diag && j0 + NR - 1 < i0) continue;  // wholly below the diagonal
      tile<L2>(s, i0, j0, bp, thr_r + (i0 - I0), thr_c + (j0 - J0), diag);
    }
  }
}

template <typename A>
PYSD_INLINE void run_pair(const Search<A>& s, int64_t I0, int64_t J0, int64_t B, A* thr_r, A* thr_c) {
  if (s.norms) pair<true>(s, I0, J0, B, thr_r, thr_c); else pair<false>(s, I0, J0, B, thr_r, thr_c);
}
PYSD_ISA_CLONES void pair_f32(const Search<float>& s, int64_t I0, int64_t J0, int64_t B, float* tr, float* tc) {
  run_pair(s, I0, J0, B, tr, tc);
}
PYSD_ISA_CLONES void pair_f64(const Search<double>& s, int64_t I0, int64_t J0, int64_t B, double* tr,
                              double* tc) {
  run_pair(s, I0, J0, B, tr, tc);
}
void pair_any(const Search<float>& s, int64_t I0, int64_t J0, int64_t B, float* tr, float* tc) {
  pair_f32(s, I0, J0, B, tr, tc);
}
void pair_any(const Search<double>& s, int64_t I0, int64_t J0, int64_t B, double* tr, double* tc) {
  pair_f64(s, I0, J0, B, tr, tc);
}

// Rows per block: the cap, the rows of X that fit in L2 next to the panels, and
// enough blocks (4 per thread) that every round keeps every thread busy.
template <typename A>
int64_t block_rows(const Features<A>& f, int threads) {
  constexpr int64_t q = kBlockQuantum, kL2 = 192 << 10;
  auto up = [](int64_t v) { return (std::max<int64_t>(v, 1) + q - 1) / q * q; };
  const int64_t cache = std::max<int64_t>(q, kL2 / (f.d * int64_t(sizeof(A))) / q * q);
  const int64_t spread = up((f.n + 4 * threads - 1) / (4 * threads));
  return std::min({up(f.max_block), cache, spread});
}

template <typename A>
struct Aligned {  // 64-byte aligned, uninitialised array (the pack writes every entry, in parallel)
  explicit Aligned(int64_t count)
      : p(static_cast<A*>(::operator new[](sizeof(A) * std::max<int64_t>(count, 1), std::align_val_t(64)))) {}
  ~Aligned() { ::operator delete[](p, std::align_val_t(64)); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  A* p;
};

template <typename A>
void search(const Features<A>& f, const Lists<A>& l) {
  constexpr int NR = Simd<A>::NR;
  const bool cross = f.y != nullptr;
  const int64_t n = f.n, d = f.d, m = cross ? f.m : f.n;
  const A* cols = cross ? f.y : f.x;
  const int64_t ldc = cross ? f.ldy : f.ld;
  const A* col_sqnorm = cross ? f.y_sqnorm : f.sqnorm;
  if (n == 0 || m == 0) return;
  const int threads = omp_get_max_threads();
  const int64_t B = block_rows(f, threads), blocks = (n + B - 1) / B, col_blocks = (m + B - 1) / B;
  const int64_t padded = (m + NR - 1) / NR * NR;
  Aligned<A> panels(padded * d), zeros(d), norms(col_sqnorm ? padded : 0);
  std::fill(zeros.p, zeros.p + d, A(0));
  const Search<A> s{f, l, panels.p, col_sqnorm ? norms.p : nullptr, zeros.p};
  // self-join, the circle method: `players` (blocks, plus a bye when odd) meet in players - 1 rounds
  const int64_t players = blocks + (blocks & 1), per_round = players / 2;
#pragma omp parallel if (double(n) * double(m) * double(d) >= 4e6)  // n * m * d overflows int64 at large n
  {
    Aligned<A> thr(2 * B);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < padded; ++j) {
      A* p = panels.p + (j / NR) * d * NR + j % NR;
      const A* x = cols + j * ldc;
      for (int64_t q = 0; q < d; ++q) p[q * NR] = j < m ? x[q] : A(0);
      if (col_sqnorm) norms.p[j] = j < m ? col_sqnorm[j] : A(INFINITY);
    }
    if (cross) {  // a thread owns each block of rows: no two threads write one list
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t c = 0; c < col_blocks; ++c) pair_any(s, b * B, c * B, B, thr.p, thr.p + B);
      }
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < blocks; ++b) pair_any(s, b * B, b * B, B, thr.p, thr.p + B);
      for (int64_t round = 0; round + 1 < players; ++round) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < per_round; ++p) {
          const int64_t a = p == 0 ? players - 1 : (round + p) % (players - 1);
          const int64_t b = p == 0 ? round : (round - p + players - 1) % (players - 1);
          if (a < blocks && b < blocks) pair_any(s, std::min(a, b) * B, std::max(a, b) * B, B, thr.p, thr.p + B);
        }
      }
    }
  }
}

}  // namespace

void search_cpu(const Features<float>& f, const Lists<float>& l) { search(f, l); }
void search_cpu(const Features<double>& f, const Lists<double>& l) { search(f, l); }

}  // namespace knn_graph
}  // namespace pysd
