// Block-wide reductions shared by the one-block-per-row CUDA kernels (CUB).
#pragma once

#include <cub/block/block_reduce.cuh>

namespace pysd {
namespace cuda {

constexpr int kRowThreads = 256;  // threads of a one-block-per-row kernel

template <typename A>
using RowReduce = cub::BlockReduce<A, kRowThreads>;

template <typename A>
struct MaxOp {
  __device__ A operator()(A a, A b) const { return a > b ? a : b; }
};

template <typename A>
struct SumOp {
  __device__ A operator()(A a, A b) const { return a + b; }
};

// Block-wide reduction broadcast to every thread.
template <typename A, typename Op>
__device__ A block_all(A v, Op op, typename RowReduce<A>::TempStorage& tmp, A& shared) {
  const A total = RowReduce<A>(tmp).Reduce(v, op);
  if (threadIdx.x == 0) shared = total;
  __syncthreads();
  const A out = shared;
  __syncthreads();
  return out;
}

template <typename A>
__device__ A block_max(A v, typename RowReduce<A>::TempStorage& tmp, A& shared) {
  return block_all(v, MaxOp<A>(), tmp, shared);
}

template <typename A>
__device__ A block_sum(A v, typename RowReduce<A>::TempStorage& tmp, A& shared) {
  return block_all(v, SumOp<A>(), tmp, shared);
}

}  // namespace cuda
}  // namespace pysd
