// The same-resolution 3x3 modulated convolution on sm_90's warpgroup tensor-core instructions (wgmma.cuh, compiled
// for sm_90a only; conv.rs launches it on compute capability 9.0 for fp16 and bf16 layers with more than 64
// outputs, and modconv_tc.cu's mma.sync kernels everywhere else). Same parameters, semantics and epilogue order as
// modconv_3x3_f16 / _bf16: an implicit GEMM with M = pixels, N = output channels, K = input channels x 9 taps.
//
// A block (two warpgroups, 256 threads) computes an 8 x 16 rectangle of one sample's output pixels (blockIdx.x) for
// 128 output channels (blockIdx.y); warpgroup g takes the rectangle's columns 8 g .. 8 g + 7, an m64n128 product.
// K runs in chunks of 32 input channels. A chunk's input rectangle with its 1-pixel halo (10 x 18 pixels) is
// gathered from x once, scaled by the styles and rounded, into shared memory as wgmma's core matrices want it:
// cells of 16 bytes (8 channels of one pixel), [channel group][halo pixel]. Then the 8 consecutive pixels of a
// rectangle row are one core matrix's 8 rows, rectangle rows are SBO = 18 cells apart, channel groups LBO = 180
// cells apart, and tap (dy, dx) of a warpgroup's A is that layout started dy * 18 + dx cells further: each tap is
// one K stage whose A the tensor cores read in place, with no im2col and no fragment in registers. B is a stage's
// weight tile, [channel group][output channel] cells (SBO 8 cells, LBO 128), copied per stage with cp.async.
// Both are double-buffered: the next chunk's rectangle is gathered a slot at a time during the taps, the next
// stage's B during each stage, while the wgmma of the current stage run.
//
// Weight packing (conv.rs, pack_same_wgmma): 32-bit words [chunks * 9][4 channel groups][out_channels rounded up to
// 128 (weight_stride)][4]; word w of channel group g and output channel o in stage chunk * 9 + tap holds the pair
// W[o, c, tap], W[o, c + 1, tap] for c = 32 chunk + 8 g + 2 w (low half first), zeros past the ends. The fp16 weight
// prescale of modconv_tc.cu applies.
#include "act.cuh"
#include "common.cuh"
#include "wgmma.cuh"

namespace modconv_wgmma {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kTileY = 8, kTileX = 16, kBlockN = 128;
constexpr int kGroups = 4;                                          // channel groups (8 channels, 16 bytes) per chunk
constexpr int kChunkK = 8 * kGroups;                                // input channels per chunk
constexpr int kHaloY = kTileY + 2, kHaloX = kTileX + 2, kHaloPixels = kHaloY * kHaloX;
constexpr int kSlots = (kHaloPixels + 63) / 64;                     // halo pixels per lane (64 lanes per group)
constexpr int kCopiesB = kGroups * kBlockN / kThreads;              // 16-byte B copies per thread and stage

struct Smem {
  uint4 halo[2][kGroups][kHaloPixels];
  uint4 b[2][kGroups][kBlockN];
};

struct F16 {
  using Act = ActF16;
  __device__ static unsigned word(float lo, float hi) { return pack_half2(lo, hi); }
  __device__ static void mma(float (&d)[64], unsigned long long a, unsigned long long b) {
    wgmma_m64n128k16_f16(d, a, b);
  }
};
struct Bf16 {
  using Act = ActBf16;
  __device__ static unsigned word(float lo, float hi) { return pack_bfloat162(lo, hi); }
  __device__ static void mma(float (&d)[64], unsigned long long a, unsigned long long b) {
    wgmma_m64n128k16_bf16(d, a, b);
  }
};

template <class Mode>
__device__ void conv3x3(const ModconvParams& p) {
  __align__(128) __shared__ Smem smem;
  using X = typename Mode::Act;
  using T = typename X::T;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int hw = p.height * p.width;
  const int tiles_x = (p.width + kTileX - 1) / kTileX;
  const int b = blockIdx.z, y0 = (blockIdx.x / tiles_x) * kTileY, x0 = (blockIdx.x % tiles_x) * kTileX;
  const int n0 = blockIdx.y * kBlockN;
  const int chunks = (p.in_channels + kChunkK - 1) / kChunkK;
  const int stages = chunks * 9;

  // The gather: warp w stages channel group w % 4 of the chunk for the halo pixels q = 32 (w / 4) + lane + 64 j
  // (slot j), one 16-byte store each. Channels and styles are warp-uniform; values load as stored in x.
  const int group = warp % kGroups;
  auto pixel = [&](int j) {  // slot j's offset in an x plane, or -1 outside the image or past the halo
    const int q = 32 * (warp / kGroups) + lane + 64 * j, iy = y0 - 1 + q / kHaloX, ix = x0 - 1 + q % kHaloX;
    const bool inside = q < kHaloPixels && iy >= 0 && iy < p.height && ix >= 0 && ix < p.width;
    return inside ? iy * p.width + ix : -1;
  };
  const T* const x_group = static_cast<const T*>(p.x) + ((long long)b * p.in_channels + 8 * group) * hw;
  const float* const styles_group = p.styles + (long long)b * p.in_channels + 8 * group;
  auto group_channels = [&](int chunk) { return p.in_channels - chunk * kChunkK - 8 * group; };
  auto load_slot = [&](int chunk, int j, T (&v)[8]) {
    const int pix = pixel(j), n = pix < 0 ? 0 : group_channels(chunk);
    const T* const xc = x_group + (long long)chunk * kChunkK * hw + (pix < 0 ? 0 : pix);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = k < n ? xc[k * hw] : T(0);
  };
  auto store_slot = [&](int chunk, int j, const T (&v)[8]) {
    const int q = 32 * (warp / kGroups) + lane + 64 * j;
    if (q >= kHaloPixels) return;
    const int n = group_channels(chunk);
    float s[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) s[k] = k < n ? styles_group[chunk * kChunkK + k] : 0.0f;
    uint4 u;
    u.x = Mode::word(X::load(&v[0]) * s[0], X::load(&v[1]) * s[1]);
    u.y = Mode::word(X::load(&v[2]) * s[2], X::load(&v[3]) * s[3]);
    u.z = Mode::word(X::load(&v[4]) * s[4], X::load(&v[5]) * s[5]);
    u.w = Mode::word(X::load(&v[6]) * s[6], X::load(&v[7]) * s[7]);
    smem.halo[chunk & 1][group][q] = u;
  };
  // The tap at which the next chunk's slot j is gathered: spread over the taps, so few loads are in flight.
  auto slot_tap = [](int j) { return j * 9 / kSlots; };

  const uint4* const weight = reinterpret_cast<const uint4*>(p.weight) + n0;
  auto copy_b = [&](int stage, int buf) {
#pragma unroll
    for (int j = 0; j < kCopiesB; ++j) {
      const int cell = tid + j * kThreads, g = cell / kBlockN, n = cell % kBlockN;
      copy16_async(&smem.b[buf][g][n], weight + ((long long)stage * kGroups + g) * p.weight_stride + n);
    }
  };

  // Descriptors, moved by adding offsets in 16-byte cells: A of warpgroup g starts at its 8 columns of the
  // rectangle; a K step of 16 channels is two channel groups.
  const int wg = warp / 4;
  const unsigned long long a_base =
      wgmma_descriptor(&smem, 16 * 8 * wg, 16 * kHaloPixels, 16 * kHaloX);
  const unsigned long long b_base =
      wgmma_descriptor(&smem, sizeof(smem.halo), 16 * kBlockN, 16 * 8);
  auto a_desc = [&](int buf, int tap, int ks) {
    return a_base + (buf * kGroups + 2 * ks) * kHaloPixels + (tap / 3) * kHaloX + tap % 3;
  };
  auto b_desc = [&](int buf, int ks) { return b_base + (buf * kGroups + 2 * ks) * kBlockN; };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  {
    T first[kSlots][8];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) load_slot(0, j, first[j]);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) store_slot(0, j, first[j]);
  }
  copy_b(0, 0);
  copy_async_wait();
  wgmma_fence_shared_writes();
  __syncthreads();
  int b_cur = 0;
#pragma unroll 1
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const bool next_chunk = chunk + 1 < chunks;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int s = chunk * 9 + tap;
      if (s + 1 < stages) copy_b(s + 1, b_cur ^ 1);
      T part[kSlots][8];
      if (next_chunk) {
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
          if (slot_tap(j) == tap) load_slot(chunk + 1, j, part[j]);
      }
      wgmma_fence();
      Mode::mma(acc, a_desc(chunk & 1, tap, 0), b_desc(b_cur, 0));
      Mode::mma(acc, a_desc(chunk & 1, tap, 1), b_desc(b_cur, 1));
      wgmma_commit();
      if (next_chunk) {
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
          if (slot_tap(j) == tap) store_slot(chunk + 1, j, part[j]);
      }
      // This stage's operands are rewritten two stages on: every warpgroup's products end before the barrier.
      wgmma_wait<0>(acc);
      copy_async_wait();
      wgmma_fence_shared_writes();
      __syncthreads();
      b_cur ^= 1;
    }
  }

  // Epilogue in modconv.cu's order. Warp w of warpgroup wg holds rectangle rows 2 (w % 4) + h, column 8 wg +
  // groupID, and channels n0 + 8 j + 2 tig + e in acc[4 j + 2 h + e] (wgmma.cuh). Channel by channel, so each
  // channel's demodulation and bias are loaded once; lanes with one tig store 8 consecutive pixels of a channel.
  const int quad = lane / 4, tig = lane % 4;
  int pix[2];
  float noise[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int y = y0 + 2 * (warp % 4) + h, x = x0 + 8 * wg + quad;
    pix[h] = y < p.height && x < p.width ? y * p.width + x : -1;
    noise[h] = p.noise && pix[h] >= 0 ? p.noise[(long long)b * p.noise_sample_stride + pix[h]] : 0.0f;
  }
  with_output_type(p.y_dtype, [&](auto store) {
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int o = n0 + 8 * j + 2 * tig + e;
        if (o >= p.out_channels) continue;
        const float dcoef = p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f;
        const float bias = p.bias ? p.bias[o] : 0.0f;
        const long long y_channel = ((long long)b * p.out_channels + o) * hw;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (pix[h] < 0) continue;
          store(p.y, y_channel + pix[h], modconv_finish(p, acc[4 * j + 2 * h + e], dcoef, noise[h], bias));
        }
      }
  });
}

}  // namespace modconv_wgmma

KERNEL_BOUNDED(modconv_3x3_wgmma_f16, ModconvParams, 256, 2) { modconv_wgmma::conv3x3<modconv_wgmma::F16>(p); }
KERNEL_BOUNDED(modconv_3x3_wgmma_bf16, ModconvParams, 256, 2) { modconv_wgmma::conv3x3<modconv_wgmma::Bf16>(p); }

// One m64n128k16 f16 product on operands laid out as the host says, so a test can check the instruction (on a GPU)
// and its twin (in the emulation) against wgmma.cuh's reading of the PTX ISA: element (r, k) of A (64 x 16,
// row-major in p.a) and of B (128 x 16, n-major in p.b) goes to byte (r / 8) SBO + (k / 8) LBO + (r % 8) 16 +
// (k % 8) 2 of its operand's region, D = C + A B, with C and D [64][128] row-major f32 read and written through
// the accumulator layout.
KERNEL_BOUNDED(wgmma_probe, WgmmaProbeParams, 128) {
  __align__(128) __shared__ unsigned short operands[WGMMA_PROBE_SHARED_BYTES / 2];
  const int tid = threadIdx.x, warp = tid / 32, quad = (tid % 32) / 4, tig = tid % 4;
  for (int i = tid; i < WGMMA_PROBE_SHARED_BYTES / 2; i += 128) operands[i] = 0;
  __syncthreads();
  for (int i = tid; i < 64 * 16; i += 128) {
    const int r = i / 16, k = i % 16;
    operands[(p.a_offset + (r / 8) * p.a_sbo + (k / 8) * p.a_lbo + (r % 8) * 16 + (k % 8) * 2) / 2] = p.a[i];
  }
  for (int i = tid; i < 128 * 16; i += 128) {
    const int r = i / 16, k = i % 16;
    operands[(p.b_offset + (r / 8) * p.b_sbo + (k / 8) * p.b_lbo + (r % 8) * 16 + (k % 8) * 2) / 2] = p.b[i];
  }
  float d[64];
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 4; ++i) d[4 * j + i] = p.c[(16 * warp + quad + 8 * (i >> 1)) * 128 + 8 * j + 2 * tig + (i & 1)];
  wgmma_fence_shared_writes();
  __syncthreads();
  wgmma_fence();
  wgmma_m64n128k16_f16(d, wgmma_descriptor(operands, p.a_offset, p.a_lbo, p.a_sbo),
                       wgmma_descriptor(operands, p.b_offset, p.b_lbo, p.b_sbo));
  wgmma_commit();
  wgmma_wait<0>(d);
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 4; ++i) p.d[(16 * warp + quad + 8 * (i >> 1)) * 128 + 8 * j + 2 * tig + (i & 1)] = d[4 * j + i];
}
