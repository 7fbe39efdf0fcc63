// The mapping network's kernels: a tiled fully connected layer with the bias/activation epilogue (and
// normalize_2nd_moment as an optional prologue), and the broadcast to num_ws with truncation. Twin:
// cpu::mapping (NVlabs MappingNetwork / FullyConnectedLayer, rosinality PixelNorm + EqualLinear).
//
// The products are small (batch x 512 x 512 for FFHQ), so a plain fp32 tile GEMM is enough: a block computes a
// 32-sample x 64-output tile, staging 32-wide k slices of x and of the gained weights in shared memory; each of
// its 256 threads accumulates 2 samples x 4 outputs in registers.
#include "common.cuh"

namespace {
constexpr int kFcThreads = 256;
constexpr int kFcTileBatch = 32;
constexpr int kFcTileOut = 64;
constexpr int kFcTileK = 32;
constexpr int kFcWarps = kFcThreads / 32;
// Thread (tx, ty) owns outputs tx + 16 j and samples ty + 16 i.
constexpr int kFcThreadsX = 16;
constexpr int kFcThreadsY = kFcThreads / kFcThreadsX;
constexpr int kFcPerThreadOut = kFcTileOut / kFcThreadsX;
constexpr int kFcPerThreadBatch = kFcTileBatch / kFcThreadsY;
}  // namespace

KERNEL_BOUNDED(fully_connected, FullyConnectedParams, 256) {
  // Stored [k][row] so the inner loop reads rows across threads; the +1 keeps the transposing stores (32 lanes
  // along k) on distinct banks.
  __shared__ float x_tile[kFcTileK][kFcTileBatch + 1];
  __shared__ float w_tile[kFcTileK][kFcTileOut + 1];
  __shared__ float row_scale[kFcTileBatch];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n0 = blockIdx.y * kFcTileBatch, o0 = blockIdx.x * kFcTileOut;
  const int in = p.in_features;

  // normalize_2nd_moment: one warp per sample row.
  for (int r = warp; r < kFcTileBatch; r += kFcWarps) {
    float scale = 1.0f;
    if (p.normalize_input) {
      const int n = n0 + r;
      float sum = 0.0f;
      if (n < p.batch) {
        for (int k = lane; k < in; k += 32) {
          const float v = p.x[(long long)n * in + k];
          sum = fmaf(v, v, sum);
        }
      }
      for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      scale = 1.0f / sqrtf(sum / (float)in + 1e-8f);
    }
    if (lane == 0) row_scale[r] = scale;
  }

  const int tx = tid % kFcThreadsX, ty = tid / kFcThreadsX;
  float acc[kFcPerThreadBatch][kFcPerThreadOut] = {};
  for (int k0 = 0; k0 < in; k0 += kFcTileK) {
    __syncthreads();  // the previous slice is consumed (and row_scale is written)
    const int k = k0 + lane;
    for (int r = warp; r < kFcTileBatch; r += kFcWarps) {
      const int n = n0 + r;
      x_tile[lane][r] = (n < p.batch && k < in) ? p.x[(long long)n * in + k] * row_scale[r] : 0.0f;
    }
    for (int r = warp; r < kFcTileOut; r += kFcWarps) {
      const int o = o0 + r;
      w_tile[lane][r] = (o < p.out_features && k < in) ? p.w[(long long)o * in + k] * p.weight_gain : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kFcTileK; ++kk) {
      float a[kFcPerThreadBatch], b[kFcPerThreadOut];
#pragma unroll
      for (int i = 0; i < kFcPerThreadBatch; ++i) a[i] = x_tile[kk][ty + kFcThreadsY * i];
#pragma unroll
      for (int j = 0; j < kFcPerThreadOut; ++j) b[j] = w_tile[kk][tx + kFcThreadsX * j];
#pragma unroll
      for (int i = 0; i < kFcPerThreadBatch; ++i) {
#pragma unroll
        for (int j = 0; j < kFcPerThreadOut; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kFcPerThreadBatch; ++i) {
    const int n = n0 + ty + kFcThreadsY * i;
#pragma unroll
    for (int j = 0; j < kFcPerThreadOut; ++j) {
      const int o = o0 + tx + kFcThreadsX * j;
      if (n >= p.batch || o >= p.out_features) continue;
      float v = acc[i][j];
      if (p.bias) v += p.bias[o] * p.bias_gain;
      p.y[(long long)n * p.out_features + o] = activate(v, activation_slope(p.act, p.alpha), p.gain, clamp_bound(p.clamp));
    }
  }
}

KERNEL_BOUNDED(broadcast_truncate, BroadcastTruncateParams, 256) {
  GRID_STRIDE_LOOP(i, p.n) {
    const int d = (int)(i % p.w_dim);
    const long long row = i / p.w_dim;
    const int layer = (int)(row % p.num_ws);
    float v = p.w[row / p.num_ws * p.w_dim + d];
    if (layer < p.cutoff) {
      // torch.lerp(w_avg, w, psi): the formula switches at weight 0.5 for accuracy.
      const float avg = p.w_avg[d], diff = v - avg;
      v = p.psi < 0.5f ? avg + p.psi * diff : v - diff * (1.0f - p.psi);
    }
    p.ws[i] = v;
  }
}
