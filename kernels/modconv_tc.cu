// The same-resolution modulated convolutions (3x3 padding 1, and 1x1) on the tensor cores: tf32, f16 or bf16
// inputs, f32 accumulation. Same parameters, semantics and epilogue order as modconv_3x3 / modconv_1x1
// (modconv.cu): an implicit GEMM over the whole batch with M = batch * pixels, N = output channels,
// K = input channels * taps, whose prologue scales input channel i of sample b by styles[b, i] while staging the A
// tile, and whose epilogue applies demodulation, noise, bias, activation, gain and clamp. x is read in the mode's
// activation type (f32 for tf32, the 16-bit type for f16 and bf16: act.cuh), y stored as y_dtype. The up-sampling conv
// keeps its f32 kernel in every mode.
//
// Shared memory holds 32-bit words as in gemm_tc.cu: one tf32 value, or two f16/bf16 values adjacent along K
// (lower K in the low half), so both mma shapes read a 16x8 A and an 8x8 B fragment of words with one lane
// mapping (mma.cuh). A block computes 64 pixels x 64 channels with 4 warps of 32 x 32, K in stages of 16 words
// through double-buffered shared memory (one barrier per stage).
//
// Weight packing (conv.rs packs it at upload, already in the mode's type): words [K words rounded up to 16]
// [out_channels rounded up to 64], word (kw, o) = W[o, k] for tf32 (k = kw), or the pair W[o, 2 kw], W[o, 2 kw + 1]
// for f16/bf16 (k = i * taps + tap; zeros past the ends), so B stages are 16-byte cp.async copies without bounds
// checks or conversions. f16 layers that demodulate get their weight scaled by a power of two at upload so its
// largest magnitude is in [0.5, 1) (see conv.rs): the demodulation coefficients, computed from the scaled weight,
// undo it.
#include "act.cuh"
#include "common.cuh"
#include "mma.cuh"

namespace modconv_tc {

constexpr int kThreads = 128;  // 4 warps in a 2x2 arrangement
constexpr int kBlockM = 64, kBlockN = 64, kWarpM = 32, kWarpN = 32;
constexpr int kStageWords = 16;  // K words per stage: two mma K steps
// Row paddings that make the fragment reads conflict-free (as gemm_tc.cu) and keep rows 16-byte aligned: the A
// stores (four words per thread, rows 20 words apart) cover all 32 banks per quarter warp.
constexpr int kPadA = 4, kPadB = 8;
constexpr int kRowA = kStageWords + kPadA, kRowB = kBlockN + kPadB;
// Each thread gathers kWordsA consecutive words of one pixel's A row per stage.
constexpr int kWordsA = kBlockM * kStageWords / kThreads;
constexpr int kChunksB = kStageWords * kBlockN / 4 / kThreads;  // 16-byte B copies per thread and stage

struct Tf32 {
  using Act = ActF32;
  static constexpr int kPerWord = 1;
  __device__ static unsigned word(const float* v) { return float_to_tf32(v[0]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k8_tf32(d, a, b, c);
  }
};
struct F16 {
  using Act = ActF16;
  static constexpr int kPerWord = 2;
  __device__ static unsigned word(const float* v) { return pack_half2(v[0], v[1]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k16_f16(d, a, b, c);
  }
};
struct Bf16 {
  using Act = ActBf16;
  static constexpr int kPerWord = 2;
  __device__ static unsigned word(const float* v) { return pack_bfloat162(v[0], v[1]); }
  __device__ static void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_m16n8k16_bf16(d, a, b, c);
  }
};

template <int KS, class Mode>
__device__ void same_impl(const ModconvParams& p) {
  constexpr int TAPS = KS * KS, PAD = KS / 2;
  constexpr int kPerWord = Mode::kPerWord;
  constexpr int kStageK = kStageWords * kPerWord;  // K elements per stage
  constexpr int kGather = kWordsA * kPerWord;       // K elements each thread gathers per stage
  __align__(16) __shared__ unsigned a_tile[2][kBlockM * kRowA];
  __align__(16) __shared__ unsigned b_tile[2][kStageWords * kRowB];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, tig = lane % 4;
  const int warp_m = (warp / 2) * kWarpM, warp_n = (warp % 2) * kWarpN;
  const int hw = p.height * p.width;
  const long long m_total = (long long)p.batch * hw;
  const long long m0 = (long long)blockIdx.x * kBlockM;
  const int n0 = blockIdx.y * kBlockN;
  const int k_total = p.in_channels * TAPS;
  const int stages = (k_total + kStageK - 1) / kStageK;

  // The pixel (A row) this thread gathers, and which half of the row's words.
  const int a_row = tid % kBlockM, a_word0 = (tid / kBlockM) * kWordsA;
  const long long gm = m0 + a_row;
  const bool gvalid = gm < m_total;
  const int gb = gvalid ? int(gm / hw) : 0;
  const int gpix = gvalid ? int(gm - (long long)gb * hw) : 0;
  const int gy = gpix / p.width, gx = gpix % p.width;
  using X = typename Mode::Act;  // x's element type: f32, or the mode's 16-bit type
  const typename X::T* xb = static_cast<const typename X::T*>(p.x) + (long long)gb * p.in_channels * hw;
  const float* sb = p.styles + (long long)gb * p.in_channels;

  // A (gathered, scaled by the style, f32) waits in registers while the current stage is multiplied.
  float a_next[kGather];
  auto load_a = [&](int stage) {
    const int k_first = stage * kStageK + a_word0 * kPerWord;
    int i = k_first / TAPS, t = k_first % TAPS;
#pragma unroll
    for (int r = 0; r < kGather; ++r) {
      const int iy = gy + t / KS - PAD, ix = gx + t % KS - PAD;
      float v = 0.0f;
      if (gvalid && i < p.in_channels && iy >= 0 && iy < p.height && ix >= 0 && ix < p.width)
        v = X::load(&xb[(long long)i * hw + iy * p.width + ix]) * sb[i];
      a_next[r] = v;
      if (++t == TAPS) t = 0, ++i;
    }
  };
  auto store_a = [&](int buf) {
    unsigned* dst = &a_tile[buf][a_row * kRowA + a_word0];
#pragma unroll
    for (int q = 0; q < kWordsA / 4; ++q) {
      uint4 w;
      w.x = Mode::word(&a_next[(q * 4 + 0) * kPerWord]);
      w.y = Mode::word(&a_next[(q * 4 + 1) * kPerWord]);
      w.z = Mode::word(&a_next[(q * 4 + 2) * kPerWord]);
      w.w = Mode::word(&a_next[(q * 4 + 3) * kPerWord]);
      *reinterpret_cast<uint4*>(dst + q * 4) = w;
    }
  };
  const unsigned* weight = reinterpret_cast<const unsigned*>(p.weight) + n0;
  auto copy_b = [&](int stage, int buf) {
#pragma unroll
    for (int j = 0; j < kChunksB; ++j) {
      const int q = tid + j * kThreads, r = q / (kBlockN / 4), c4 = q % (kBlockN / 4);
      copy16_async(&b_tile[buf][r * kRowB + c4 * 4],
                   weight + (long long)(stage * kStageWords + r) * p.weight_stride + c4 * 4);
    }
  };

  float acc[2][4][4];  // [m16 tile][n8 tile][C fragment register]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;

  copy_b(0, 0);
  load_a(0);
  store_a(0);
  copy_async_wait();
  __syncthreads();
  for (int s = 0; s < stages; ++s) {
    const int cur = s & 1;
    const bool more = s + 1 < stages;
    if (more) {
      copy_b(s + 1, cur ^ 1);
      load_a(s + 1);
    }
    const unsigned* at = a_tile[cur];
    const unsigned* bt = b_tile[cur];
#pragma unroll
    for (int ks = 0; ks < kStageWords; ks += 8) {
      unsigned a_frag[2][4], b_frag[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          a_frag[mi][r] = at[(warp_m + mi * 16 + group + 8 * (r & 1)) * kRowA + ks + tig + 4 * (r >> 1)];
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int r = 0; r < 2; ++r) b_frag[ni][r] = bt[(ks + tig + 4 * r) * kRowB + warp_n + ni * 8 + group];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) Mode::mma(acc[mi][ni], a_frag[mi], b_frag[ni], acc[mi][ni]);
    }
    if (more) store_a(cur ^ 1);
    copy_async_wait();
    __syncthreads();
  }

  // Epilogue in modconv.cu's order. This thread's rows (pixels): warp_m + mi * 16 + group + 8 * h; its columns
  // (channels): warp_n + ni * 8 + 2 * tig + e. Lanes with one tig store 8 consecutive pixels of a channel.
  with_output_type(p.y_dtype, [&](auto store) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long long m = m0 + warp_m + mi * 16 + group + 8 * h;
        if (m >= m_total) continue;
        const int b = int(m / hw), pix = int(m - (long long)b * hw);
        const float nz = p.noise ? p.noise[(long long)b * p.noise_sample_stride + pix] * p.noise_strength : 0.0f;
        const long long yb = (long long)b * p.out_channels * hw + pix;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int o = n0 + warp_n + ni * 8 + 2 * tig + e;
            if (o >= p.out_channels) continue;
            float v = acc[mi][ni][2 * h + e];
            if (p.dcoefs) v *= p.dcoefs[b * p.out_channels + o];
            if (p.noise) v += nz;
            if (p.bias) v += p.bias[o];
            store(p.y, yb + (long long)o * hw, activate(v, p.act, p.alpha, p.gain, p.clamp));
          }
      }
  });
}

}  // namespace modconv_tc

// Grid: (ceil(batch * pixels / 64), ceil(out_channels / 64)); 128 threads.
KERNEL_BOUNDED(modconv_3x3_tf32, ModconvParams, 128) { modconv_tc::same_impl<3, modconv_tc::Tf32>(p); }
KERNEL_BOUNDED(modconv_3x3_f16, ModconvParams, 128) { modconv_tc::same_impl<3, modconv_tc::F16>(p); }
KERNEL_BOUNDED(modconv_3x3_bf16, ModconvParams, 128) { modconv_tc::same_impl<3, modconv_tc::Bf16>(p); }
KERNEL_BOUNDED(modconv_1x1_tf32, ModconvParams, 128) { modconv_tc::same_impl<1, modconv_tc::Tf32>(p); }
KERNEL_BOUNDED(modconv_1x1_f16, ModconvParams, 128) { modconv_tc::same_impl<1, modconv_tc::F16>(p); }
KERNEL_BOUNDED(modconv_1x1_bf16, ModconvParams, 128) { modconv_tc::same_impl<1, modconv_tc::Bf16>(p); }
