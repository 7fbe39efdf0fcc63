// The paper's robust PCA (src/micromotion/rpca.rs) with every W+ layer in each launch, in float64: the grid's y
// axis is the layer, x covers the layer's rows x cols elements. One iteration is
//   rpca_svd_input -> SVD of w (cuSOLVER; the CPU's in the emulation) -> rpca_projector -> rpca_update -> rpca_finish.
// A layer whose `active` flag is 0 has converged or hit max_iter: every kernel leaves it untouched, as the CPU loop
// stops per layer. Element-wise arithmetic follows the CPU loop's order; the residual sum is reduced in a fixed
// order (per-thread strided sums, a warp-shuffle tree, then the warps' sums in index order, then the blocks' sums
// in index order), so the result does not depend on scheduling.
#include "common.cuh"

// Blocks of rpca_update (and rpca_svd_input) have this many threads; block_sum assumes it.
constexpr int RPCA_THREADS = 256;

// Strided loop over element i in [0, n) of the block's layer (blockIdx.y).
#define LAYER_STRIDE_LOOP(i, n)                                                              \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
       i += (long long)blockDim.x * gridDim.x)

// sign(x) * max(|x| - t, 0), with the sign of x kept on a zero result like the CPU's signum() product.
__device__ __forceinline__ double shrink(double x, double t) { return copysign(fmax(fabs(x) - t, 0.0), x); }

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of `v` over a block of RPCA_THREADS threads; the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[RPCA_THREADS / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_sum(lane < RPCA_THREADS / 32 ? warp_sums[lane] : 0.0);
  return v;
}

KERNEL_BOUNDED(rpca_svd_input, RpcaSvdInputParams, RPCA_THREADS) {
  const int layer = blockIdx.y;
  if (!p.active[layer]) return;
  const double mu_inv = p.mu_inv[layer];
  const long long base = layer * p.layer_size;
  LAYER_STRIDE_LOOP(i, p.layer_size) {
    const long long e = base + i;
    p.w[e] = p.m[e] - p.sparse[e] + mu_inv * p.y[e];
  }
}

// Singular value thresholding as a projection: with w = U diag(s) V^T, U diag(shrink(s, t)) V^T equals
// U diag(shrink(s, t) / s) U^T w, and the rows x rows factor is all the update needs (V is never formed).
// Components with s <= t contribute nothing, so no small s is ever divided by (t = 1/mu > 0).
KERNEL_BOUNDED(rpca_projector, RpcaProjectorParams, RPCA_THREADS) {
  const int layer = blockIdx.y;
  if (!p.active[layer]) return;
  const int k = p.rows, r = p.components;
  const double t = p.mu_inv[layer];
  const double* s = p.singular_values + (long long)layer * r;
  const double* u = p.left_vectors + (long long)layer * r * k;
  LAYER_STRIDE_LOOP(idx, (long long)k * k) {
    const int a = int(idx / k), b = int(idx % k);
    double acc = 0.0;
    for (int i = 0; i < r; ++i) {
      const double shrunk = fmax(s[i] - t, 0.0);
      if (shrunk > 0.0) acc += u[(long long)i * k + a] * (shrunk / s[i]) * u[(long long)i * k + b];
    }
    p.projector[(long long)layer * k * k + idx] = acc;
  }
}

KERNEL_BOUNDED(rpca_update, RpcaUpdateParams, RPCA_THREADS) {
  const int layer = blockIdx.y;
  if (!p.active[layer]) return;  // uniform over the block, so block_sum's barrier is safe
  const int k = p.rows, n = p.cols;
  const long long size = (long long)k * n, base = layer * size;
  const double* projector = p.projector + (long long)layer * k * k;
  const double mu = p.mu[layer], mu_inv = p.mu_inv[layer], threshold = p.sparse_threshold[layer];
  double residual2 = 0.0;
  LAYER_STRIDE_LOOP(i, size) {
    const int a = int(i / n), j = int(i % n);
    const double* row = projector + (long long)a * k;
    const double* column = p.w + base + j;
    double low = 0.0;
    for (int b = 0; b < k; ++b) low += row[b] * column[(long long)b * n];
    const long long e = base + i;
    const double m = p.m[e], y = p.y[e];
    const double sparse = shrink(m - low + mu_inv * y, threshold);
    const double residual = m - low - sparse;
    p.low_rank[e] = low;
    p.sparse[e] = sparse;
    p.y[e] = y + mu * residual;
    residual2 += residual * residual;
  }
  residual2 = block_sum(residual2);
  if (threadIdx.x == 0) p.partial[(long long)layer * gridDim.x + blockIdx.x] = residual2;
}

// One warp per layer (blockIdx.x).
KERNEL_BOUNDED(rpca_finish, RpcaFinishParams, 32) {
  const int layer = blockIdx.x;
  if (!p.active[layer]) return;
  double residual2 = 0.0;
  for (int b = threadIdx.x; b < p.blocks_per_layer; b += 32)
    residual2 += p.partial[(long long)layer * p.blocks_per_layer + b];
  residual2 = warp_sum(residual2);
  // Every lane has read p.active[layer] above; a shuffle orders no memory accesses, so the barrier is what keeps
  // lane 0's write below from racing those reads.
  __syncwarp();
  if (threadIdx.x == 0) {
    const double err = residual2 / p.norm2[layer];
    const int iterations = p.iterations[layer] + 1;
    p.err[layer] = err;
    p.iterations[layer] = iterations;
    p.active[layer] = err > p.tol[layer] && iterations < p.max_iter;
  }
}
