// Kernel parameter structs: the ABI between Rust and the kernels. src/cuda/params.rs mirrors each struct field
// for field (pointers are 64-bit device addresses there); a test compares the layouts through the emulation.
// Fields are ordered 8-byte first so no struct has padding.
#pragma once

enum Activation { ACT_LINEAR = 0, ACT_LRELU = 1 };

// y = clamp(act(x + bias[c]) * gain), x laid out [outer, channels, inner]. bias may be null. clamp < 0: none.
struct BiasActParams {
  float* y;
  const float* x;
  const float* bias;
  long long n;
  int channels;
  int inner;
  int act;
  float alpha;
  float gain;
  float clamp;
};

// C = A B with A [m, k], B [k, n] and C [m, n] row-major f32 with row strides lda, ldb, ldc (gemm_tc.cu).
struct GemmParams {
  float* c;
  const float* a;
  const float* b;
  int m;
  int n;
  int k;
  int lda;
  int ldb;
  int ldc;
};

// One warp's mma.sync operands as raw registers, lane after lane: a [32][4], b [32][2], c and d [32][4].
struct MmaProbeParams {
  float* d;
  const unsigned* a;
  const unsigned* b;
  const float* c;
};

// The register conversions of mma.cuh applied to x [n] (n even): tf32 [n], half2 and bfloat162 [n / 2].
struct MmaConvertProbeParams {
  unsigned* tf32;
  unsigned* half2;
  unsigned* bfloat162;
  const float* x;
  long long n;
};
