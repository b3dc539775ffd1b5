// CUDA launcher of the streaming top-k merge (pysd/knn_graph.h): one warp per
// row of the tile.  The lanes read 32 consecutive candidates (coalesced), a
// warp ballot finds those that beat the row's threshold, and lane 0 inserts
// them one by one in lane order; the threshold is re-read after each insert.
//
// Only the row pass exists on the GPU: the driver runs full (non-symmetric)
// tiles there, because the transposed pass would read the tile down its
// columns (one 32-byte sector per lane) while the GEMM it saves is cheap.
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "pysd/knn_graph.h"

namespace pysd {
namespace knn_graph {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

template <bool L2, typename A>
__global__ void __launch_bounds__(kThreads) row_merge_kernel(Tile<A> t, Lists<A> l) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / kWarp;
  if (r >= t.i1 - t.i0) return;  // whole warps only: r is uniform across a warp
  const int64_t i = t.i0 + r, n = t.j1 - t.j0, k = l.k;
  const A* d = t.dots + r * t.ld;
  const A ni = L2 ? t.sqnorm[i] : A(0);
  A* sims = l.sims + i * k;
  int32_t* idx = l.idx + i * k;
  A thr = sims[k - 1];
  int32_t thr_j = idx[k - 1];
  for (int64_t c0 = 0; c0 < n; c0 += kWarp) {
    const int64_t c = c0 + lane;
    const int32_t j = int32_t(t.j0 + c);
    const bool valid = c < n && !(t.exclude_self && j == i);
    const A s = valid ? similarity<L2>(d[c], ni, L2 ? t.sqnorm[j] : A(0)) : A(0);
    unsigned hits = __ballot_sync(kFull, valid && better(s, j, thr, thr_j));
    while (hits) {
      const int src = __ffs(hits) - 1;
      hits &= hits - 1;
      const A cs = __shfl_sync(kFull, s, src);
      const int32_t cj = __shfl_sync(kFull, j, src);
      if (lane == 0) insert(sims, idx, k, cs, cj);
      __syncwarp();
      thr = sims[k - 1];
      thr_j = idx[k - 1];
      __syncwarp();
    }
  }
}

template <typename A>
void launch(const Tile<A>& t, const Lists<A>& l, uintptr_t stream) {
  const int64_t rows = t.i1 - t.i0;
  if (rows <= 0 || t.j1 <= t.j0) return;
  const int64_t blocks = (rows * kWarp + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffLL) throw std::runtime_error("pysd CUDA knn_graph: tile too tall for one grid");
  auto st = reinterpret_cast<cudaStream_t>(stream);
  if (t.sqnorm) {
    row_merge_kernel<true><<<unsigned(blocks), kThreads, 0, st>>>(t, l);
  } else {
    row_merge_kernel<false><<<unsigned(blocks), kThreads, 0, st>>>(t, l);
  }
  cuda::check(cudaGetLastError(), "knn_graph launch");
}

}  // namespace

void merge_cuda(const Tile<float>& t, const Lists<float>& l, uintptr_t s) { launch(t, l, s); }
void merge_cuda(const Tile<double>& t, const Lists<double>& l, uintptr_t s) { launch(t, l, s); }

}  // namespace knn_graph
}  // namespace pysd
