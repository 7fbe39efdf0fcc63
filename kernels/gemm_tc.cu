// C = A B for f32 matrices in memory, on the tensor cores: each block stages a 64-row slice of A and a 64-column
// slice of B through shared memory, converted to the mode's input type on the way (tf32, or f16/bf16 pairs), and
// its 4 warps each accumulate a 32x32 tile in f32 with mma.sync. tests/emu.rs checks it against f64 products.
// The building block of the tensor-core modulated convolution (an implicit GEMM with the same tiles).
//
// Shared memory holds 32-bit words: one tf32 value, or two f16/bf16 values adjacent along K, lower K in the low
// half. In words both mma shapes read a 16x8 A and an 8x8 B fragment with the same lane mapping (mma.cuh), so
// every mode runs the same loop; gemm_fp32 runs it too, with plain f32 words and FMAs instead of mma.
#include "common.cuh"
#include "mma.cuh"

namespace gemm_tiles {

constexpr int kThreads = 128;  // 4 warps in a 2x2 arrangement
constexpr int kBlockM = 64, kBlockN = 64, kWarpM = 32, kWarpN = 32;
constexpr int kStageWords = 16;  // K words per shared-memory stage: two mma K steps
// Row paddings that make the fragment reads conflict-free: lanes (group, tig) hit banks 20*group + tig of A and
// 72*tig + group (= 8*tig + group) of B, all 32 distinct.
constexpr int kPadA = 4, kPadB = 8;
constexpr int kWordsA = kBlockM * kStageWords / kThreads;  // per thread and stage
constexpr int kWordsB = kBlockN * kStageWords / kThreads;

struct Fp32 {
  static constexpr bool kTensorCores = false;
  static constexpr int kPerWord = 1;
  __device__ static unsigned word(const float* v) { return __float_as_uint(v[0]); }
};
struct Tf32 {
  static constexpr bool kTensorCores = true;
  static constexpr int kPerWord = 1;
  __device__ static unsigned word(const float* v) { return float_to_tf32(v[0]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k8_tf32(d, a, b, c);
  }
};
struct F16 {
  static constexpr bool kTensorCores = true;
  static constexpr int kPerWord = 2;
  __device__ static unsigned word(const float* v) { return pack_half2(v[0], v[1]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k16_f16(d, a, b, c);
  }
};
struct Bf16 {
  static constexpr bool kTensorCores = true;
  static constexpr int kPerWord = 2;
  __device__ static unsigned word(const float* v) { return pack_bfloat162(v[0], v[1]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k16_bf16(d, a, b, c);
  }
};

template <class Mode>
__device__ void gemm(const GemmParams& p) {
  constexpr int kPerWord = Mode::kPerWord;
  constexpr int kStageK = kStageWords * kPerWord;  // K elements per stage
  __shared__ unsigned a_tile[kBlockM][kStageWords + kPadA];
  __shared__ unsigned b_tile[kStageWords][kBlockN + kPadB];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, tig = lane % 4;
  const int m0 = blockIdx.y * kBlockM, n0 = blockIdx.x * kBlockN;
  const int warp_m = (warp / 2) * kWarpM, warp_n = (warp % 2) * kWarpN;

  // The next stage's inputs, loaded from global memory while the current stage is multiplied; zero outside the
  // matrices, so partial tiles need no other care.
  float next_a[kWordsA][kPerWord], next_b[kWordsB][kPerWord];
  // Thread tid loads words tid + j * kThreads: rows j * kRowStepA apart in A, rows of words j * kRowStepB apart in B.
  constexpr int kRowStepA = kThreads / kStageWords, kRowStepB = kThreads / kBlockN;
  const int a_row = m0 + tid / kStageWords, a_kw = tid % kStageWords;
  const int b_kw = tid / kBlockN, b_col = n0 + tid % kBlockN;
  const float* a_base = p.a + (long long)a_row * p.lda + a_kw * kPerWord;
  const float* b_base = p.b + (long long)b_kw * kPerWord * p.ldb + b_col;
  const long long a_step = (long long)kRowStepA * p.lda, b_step = (long long)kRowStepB * kPerWord * p.ldb;
  auto load_stage = [&](int k0) {
    for (int j = 0; j < kWordsA; ++j)
      for (int e = 0; e < kPerWord; ++e) {
        const bool inside = a_row + j * kRowStepA < p.m && k0 + a_kw * kPerWord + e < p.k;
        next_a[j][e] = inside ? __ldg(a_base + j * a_step + k0 + e) : 0.0f;
      }
    for (int j = 0; j < kWordsB; ++j)
      for (int e = 0; e < kPerWord; ++e) {
        const int kk = k0 + (b_kw + j * kRowStepB) * kPerWord + e;
        next_b[j][e] = kk < p.k && b_col < p.n ? __ldg(b_base + (long long)(k0 + e) * p.ldb + j * b_step) : 0.0f;
      }
  };

  float acc[2][4][4] = {};  // [m16 tile][n8 tile][C fragment register]
  load_stage(0);
  for (int k0 = 0; k0 < p.k; k0 += kStageK) {
    __syncthreads();  // everybody is done reading the previous stage
    for (int j = 0; j < kWordsA; ++j) {
      const int w = tid + j * kThreads;
      a_tile[w / kStageWords][w % kStageWords] = Mode::word(next_a[j]);
    }
    for (int j = 0; j < kWordsB; ++j) {
      const int w = tid + j * kThreads;
      b_tile[w / kBlockN][w % kBlockN] = Mode::word(next_b[j]);
    }
    __syncthreads();
    if (k0 + kStageK < p.k) load_stage(k0 + kStageK);

    if constexpr (!Mode::kTensorCores) {
      // f32 on the FMA units: each lane computes the elements its C fragments would hold.
      for (int kw = 0; kw < kStageWords; ++kw) {
        float a_val[2][2], b_val[4][2];
        for (int mi = 0; mi < 2; ++mi)
          for (int h = 0; h < 2; ++h) a_val[mi][h] = __uint_as_float(a_tile[warp_m + mi * 16 + group + 8 * h][kw]);
        for (int ni = 0; ni < 4; ++ni)
          for (int e = 0; e < 2; ++e) b_val[ni][e] = __uint_as_float(b_tile[kw][warp_n + ni * 8 + 2 * tig + e]);
        for (int mi = 0; mi < 2; ++mi)
          for (int ni = 0; ni < 4; ++ni)
            for (int i = 0; i < 4; ++i)
              acc[mi][ni][i] = __fmaf_rn(a_val[mi][i >> 1], b_val[ni][i & 1], acc[mi][ni][i]);
      }
    } else {
      for (int ks = 0; ks < kStageWords; ks += 8) {
        unsigned a_frag[2][4], b_frag[4][2];
        for (int mi = 0; mi < 2; ++mi)
          for (int r = 0; r < 4; ++r)
            a_frag[mi][r] = a_tile[warp_m + mi * 16 + group + 8 * (r & 1)][ks + tig + 4 * (r >> 1)];
        for (int ni = 0; ni < 4; ++ni)
          for (int r = 0; r < 2; ++r) b_frag[ni][r] = b_tile[ks + tig + 4 * r][warp_n + ni * 8 + group];
        for (int mi = 0; mi < 2; ++mi)
          for (int ni = 0; ni < 4; ++ni) Mode::mma(acc[mi][ni], a_frag[mi], b_frag[ni], acc[mi][ni]);
      }
    }
  }

  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 4; ++ni)
      for (int i = 0; i < 4; ++i) {
        const int row = m0 + warp_m + mi * 16 + group + 8 * (i >> 1);
        const int col = n0 + warp_n + ni * 8 + 2 * tig + (i & 1);
        if (row < p.m && col < p.n) p.c[(long long)row * p.ldc + col] = acc[mi][ni][i];
      }
}

}  // namespace gemm_tiles

KERNEL_BOUNDED(gemm_tc_tf32, GemmParams, 128) { gemm_tiles::gemm<gemm_tiles::Tf32>(p); }
KERNEL_BOUNDED(gemm_tc_f16, GemmParams, 128) { gemm_tiles::gemm<gemm_tiles::F16>(p); }
KERNEL_BOUNDED(gemm_tc_bf16, GemmParams, 128) { gemm_tiles::gemm<gemm_tiles::Bf16>(p); }
KERNEL_BOUNDED(gemm_fp32, GemmParams, 128) { gemm_tiles::gemm<gemm_tiles::Fp32>(p); }
