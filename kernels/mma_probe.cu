// Runs each wrapper of mma.cuh once on registers given lane by lane, so a test can check the instruction (on a
// GPU) and its host twin (in the emulation) against a reference built from the PTX ISA's fragment tables.
#include "common.cuh"
#include "mma.cuh"

template <void (*Mma)(float*, const unsigned*, const unsigned*, const float*)>
__device__ void mma_probe(const MmaProbeParams& p) {
  const unsigned lane = threadIdx.x;
  unsigned a[4], b[2];
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) a[i] = p.a[lane * 4 + i];
  for (int i = 0; i < 2; ++i) b[i] = p.b[lane * 2 + i];
  for (int i = 0; i < 4; ++i) c[i] = p.c[lane * 4 + i];
  Mma(d, a, b, c);
  for (int i = 0; i < 4; ++i) p.d[lane * 4 + i] = d[i];
}

KERNEL_BOUNDED(mma_probe_tf32, MmaProbeParams, 32) { mma_probe<mma_m16n8k8_tf32>(p); }
KERNEL_BOUNDED(mma_probe_f16, MmaProbeParams, 32) { mma_probe<mma_m16n8k16_f16>(p); }
KERNEL_BOUNDED(mma_probe_bf16, MmaProbeParams, 32) { mma_probe<mma_m16n8k16_bf16>(p); }

KERNEL_BOUNDED(ldmatrix_probe, LdmatrixProbeParams, 32) {
  __align__(16) __shared__ unsigned rows[32 * 4];
  const unsigned lane = threadIdx.x;
  for (int w = 0; w < 4; ++w) rows[lane * 4 + w] = p.rows[lane * 4 + w];
  __syncthreads();
  unsigned r[4], r2[2];
  ldmatrix(r, rows + p.row_of_lane[lane] * 4);
  ldmatrix(r2, rows + p.row_of_lane[lane] * 4);
  for (int j = 0; j < 4; ++j) p.out[lane * 4 + j] = r[j];
  for (int j = 0; j < 2; ++j) p.out_x2[lane * 2 + j] = r2[j];
}

KERNEL_BOUNDED(mma_convert_probe, MmaConvertProbeParams, 256) {
  GRID_STRIDE_LOOP(i, p.n / 2) {
    const float lo = p.x[2 * i], hi = p.x[2 * i + 1];
    p.tf32[2 * i] = float_to_tf32(lo);
    p.tf32[2 * i + 1] = float_to_tf32(hi);
    p.half2[i] = pack_half2(lo, hi);
    p.bfloat162[i] = pack_bfloat162(lo, hi);
  }
}
