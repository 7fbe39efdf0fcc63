// The same-resolution modulated convolutions (3x3 padding 1, and 1x1) on the tensor cores: tf32, f16 or bf16
// inputs, f32 accumulation. Same parameters, semantics and epilogue order as modconv_3x3 / modconv_1x1
// (modconv.cu): an implicit GEMM with M = pixels, N = output channels, K = input channels * taps, whose prologue
// scales input channel i of sample b by styles[b, i] while staging x, and whose epilogue applies demodulation, noise,
// bias, activation, gain and clamp. x is read in the mode's activation type (f32 for tf32, the 16-bit type for f16
// and bf16: act.cuh), y stored as y_dtype. The fused up-sampling 3x3 conv (modconv_up2_3x3_*, at the end of the
// file) runs modconv_up2_3x3's algorithm with its GEMM on mma.sync.
//
// A block computes a rectangle of output pixels of one sample (blockIdx.x: the rectangle, blockIdx.z: the sample)
// for a block of output channels (blockIdx.y), with 4 warps of 32 pixels x 32 channels: 8 x 8 pixels x 64 channels
// (Square), or 8 x 16 pixels x 32 channels (Wide, the _n32 kernels) for layers with at most 32 outputs, which would
// leave half of a Square's mma work on padding channels. K runs in chunks of 16 channel words; a chunk's input
// rectangle with its 1-pixel halo (10 x 10 pixels for a 3x3 Square) is gathered from x once, scaled and converted,
// into shared memory, and each of the 9 taps is then one K stage whose A fragments are read from that rectangle
// shifted by the tap. So every x element is loaded once per block rather than once per tap: gathering A per tap (an
// im2col in registers) cost tens of instructions per mma, and the kernel was bound by issuing them (Nsight Compute
// on an H200: about 42 instructions per mma with that gather, 18 with the square gathered once; BENCHMARKS.md).
// The taps of a chunk are unrolled, so every fragment address is a constant offset from a per-thread base, and the
// gather is laid out so each lane's items share one channel quad (warp-uniform channels and styles) and differ
// only in the pixel: about 9 instructions per mma in the sm_90 main loop (static count; 18 before the unrolling).
//
// Shared memory holds 32-bit words as in gemm_tc.cu: one tf32 value, or two f16/bf16 values adjacent along K
// (lower channel in the low half), so both mma shapes read a 16x8 A and an 8x8 B fragment of words with one lane
// mapping (mma.cuh), and ldmatrix loads them. The input rectangle is double-buffered per chunk (the next chunk's
// is gathered a slot per tap), the B tile per stage (cp.async), one barrier per stage.
//
// Weight packing (conv.rs packs it at upload, already in the mode's type): words [chunks * taps][out_channels
// rounded up to the shape's channel block (weight_stride)][16], n-major for ldmatrix; word w of channel o in stage
// chunk * taps + tap holds W[o, c, tap] with c = 16 chunk + w (tf32), or the pair c = 2 (16 chunk + w), c + 1
// (f16/bf16); zeros past the ends. So B stages are 16-byte cp.async copies without bounds checks or conversions.
// f16 layers that demodulate get their weight scaled by a power of two at upload so its largest magnitude is in
// [0.5, 1) (see conv.rs): the demodulation coefficients, computed from the scaled weight, undo it.
#include "act.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "up2_tile.cuh"

namespace modconv_tc {

constexpr int kThreads = 128;            // 4 warps
constexpr int kWarpM = 32, kWarpN = 32;  // a warp's tile: 32 pixels x 32 channels
constexpr int kChunkWords = 16;          // K words per stage (one tap of a chunk): two mma K steps
constexpr int kQuadWords = 4;            // the words of a gather item: one 128-bit shared-memory store
// Shared-memory rows of 16 K words (a pixel of the input rectangle, an output channel of the B tile) padded to 20:
// 16-byte aligned, and the 8 rows an ldmatrix phase reads (or the gather's 128-bit stores write) hit distinct banks.
constexpr int kRow = kChunkWords + 4;
static_assert(kChunkWords / kQuadWords == kThreads / 32, "warp g gathers word quad g of every halo pixel");

// A block shape: a kTileY x kTileX rectangle of one sample's output pixels times kBlockN output channels, as
// kWarpsM x kWarpsN warps of kWarpM x kWarpN. Block row (pixel) R is rectangle row R / kTileX, column R % kTileX,
// so each 8-row half of an m16 tile is 8 consecutive pixels of one rectangle row.
template <int TileX, int BlockN>
struct Shape {
  static constexpr int kTileY = 8, kTileX = TileX, kBlockM = kTileY * TileX, kBlockN = BlockN;
  static constexpr int kWarpsN = BlockN / kWarpN, kWarpsM = kBlockM / kWarpM;
  static_assert(kWarpsM * kWarpsN * 32 == kThreads && TileX % 8 == 0, "4 warps; m16 halves within a row");
};
using Square = Shape<8, 64>;  // 8 x 8 pixels x 64 channels
using Wide = Shape<16, 32>;   // 8 x 16 pixels x 32 channels: layers with at most 32 outputs (1024 px, ToRGB)

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

// RGB: the kernel also computes the ToRGB after this layer (ModconvParams::rgb; 3x3 with out_channels <= kBlockN,
// so one block holds all of a pixel's channels), from y as stored (the value the unfused ToRGB would read).
// FirstSlots: halo slots whose loads are in flight at once in the first gather (each costs registers).
template <int KS, class Mode, class S, bool RGB = false, int FirstSlots = 2>
__device__ void same_impl(const ModconvParams& p) {
  constexpr int TAPS = KS * KS, PAD = KS / 2;
  constexpr int kPerWord = Mode::kPerWord;
  constexpr int kChunkK = kChunkWords * kPerWord;  // input channels per chunk
  constexpr int kQuadK = kQuadWords * kPerWord;    // input channels per gather item
  constexpr int kHaloY = S::kTileY + KS - 1, kHaloX = S::kTileX + KS - 1;  // the input rectangle with its halo
  constexpr int kHaloPixels = kHaloY * kHaloX;
  constexpr int kSlots = (kHaloPixels + 31) / 32;  // halo pixels per lane
  constexpr int kFirstSlots = FirstSlots;
  constexpr int kCopiesB = kChunkWords * S::kBlockN / 4 / kThreads;  // 16-byte B copies per thread and stage
  __align__(16) __shared__ unsigned halo[2][kHaloPixels * kRow];
  __align__(16) __shared__ unsigned b_tile[2][S::kBlockN * kRow];  // n-major: a row of K words per channel
  static_assert(kCopiesB * 4 * kThreads == kChunkWords * S::kBlockN, "B stages split evenly");
  static_assert(S::kWarpsN == 1 || S::kBlockM * kMaxFusedRgb <= 2 * kHaloPixels * kRow,
                "the ToRGB partials fit in the halo buffers");

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, tig = lane % 4;
  const int warp_m = (warp / S::kWarpsN) * kWarpM, warp_n = (warp % S::kWarpsN) * kWarpN;
  const int hw = p.height * p.width;
  const int tiles_x = (p.width + S::kTileX - 1) / S::kTileX;
  const int b = blockIdx.z, y0 = (blockIdx.x / tiles_x) * S::kTileY, x0 = (blockIdx.x % tiles_x) * S::kTileX;
  const int n0 = blockIdx.y * S::kBlockN;
  const int chunks = (p.in_channels + kChunkK - 1) / kChunkK;
  const int stages = chunks * TAPS;

  // The gather: warp g stages word quad g of the chunk (its input channels kQuadK g ..) for every halo pixel, lane
  // l the pixels l, l + 32, ... (slot j: pixel l + 32 j), each as one 128-bit shared-memory store. The pixel order
  // makes consecutive lanes read consecutive pixels of a channel plane. Values are loaded as stored in x, then
  // scaled by the styles and converted when they are written to shared memory. pixel(j): slot j's offset in an x
  // plane, or -1 outside the image or past the halo (a zero); recomputed where needed, as registers are scarce.
  using X = typename Mode::Act;  // x's element type: f32, or the mode's 16-bit type
  using T = typename X::T;
  auto pixel = [&](int j) {
    const int q = lane + 32 * j, iy = y0 - PAD + q / kHaloX, ix = x0 - PAD + q % kHaloX;
    const bool inside = q < kHaloPixels && iy >= 0 && iy < p.height && ix >= 0 && ix < p.width;
    return inside ? iy * p.width + ix : -1;
  };
  const T* const x_quad = static_cast<const T*>(p.x) + ((long long)b * p.in_channels + warp * kQuadK) * hw;
  const float* const styles_quad = p.styles + (long long)b * p.in_channels + warp * kQuadK;
  // The quad's channels inside the layer in `chunk` (warp-uniform; past them the values and styles are zeros).
  // Slots are loaded as stored in x; store_slot scales them by the quad's styles and converts them.
  auto quad_channels = [&](int chunk) { return p.in_channels - chunk * kChunkK - warp * kQuadK; };
  auto load_styles = [&](int chunk, float (&s)[kQuadK]) {
    const int n = quad_channels(chunk);
#pragma unroll
    for (int k = 0; k < kQuadK; ++k) s[k] = k < n ? styles_quad[chunk * kChunkK + k] : 0.0f;
  };
  // The next chunks' slots: 64-bit pointer steps and a test per value. The first gather (all of it in a layer of
  // one chunk, the 1024 px conv1) reads through SampleChannels instead, at about a third of the instructions; in
  // this loop that spilled in the _torgb_n32 kernels, which run at their 128-register bound.
  auto load_slot = [&](int chunk, int j, T (&v)[kQuadK]) {
    const int pix = pixel(j), n = pix < 0 ? 0 : quad_channels(chunk);
    const T* const xc = x_quad + (long long)chunk * kChunkK * hw + (pix < 0 ? 0 : pix);
#pragma unroll
    for (int k = 0; k < kQuadK; ++k) v[k] = k < n ? xc[k * hw] : T(0);
  };
  const SampleChannels<T> x_first(p, b, warp * kQuadK);
  // inside false: the slot's pixel is outside the image (SampleChannels read the plane's first pixel), so zeros.
  auto store_slot = [&](int j, const T (&v)[kQuadK], bool inside, const float (&s)[kQuadK], unsigned* rect) {
    const int q = lane + 32 * j;
    if (j == kSlots - 1 && q >= kHaloPixels) return;
    unsigned w[kQuadWords];
#pragma unroll
    for (int k = 0; k < kQuadWords; ++k) {
      float scaled[kPerWord];
#pragma unroll
      for (int e = 0; e < kPerWord; ++e) scaled[e] = X::load(&v[k * kPerWord + e]) * s[k * kPerWord + e];
      w[k] = inside ? Mode::word(scaled) : 0u;
    }
    uint4 u;
    u.x = w[0], u.y = w[1], u.z = w[2], u.w = w[3];
    *reinterpret_cast<uint4*>(rect + q * kRow + warp * kQuadWords) = u;
  };
  // The tap at which the next chunk's slot j is gathered: spread over the taps, so few loads are in flight.
  auto slot_tap = [](int j) { return j * TAPS / kSlots; };

  const unsigned* const weight = reinterpret_cast<const unsigned*>(p.weight) + (long long)n0 * kChunkWords;
  auto copy_b = [&](int stage, unsigned* bt) {
    const unsigned* const rows = weight + (long long)stage * p.weight_stride * kChunkWords;
#pragma unroll
    for (int j = 0; j < kCopiesB; ++j) {
      const int q = tid + j * kThreads, n = q / (kChunkWords / 4), c4 = q % (kChunkWords / 4);
      copy16_async(bt + n * kRow + c4 * 4, rows + n * kChunkWords + c4 * 4);
    }
  };

  float acc[2][4][4];  // [m16 tile][n8 tile][C fragment register]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;

  // One stage: tap `tap` (a constant once the tap loop is unrolled) of the rectangle in `rect`, against the B
  // tile in `bt`. Fragments come from ldmatrix.x4 (mma.cuh): lane l names row l % 8 of quarter l / 8. For A,
  // quarter j of the m16 tile mi is its rows 8 (j & 1) .. (block rows R = warp_m + 16 mi + 8 (j & 1) + l % 8) and
  // words 4 (j >> 1) ..; the tap (dy, dx) reads halo pixel (R / kTileX + dy, R % kTileX + dx). For B, quarter j of
  // the n8 tile pair np is channels warp_n + 16 np + 8 (j >> 1) + l % 8 and words 4 (j & 1) ... warp_m is a
  // multiple of kTileX and 16 mi of 8, so everything but a_lane and b_lane is a constant offset.
  const int quarter = lane / 8, quarter_row = lane % 8, half_rows = 8 * (quarter & 1);
  const int a_lane =
      ((warp_m / S::kTileX + half_rows / S::kTileX) * kHaloX + half_rows % S::kTileX + quarter_row) * kRow +
      4 * (quarter >> 1);
  const int b_lane = (warp_n + 8 * (quarter >> 1) + quarter_row) * kRow + 4 * (quarter & 1);
  auto multiply = [&](const unsigned* rect, const unsigned* bt, int tap) {
    const int dy = tap / KS, dx = tap % KS;
#pragma unroll
    for (int ks = 0; ks < kChunkWords; ks += 8) {
      unsigned a_frag[2][4], b_frag[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int sy = mi * 16 / S::kTileX + dy, sx = mi * 16 % S::kTileX + dx;
        ldmatrix(a_frag[mi], rect + a_lane + (sy * kHaloX + sx) * kRow + ks);
      }
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        unsigned b[4];
        ldmatrix(b, bt + b_lane + 16 * np * kRow + ks);
        b_frag[2 * np][0] = b[0], b_frag[2 * np][1] = b[1];
        b_frag[2 * np + 1][0] = b[2], b_frag[2 * np + 1][1] = b[3];
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) Mode::mma(acc[mi][ni], a_frag[mi], b_frag[ni], acc[mi][ni]);
    }
  };

  // The K loop: chunk after chunk, the chunk's taps unrolled (stage chunk * TAPS + tap). The next chunk's
  // rectangle is gathered a slot per tap (loaded before the tap's multiply, stored after it); its buffer was last
  // read by the previous chunk, before the barrier that ended it. The next stage's B tile streams in during each
  // stage. The first rectangle is gathered kFirstSlots slots at a time, with their loads in flight at once.
  copy_b(0, b_tile[0]);  // first, so that the weights stream in while the first gather waits for its loads
  {
    float s[kQuadK];
    load_styles(0, s);
#pragma unroll
    for (int j0 = 0; j0 < kSlots; j0 += kFirstSlots) {
      T first[kFirstSlots][kQuadK];
#pragma unroll
      for (int j = 0; j < kFirstSlots; ++j)
        if (j0 + j < kSlots) x_first.load(0, pixel(j0 + j), quad_channels(0), first[j]);
#pragma unroll
      for (int j = 0; j < kFirstSlots; ++j)
        if (j0 + j < kSlots) store_slot(j0 + j, first[j], pixel(j0 + j) >= 0, s, halo[0]);
    }
  }
  copy_async_wait();
  __syncthreads();
  int b_cur = 0;
#pragma unroll 1
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const bool next_chunk = chunk + 1 < chunks;
#pragma unroll
    for (int tap = 0; tap < TAPS; ++tap) {
      const int s = chunk * TAPS + tap;
      if (s + 1 < stages) copy_b(s + 1, b_tile[b_cur ^ 1]);
      T part[kSlots][kQuadK];
      if (next_chunk) {
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
          if (slot_tap(j) == tap) load_slot(chunk + 1, j, part[j]);
      }
      multiply(halo[chunk & 1], b_tile[b_cur], tap);
      if (next_chunk) {
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
          if (slot_tap(j) == tap) {
            float styles[kQuadK];
            load_styles(chunk + 1, styles);
            store_slot(j, part[j], true, styles, halo[(chunk + 1) & 1]);
          }
      }
      copy_async_wait();
      __syncthreads();
      b_cur ^= 1;
    }
  }

  // Epilogue in modconv.cu's order. This thread's rows (pixels): warp_m + 16 mi + 8 h + group; its columns
  // (channels): n0 + warp_n + 8 ni + 2 tig + e. Channel by channel, so that each channel's values are loaded once
  // and live briefly (the compiler cannot keep them across the stores, which could alias them as far as it
  // knows). Lanes with one tig store 8 consecutive pixels of a channel.
  // The block's origin again: kept across the main loop, it would cost that loop registers.
  const int ey0 = (block_x_again() / tiles_x) * S::kTileY, ex0 = (block_x_again() % tiles_x) * S::kTileX;
  int pix[2][2];   // the flat output pixel of row [mi][h], or -1 outside the image
  float nz[2][2];  // its noise
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = mi * 16 + 8 * h;
      const int y = ey0 + warp_m / S::kTileX + row / S::kTileX, x = ex0 + row % S::kTileX + group;
      pix[mi][h] = y < p.height && x < p.width ? y * p.width + x : -1;
      nz[mi][h] = p.noise && pix[mi][h] >= 0
                      ? p.noise[(long long)b * p.noise_sample_stride + pix[mi][h]]
                      : 0.0f;
    }
  float rgb[4][kMaxFusedRgb] = {};  // RGB: this thread's ToRGB partial sums per row [2 mi + h] and rgb channel
  // Values of rows outside the image are finished too (from zeros: harmless, and no branch per value); only their
  // stores are skipped, and their ToRGB sums are never written.
  auto finish = [&](auto store) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int o = n0 + warp_n + ni * 8 + 2 * tig + e;
        if (o >= p.out_channels) continue;
        const ChannelValues<RGB> ch(p, b, o);
        const long long y_channel = ((long long)b * p.out_channels + o) * hw;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float v = modconv_finish(p, acc[mi][ni][2 * h + e], ch.dcoef, nz[mi][h], ch.bias);
            if constexpr (RGB) {
              v = store.rounded(v);
              ch.add_rgb(v, rgb[2 * mi + h]);
            }
            if (pix[mi][h] < 0) continue;
            if constexpr (KS == 1) v = add_skip(p, v, b, p.out_channels, o, pix[mi][h]);  // ToRGB: the skip image
            store(p.y, y_channel + pix[mi][h], v);
          }
      }
  };
  // With RGB, y may be null: the layer's output is then read by nothing but the fused ToRGB (the last block).
  if constexpr (RGB)
    with_output_store(p.y, p.y_dtype, finish);
  else
    with_output_type(p.y_dtype, finish);
  if constexpr (RGB) {
    // Sum a row's partials over the 4 lanes that share it (one tig each), leaving lane tig row [tig / 2][tig % 2]
    // of the four, so the rows are finished side by side. With two warps along N, the warp_n 32 warps' sums join
    // through shared memory, whose tiles are free: the main loop's last barrier follows its last read of them.
    const int row = warp_m + 16 * (tig / 2) + group + 8 * (tig % 2);  // the block row of lane tig's row
    const int row_y = ey0 + row / S::kTileX, row_x = ex0 + row % S::kTileX;
    const int row_pix = row_y < p.height && row_x < p.width ? row_y * p.width + row_x : -1;
    const SkipPixel skip(p, skip_taps_at(p, row_y, row_x), b, p.rgb_channels, warp_n == 0 && row_pix >= 0);
    float sum[kMaxFusedRgb];
    quad_row_sums(rgb, tig, sum);
    if constexpr (S::kWarpsN == 2) {
      static_assert(kMaxFusedRgb == 4, "a row's sums are one float4");
      float4* const partial = reinterpret_cast<float4*>(halo);  // [kBlockM rows]
      if (warp_n != 0) partial[row] = make_float4(sum[0], sum[1], sum[2], sum[3]);
      __syncthreads();
      if (warp_n != 0) return;
      const float4 other = partial[row];
      sum[0] += other.x, sum[1] += other.y, sum[2] += other.z, sum[3] += other.w;
    }
    if (row_pix < 0) return;
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c)
      if (c < p.rgb_channels) {
        const float v = clamp_keep_nan(sum[c] + p.rgb_bias[c], p.rgb_clamp);
        p.rgb[((long long)b * p.rgb_channels + c) * hw + row_pix] = skip.add(p, v, c);
      }
  }
}

}  // namespace modconv_tc

// ---------------------------------------------------------------------------------------------------------------
// The fused up-sampling 3x3 conv: modconv_up2_3x3 (modconv.cu) with its GEMM on the tensor cores. A block takes one
// sample, 16 output channels and a patch of 8 x 16 input positions (rows py0.., cols px0.., zero outside the image),
// and writes a 12 x 28 output tile:
// - GEMM z[position][column], M = 128 positions, K = input channels in stages of 16 words (two mma K steps),
//   N = 16 channels x 9 taps = 144 columns = 18 n8 tiles, no padding taps. 8 warps: 4 along M (an m16 tile is one
//   patch row, a warp takes two), 2 along N (8 channels each). A warp's 72 columns are tap-major (column
//   tap * 8 + channel), so its n8 tile t holds tap t and the scatter knows every accumulator's tap at compile time.
//   Each A element (a load, a style multiply, a conversion) feeds 144 multiply-adds, and needs no halo: the taps
//   are columns, not shifted reads.
// - Scatter into T[channel][16][32], rows/cols 0..15 / 0..31 of the patch's transposed-conv output (tap (ky, kx) of
//   position (y, x) lands on T[2y + ky][2x + kx]), over the GEMM tiles' shared memory, in four phases whose targets
//   are distinct within each phase: the taps with ky, kx < 2 cover every element exactly once and store; then the
//   kx = 2, the ky = 2 and the (2, 2) taps add. Values for row 16 or col 32 are dropped: the blur reads rows 1..15
//   and cols 1..31 only (the complete ones).
// - Blur and epilogue in f32, in modconv_up2_3x3's order of blur taps and epilogue steps: a thread takes 6 rows x 4
//   columns of one channel's output tile and blurs each of its T rows horizontally once.
// The main loop follows modconv_tc's same-resolution kernels: A tile [position][16 words] and B tile [column][16
// words] (rows padded to kRow, as there), fragments by ldmatrix, B by cp.async, one barrier per stage. The next
// stage's A is gathered in four parts of 2 words (one 64-bit store) of one position, a part between the mma of one
// m16 tile and K step: loaded before them, scaled, converted and stored after. Warp g gathers word quad g % 4, so
// its channels and styles are warp-uniform, and lane l the positions 64 (g / 4) + l and 32 further. Why 16 channels:
// 16 x 9 taps fill n8 tiles exactly. The 72 accumulators leave room for little else within 128 registers, the cap at
// which two blocks share an SM and one block's gather latency, barriers, scatter and blur overlap the other's mma
// work; the gather's parts are small for that reason. Shared memory: the double-buffered GEMM tiles (43.5 KB; T,
// 16 x 520 floats, reuses them after the K loop) and the sample's styles (up to 4.2 KB).
//
// Weight packing (conv.rs, pack_up2_words), n-major for ldmatrix like pack_same_words: words [stages][O rounded up
// to 16, times 9 (weight_stride)][16]; channel block ob's 144 columns, in order (half, tap, c), hold W[o = 16 ob +
// 8 half + c, i, tap]. K is aligned to its end: word w of stage s holds the input channel i = 16 s + w - pad (tf32)
// or the pair i = 2 (16 s + w) - pad, i + 1 (f16/bf16), where pad rounds the input channels up to whole stages;
// zeros outside the layer's channels. fp16 layers that demodulate are prescaled as above.
namespace modconv_up_tc {
using namespace up2_tile;
constexpr int kThreads = 256;
constexpr int kBlockM = PY * PX;
constexpr int kTaps = 9, kBlockN = kChannels * kTaps;
constexpr int kWarpM = 32, kWarpChannels = 8;
constexpr int kStageWords = 16;                           // two mma K steps of 8 words
constexpr int kQuadWords = 4;                             // the words of a gather item
constexpr int kPartWords = 2, kParts = kQuadWords / kPartWords;  // an item is gathered in two parts
constexpr int kRow = kStageWords + 4;                     // as modconv_tc::kRow: conflict-free ldmatrix and stores
constexpr int kQuads = kStageWords / kQuadWords;          // word quads per position and stage
constexpr int kItems = kBlockM * kQuads / kThreads;       // gather items per thread and stage
constexpr int kCopiesB = kBlockN * kStageWords / 4;       // 16-byte B copies per stage
constexpr int kMaxInChannels = 1024;  // the styles of a sample are staged in shared memory (conv.rs checks)
constexpr int kTileA = kBlockM * kRow, kTileB = kBlockN * kRow;
constexpr int kGemmWords = 2 * kTileA + 2 * kTileB;
constexpr int kSmemWords = kGemmWords > kChannels * kPlaneT ? kGemmWords : kChannels * kPlaneT;
static_assert(kWarpM == 2 * PX && (kBlockM / kWarpM) * 2 * 32 == kThreads, "4 x 2 warps, two patch rows each");
static_assert(kItems == kStageWords / 8 && kParts == kWarpM / 16, "item j: K step j; part h: m16 tile h");
static_assert(PX == 16, "a thread's two gather items are two patch rows apart");
static_assert(kThreads / 32 == 2 * kQuads && kQuads == 4 && kBlockM == 2 * kItems * 32,
              "warp g gathers quad g % 4 of half g / 4 of the positions");
static_assert(kStageWords / 4 == 4, "a column's B row is four 16-byte copies");

template <class Mode>
__device__ void up2_impl(const ModconvParams& p) {
  constexpr int kPerWord = Mode::kPerWord;
  constexpr int kStageK = kStageWords * kPerWord;  // input channels per stage
  constexpr int kQuadK = kQuadWords * kPerWord;    // input channels per gather item
  constexpr int kPartK = kPartWords * kPerWord;    // input channels per part of an item
  __align__(16) __shared__ unsigned smem[kSmemWords];
  __align__(16) __shared__ float style_k[kMaxInChannels + kStageWords * 2];  // see the gather below
  unsigned* const a_tiles = smem;
  unsigned* const b_tiles = smem + 2 * kTileA;

  // Bit operations, not / and %: the compiler does not know tid >= 0, and signed division costs several
  // instructions wherever it recomputes an index rather than hold it in a register.
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int group = lane >> 2, tig = lane & 3;
  const int warp_m = warp & 3, warp_n = warp >> 2;
  const int b = blockIdx.z, o0 = blockIdx.y * kChannels;
  const int oy0 = (blockIdx.x / p.tiles_x) * OY, ox0 = (blockIdx.x % p.tiles_x) * OX;
  const int py0 = oy0 / 2 - 1, px0 = ox0 / 2 - 1;  // patch origin (input position of T rows/cols 0..2)
  const int hw = p.height * p.width;
  const int k_words = (p.in_channels + kPerWord - 1) / kPerWord;
  const int stages = (k_words + kStageWords - 1) / kStageWords;

  // The gather (see above): this thread's items are A rows (positions) row0 and row0 + 32, two patch rows apart;
  // x_row0 points at the first in the plane of the quad's first channel in stage 0 (positions outside the image
  // are not read, and their words are stored as zeros). K is aligned to its end: stage s holds channels
  // kStageK s - pad .., so only stage 0 can be partial (its channels below 0 are zeros) and the loop gathers
  // unchecked. The styles of the sample wait in shared memory in that order, zero below channel 0. Values are
  // loaded as stored in x, then scaled by the styles and converted when they are written to shared memory.
  using X = typename Mode::Act;  // x's element type: f32, or the mode's 16-bit type
  using Elem = typename X::T;
  const int pad = stages * kStageK - p.in_channels;
  for (int c = tid; c < stages * kStageK; c += kThreads)
    style_k[c] = c >= pad ? p.styles[(long long)b * p.in_channels + c - pad] : 0.0f;
  __syncthreads();
  const int quad = warp & (kQuads - 1), row0 = (warp >> 2) * 64 + lane;
  const int quad_channel = quad * kQuadK - pad;  // the quad's first channel in stage 0 (negative: padding)
  bool inside[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int row = row0 + 32 * j, gy = py0 + row / PX, gx = px0 + row % PX;
    inside[j] = gy >= 0 && gy < p.height && gx >= 0 && gx < p.width;
  }
  const int item_rows = 32 / PX * p.width;  // from item 0 to item 1 in an x plane
  const Elem* const x_row0 = static_cast<const Elem*>(p.x) + ((long long)b * p.in_channels + quad_channel) * hw +
                             (py0 + row0 / PX) * p.width + px0 + row0 % PX;
  // Part h (words 2 h, 2 h + 1 of the quad) of item j of `stage`. First: stage 0, whose channels below 0 (a
  // warp-uniform count) are not read.
  auto load_part = [&](bool first, int stage, int j, int h, Elem (&v)[kPartK]) {
    const int c0 = stage * kStageK + h * kPartK;  // the part's first channel, relative to the quad's
    const Elem* xc = x_row0 + (long long)c0 * hw + j * item_rows;
#pragma unroll
    for (int k = 0; k < kPartK; ++k, xc += hw)
      if (inside[j] && (!first || quad_channel + c0 + k >= 0)) v[k] = *xc;
  };
  auto store_part = [&](bool first, int stage, int j, int h, const Elem (&v)[kPartK], unsigned* at) {
    const int c0 = stage * kStageK + h * kPartK;
    const float* const sc = style_k + stage * kStageK + quad * kQuadK + h * kPartK;
    unsigned w[kPartWords];
#pragma unroll
    for (int k = 0; k < kPartWords; ++k) {
      float scaled[kPerWord];
#pragma unroll
      for (int e = 0; e < kPerWord; ++e) {
        const int c = k * kPerWord + e;
        scaled[e] = !first || quad_channel + c0 + c >= 0 ? X::load(&v[c]) * sc[c] : 0.0f;
      }
      w[k] = inside[j] ? Mode::word(scaled) : 0u;
    }
    uint2 u;
    u.x = w[0], u.y = w[1];
    *reinterpret_cast<uint2*>(at + (row0 + 32 * j) * kRow + quad * kQuadWords + h * kPartWords) = u;
  };

  const unsigned* const weight =
      reinterpret_cast<const unsigned*>(p.weight) + (long long)blockIdx.y * kBlockN * kStageWords;
  // B copy q of a stage: column q / 4, words 4 (q % 4) ..; thread tid makes copies tid, tid + kThreads, ..., which
  // are kThreads / 4 columns apart in shared memory.
  const int b_copy = (tid >> 2) * kRow + (tid & 3) * 4;
  auto copy_b = [&](int stage, unsigned* bt) {
    const unsigned* const rows = weight + (long long)stage * p.weight_stride * kStageWords + tid * 4;
#pragma unroll
    for (int j = 0; j < (kCopiesB + kThreads - 1) / kThreads; ++j)
      if ((j + 1) * kThreads <= kCopiesB || tid + j * kThreads < kCopiesB)
        copy16_async(bt + b_copy + j * (kThreads / 4) * kRow, rows + j * kThreads * 4);
  };

  float acc[2][kTaps][4];  // [m16 tile: patch row 2 warp_m + mi][n8 tile: tap][C fragment register]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int t = 0; t < kTaps; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][t][i] = 0.0f;

  // One K step (words ks..ks + 7) of the stage in buffer `buf`. ldmatrix lanes as in modconv_tc: for A, quarter j
  // of m16 tile mi is its rows 8 (j & 1) .. and words 4 (j >> 1) ..; for B, quarter j of the n8 tile pair (t, t + 1)
  // is tile t + (j >> 1), words 4 (j & 1) ..; the ninth tile is an x2 (quarters 0 and 1).
  const int quarter = lane >> 3, quarter_row = lane & 7;
  const int a_lane = (warp_m * kWarpM + 8 * (quarter & 1) + quarter_row) * kRow + 4 * (quarter >> 1);
  const int b_lane = (warp_n * kWarpChannels * kTaps + 8 * (quarter >> 1) + quarter_row) * kRow + 4 * (quarter & 1);
  auto multiply = [&](int buf, int ks, int mi) {
    const unsigned* const bt = b_tiles + buf * kTileB + b_lane + ks;
    unsigned a_frag[4];
    ldmatrix(a_frag, a_tiles + buf * kTileA + a_lane + ks + mi * 16 * kRow);
#pragma unroll
    for (int t = 0; t < kTaps; t += 2) {
      unsigned bf[4];
      if (t + 1 < kTaps) {
        ldmatrix(bf, bt + t * 8 * kRow);
      } else {
        unsigned last[2];
        ldmatrix(last, bt + t * 8 * kRow);
        bf[0] = last[0], bf[1] = last[1];
      }
#pragma unroll
      for (int u = 0; u < 2 && t + u < kTaps; ++u) Mode::mma(acc[mi][t + u], a_frag, &bf[2 * u], acc[mi][t + u]);
    }
  };

  // Stage `stage` is multiplied out of buffer stage & 1 while stage + 1 (if `gather`) is gathered into the other
  // buffer, a part per m16 tile and K step: loaded before its mma, stored after them. B streams in meanwhile.
  auto run_stage = [&](bool gather, int stage, int cur) {
    if (gather) copy_b(stage + 1, b_tiles + (cur ^ 1) * kTileB);
#pragma unroll
    for (int j = 0; j < kItems; ++j)
#pragma unroll
      for (int h = 0; h < kParts; ++h) {
        Elem v[kPartK];
        if (gather) load_part(false, stage + 1, j, h, v);
        multiply(cur, 8 * j, h);
        if (gather) store_part(false, stage + 1, j, h, v, a_tiles + (cur ^ 1) * kTileA);
      }
    copy_async_wait();
    __syncthreads();
  };
  copy_b(0, b_tiles);  // first, so that the weights stream in while the first gather waits for its loads
#pragma unroll
  for (int j = 0; j < kItems; ++j)
#pragma unroll
    for (int h = 0; h < kParts; ++h) {
      Elem v[kPartK];
      load_part(true, 0, j, h, v);
      store_part(true, 0, j, h, v, a_tiles);
    }
  copy_async_wait();
  __syncthreads();
#pragma unroll 1
  for (int stage = 0; stage < stages - 1; ++stage) run_stage(true, stage, stage & 1);
  run_stage(false, stages - 1, (stages - 1) & 1);

  // Scatter. This lane's accumulator acc[mi][t][2 h + e] is tap t of position (2 warp_m + mi, group + 8 h) and
  // channel warp_n * 8 + 2 tig + e. Phase (ky == 2) * 2 + (kx == 2) of each tap; phase 0 stores, the rest add.
  // Phase 0 stores taps (ky, 0) and (ky, 1) together (scatter_taps); paired adds in phase 2 spill on sm_80-89.
  float* const T = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int phase = 0; phase < 4; ++phase) {
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      const int ky = t / 3, kx = t % 3;
      const bool pair = phase == 0 && kx == 0;
      if ((ky == 2) * 2 + (kx == 2) != phase || (phase == 0 && kx == 1)) continue;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int ty = 2 * (2 * warp_m + mi) + ky, tx = 2 * (group + 8 * h) + kx;
          if (ty >= TY || tx >= TX) continue;
#pragma unroll
          for (int e = 0; e < 2; ++e)
            scatter_taps(&T[(warp_n * kWarpChannels + 2 * tig + e) * kPlaneT + ty * kRowT + tx], pair,
                         acc[mi][t][2 * h + e], pair ? acc[mi][t + 1][2 * h + e] : 0.0f, phase == 0);
        }
    }
    __syncthreads();
  }

  // Blur the complete part of T into the output tile, then the epilogue.
  static_assert(up2_tile::kBlurItems <= kThreads, "one blur item per thread");
  up2_tile::blur_epilogue(p, T, tid, b, o0, oy0, ox0);
}

}  // namespace modconv_up_tc

// Grid: (rectangles per sample, ceil(out_channels / kBlockN), batch); 128 threads. The plain names take the 8 x 8
// x 64 Square, the _n32 ones the 8 x 16 x 32 Wide shape (layers with at most 32 outputs). The _torgb kernels also
// compute the ToRGB after the layer (ModconvParams::rgb); their grid has one block column. The 3x3 kernels allow
// 168 registers (three blocks per SM): the unrolled taps take about 160, and at 128 (four blocks) ptxas spilled a
// few bytes in some modes and architectures.
namespace tc = modconv_tc;
KERNEL_BOUNDED(modconv_3x3_tf32, ModconvParams, 128, 3) { tc::same_impl<3, tc::Tf32, tc::Square>(p); }
KERNEL_BOUNDED(modconv_3x3_f16, ModconvParams, 128, 3) { tc::same_impl<3, tc::F16, tc::Square>(p); }
KERNEL_BOUNDED(modconv_3x3_bf16, ModconvParams, 128, 3) { tc::same_impl<3, tc::Bf16, tc::Square>(p); }
KERNEL_BOUNDED(modconv_3x3_n32_tf32, ModconvParams, 128, 3) { tc::same_impl<3, tc::Tf32, tc::Wide>(p); }
KERNEL_BOUNDED(modconv_3x3_n32_f16, ModconvParams, 128, 3) { tc::same_impl<3, tc::F16, tc::Wide>(p); }
KERNEL_BOUNDED(modconv_3x3_n32_bf16, ModconvParams, 128, 3) { tc::same_impl<3, tc::Bf16, tc::Wide>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_tf32, ModconvParams, 128, 3) { tc::same_impl<3, tc::Tf32, tc::Square, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_f16, ModconvParams, 128, 3) { tc::same_impl<3, tc::F16, tc::Square, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_bf16, ModconvParams, 128, 3) { tc::same_impl<3, tc::Bf16, tc::Square, true>(p); }
// The 1024 px conv1 with its ToRGB: 32 input channels are a single chunk, so its first gather is all of its gather
// and nothing overlaps its loads; at 3 blocks per SM it stalls on them (Nsight Compute on an H200: 0.67 eligible
// warps per scheduler, 33 instructions per mma). 4 blocks per SM, in 128 registers; sm_80's code would spill there,
// so it keeps 3. The 16-bit kernels gather their 6 halo slots 3 at a time (two rounds of loads in flight rather than
// six); tf32, whose 32 channels are two chunks, one at a time. (2 at a time spills at 128: ptxas is at its edge.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 800
#define TORGB_N32_BLOCKS 3
#else
#define TORGB_N32_BLOCKS 4
#endif
KERNEL_BOUNDED(modconv_3x3_torgb_n32_tf32, ModconvParams, 128, TORGB_N32_BLOCKS) { tc::same_impl<3, tc::Tf32, tc::Wide, true, 1>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n32_f16, ModconvParams, 128, TORGB_N32_BLOCKS) { tc::same_impl<3, tc::F16, tc::Wide, true, 3>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n32_bf16, ModconvParams, 128, TORGB_N32_BLOCKS) { tc::same_impl<3, tc::Bf16, tc::Wide, true, 3>(p); }
KERNEL_BOUNDED(modconv_1x1_tf32, ModconvParams, 128, 3) { tc::same_impl<1, tc::Tf32, tc::Square>(p); }
KERNEL_BOUNDED(modconv_1x1_f16, ModconvParams, 128, 3) { tc::same_impl<1, tc::F16, tc::Square>(p); }
KERNEL_BOUNDED(modconv_1x1_bf16, ModconvParams, 128, 3) { tc::same_impl<1, tc::Bf16, tc::Square>(p); }
KERNEL_BOUNDED(modconv_1x1_n32_tf32, ModconvParams, 128, 3) { tc::same_impl<1, tc::Tf32, tc::Wide>(p); }
KERNEL_BOUNDED(modconv_1x1_n32_f16, ModconvParams, 128, 3) { tc::same_impl<1, tc::F16, tc::Wide>(p); }
KERNEL_BOUNDED(modconv_1x1_n32_bf16, ModconvParams, 128, 3) { tc::same_impl<1, tc::Bf16, tc::Wide>(p); }

// Grid: (tiles_y * tiles_x output tiles of 12 x 28, ceil(out_channels / 16), batch); 256 threads, two blocks per SM.
KERNEL_BOUNDED(modconv_up2_3x3_tf32, ModconvParams, 256, 2) { modconv_up_tc::up2_impl<modconv_tc::Tf32>(p); }
KERNEL_BOUNDED(modconv_up2_3x3_f16, ModconvParams, 256, 2) { modconv_up_tc::up2_impl<modconv_tc::F16>(p); }
KERNEL_BOUNDED(modconv_up2_3x3_bf16, ModconvParams, 256, 2) { modconv_up_tc::up2_impl<modconv_tc::Bf16>(p); }
