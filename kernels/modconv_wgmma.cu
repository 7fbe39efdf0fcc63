// The same-resolution 3x3 modulated convolution on sm_90's warpgroup tensor-core instructions (wgmma.cuh, compiled
// for sm_90a only; conv.rs launches these on compute capability 9.0 for fp16 and bf16, and modconv_tc.cu's mma.sync
// kernels everywhere else). Same parameters, semantics and epilogue order as modconv_3x3_f16 / _bf16 (and with
// _torgb, the ToRGB after the layer fused into the epilogue as there): an implicit GEMM with M = pixels, N = output
// channels, K = input channels x 9 taps.
//
// A block (two warpgroups, 256 threads) computes an 8 x 16 rectangle of one sample's output pixels (blockIdx.x) for N
// output channels (blockIdx.y): 128, or 64 and 32 (the _n64 and _n32 kernels) for layers with at most 64 or 32, so no
// mma work is spent on channels they do not have. Warpgroup g takes the rectangle's columns 8 g .. 8 g + 7, an m64nN
// product. K runs in chunks of 32 input channels. A chunk's input rectangle with its 1-pixel halo (10 x 18 pixels,
// stored in rows of 24 from 3 columns further left: the gather's aligned runs of 4) is gathered from x once, scaled
// by the styles and rounded (with N = 32 or 64, whose weights are per sample and already scaled, as stored), into
// shared memory as wgmma's core matrices want it: cells of 16 bytes (8 channels of one pixel), [channel group][row]
// [column]. Then the 8 consecutive pixels of a rectangle row are one core matrix's 8 rows, rows are SBO = 24 cells
// apart, channel groups LBO = 240 cells apart, and tap (dy, dx) of a warpgroup's A is that layout started
// dy * 24 + dx cells further: each tap is one K stage whose A the tensor cores read in place, with no im2col and no
// fragment in registers. B is a stage's weight tile, [channel group][output channel] cells (SBO 8 cells,
// LBO N), copied with cp.async. The K loop runs a chunk at a time: its 9 B stages and its rectangle land together,
// one barrier, 18 products in a row, while the next chunk's rectangle (and with N = 64 its B) go into the other
// buffers. Shared memory is dynamic (over 48 KB).
// The fused up-sampling conv (up2_wgmma, below) and the per-sample weights (modconv_sample_weights) follow.
//
// Weight packing (conv.rs, wgmma_groups of pack_same_words): 32-bit words [chunks * 9][4 channel groups]
// [out_channels rounded up to N (weight_stride)][4]; word w of channel group g and output channel o in stage
// chunk * 9 + tap holds the pair W[o, c, tap], W[o, c + 1, tap] for c = 32 chunk + 8 g + 2 w (low half first), zeros
// past the ends; with per-sample weights, sample b's words (ModconvParams::weight_sample_stride apart) hold the pairs
// times styles[b, c] and styles[b, c + 1]. The fp16 weight prescale of modconv_tc.cu applies.
#include "act.cuh"
#include "common.cuh"
#include "up2_tile.cuh"
#include "wgmma.cuh"

namespace modconv_wgmma {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kTileY = 8, kTileX = 16;
constexpr int kGroups = 4;                           // channel groups (8 channels, 16 bytes) per chunk
constexpr int kChunkK = 8 * kGroups;                 // input channels per chunk
constexpr int kHaloY = kTileY + 2, kHaloX = kTileX + 2;
// The gather's runs of 4 image pixels, from 4 columns left of the rectangle on, cover its halo's rows: kRunsX per
// row, one per lane of a channel group's two warps. Shared memory keeps all their pixels, rows of kRowCells cells
// whose column kHaloLeft is the halo's first, so that each of a run's pixels has a cell and no store is conditional.
constexpr int kRunsX = (3 + kHaloX + 3) / 4, kRuns = kHaloY * kRunsX;
constexpr int kRowCells = 4 * kRunsX, kHaloLeft = 3, kGroupCells = kHaloY * kRowCells;
static_assert(kRuns <= 64, "a run per lane of a channel group's two warps");

// The K loop runs a chunk at a time: a stage's two m64nNk16 products are too short to hide a barrier each (with
// one per stage, the 128-channel kernel's products filled about a third of its K loop's time: BENCHMARKS.md), and
// a chunk's 9 B stages (18, 36 or 72 KB) fit in shared memory at once. So a chunk's B and rectangle land, one barrier,
// its 18 products go back to back, and the next chunk's rectangle (and with N = 64 its B, cp.async) go into the
// other buffers while they run. N = 32 and 128 have one B buffer, so that two blocks (four with N = 32) share an SM
// and one block's B copy overlaps the other's products: N = 32's layers in StyleGAN2 (a conv1 has as many inputs
// as outputs) have one chunk, its 64 registers have no room to spare, and two of N = 128's buffers would leave one
// block per SM.
template <int N>
constexpr int kChunkBBuffers = N == 64 ? 2 : 1;
// The narrow kernels take per-sample weights (ModconvParams::weight_sample_stride), each sample's times its styles:
// layers with at most 64 outputs have small weights, so their per-sample copies stay in L2, and the gather then
// stores x as loaded, with no conversion or multiply.
template <int N>
constexpr bool kSampleWeights = N <= 64;
// Shared memory (dynamic; conv.rs's wgmma_conv_shared_bytes sizes it), in 16-byte cells: a rectangle is
// [kGroups][kHaloY][kRowCells] cells, a B tile [kGroups][N]. Buffer u is a rectangle followed by a chunk's 9 B tiles
// (for u < kChunkBBuffers), at u kChunkUnit. A layer of one chunk has buffer 0 only: the 1024 px conv1's 34 KB then
// let 4 blocks share an SM.
constexpr int kHaloCells = kGroups * kGroupCells;
template <int N>
constexpr int kChunkUnit = kHaloCells + 9 * kGroups * N;
template <int N>
__device__ __forceinline__ int halo_cell(int buf) {
  return buf * kChunkUnit<N>;
}
// B tile `tile`: tap `tile % 9` of chunk buffer `tile / 9`.
template <int N>
__device__ __forceinline__ int b_tile_cell(int tile) {
  return tile / 9 * kChunkUnit<N> + kHaloCells + tile % 9 * kGroups * N;
}

// A cell of 8 16-bit values as loaded, the first in the low half of u.x.
__device__ __forceinline__ uint4 pack_cell(const unsigned short (&v)[8]) {
  return make_uint4(v[0] | unsigned(v[1]) << 16, v[2] | unsigned(v[3]) << 16, v[4] | unsigned(v[5]) << 16,
                    v[6] | unsigned(v[7]) << 16);
}

// The buffer after buf in a ring of `Buffers` buffers.
template <int Buffers>
__device__ __forceinline__ int next_buffer(int buf) {
  return buf + 1 == Buffers ? 0 : buf + 1;
}

// The B stages of both kernels: a stage's tile is [channel group][column] cells, the block's columns col0 ..
// col0 + Cols - 1 of the packed weight (the block's sample's, with per-sample weights), copied with cp.async. This
// thread's copies are cells tid + j kThreads.
template <int Cols>
struct BStages {
  static constexpr int kCells = kGroups * Cols, kCopies = (kCells + kThreads - 1) / kThreads;
  const uint4* src[kCopies];  // this thread's cells in stage 0
  int stride;                 // cells per channel group of a stage (ModconvParams::weight_stride)

  __device__ BStages(const ModconvParams& p, int col0) : stride(p.weight_stride) {
    const uint4* const weight =
        reinterpret_cast<const uint4*>(p.weight + blockIdx.z * p.weight_sample_stride) + col0;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const int cell = threadIdx.x + j * kThreads;
      src[j] = weight + (cell / Cols) * stride + cell % Cols;
    }
  }
  __device__ void copy(uint4* tile, int stage) const {
    const long long stage_cells = (long long)stage * kGroups * stride;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const int cell = threadIdx.x + j * kThreads;
      if ((j + 1) * kThreads <= kCells || cell < kCells) copy16_async(tile + cell, src[j] + stage_cells);
    }
  }
};

struct F16 {
  using Act = ActF16;
  static constexpr bool kBf16 = false;
  __device__ static unsigned word(float lo, float hi) { return pack_half2(lo, hi); }
};
struct Bf16 {
  using Act = ActBf16;
  static constexpr bool kBf16 = true;
  __device__ static unsigned word(float lo, float hi) { return pack_bfloat162(lo, hi); }
};

// The epilogue's values of the block's N output channels, made once per block by N threads (the epilogue's threads
// would each load and test them per channel: about 30 instructions a channel): the demodulation coefficient and
// bias (1 and 0 where the layer has none), and with RGB the fused ToRGB's weights times its style. Channels past
// the layer are zeros. Thread c < N loads channel c's values (Entry) when the block starts and puts them in the
// table after its first gather, so that their loads wait alongside the gather's.
template <int N, bool RGB>
struct ChannelTable {
  static_assert(kMaxFusedRgb == 4, "a channel's ToRGB weights are one float4");
  struct Entry {
    float2 dcoef_bias;
    float4 rgb_weight;
  };
  float2 dcoef_bias[N];
  float4 rgb_weight[RGB ? N : 1];

  __device__ static Entry load(const ModconvParams& p, int b, int n0) {
    const int o = n0 + threadIdx.x;
    Entry e{make_float2(0.0f, 0.0f), make_float4(0.0f, 0.0f, 0.0f, 0.0f)};
    if (threadIdx.x >= N || o >= p.out_channels) return e;
    e.dcoef_bias = make_float2(p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f, p.bias ? p.bias[o] : 0.0f);
    if constexpr (RGB) {
      const float style = p.rgb_styles[b * p.out_channels + o];
      float w[kMaxFusedRgb];
#pragma unroll
      for (int k = 0; k < kMaxFusedRgb; ++k)
        w[k] = k < p.rgb_channels ? p.rgb_weight[k * p.out_channels + o] * style : 0.0f;
      e.rgb_weight = make_float4(w[0], w[1], w[2], w[3]);
    }
    return e;
  }
  __device__ void put(const Entry& e) {
    const int c = threadIdx.x;
    if (c >= N) return;
    dcoef_bias[c] = e.dcoef_bias;
    if constexpr (RGB) rgb_weight[c] = e.rgb_weight;
  }
  // Adds channel c's output at a pixel, as stored, to the pixel's ToRGB partial sums (sums past rgb_channels, with
  // zero weights, are never read).
  __device__ void add_rgb(int c, float stored, float (&rgb)[kMaxFusedRgb]) const {
    const float4 w = rgb_weight[c];
    rgb[0] += stored * w.x, rgb[1] += stored * w.y, rgb[2] += stored * w.z, rgb[3] += stored * w.w;
  }
};

// RGB: also the ToRGB after the layer (ModconvParams::rgb; N >= out_channels, so a warp holds all of a pixel's
// channels), from y as stored.
template <class Mode, int N, bool RGB = false>
__device__ void conv3x3(const ModconvParams& p) {
  DYNAMIC_SHARED(uint4, smem);
  using X = typename Mode::Act;
  using T = typename X::T;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int hw = p.height * p.width;
  const int tiles_x = (p.width + kTileX - 1) / kTileX;
  const int b = blockIdx.z;
  const int n0 = blockIdx.y * N;
  const int chunks = (p.in_channels + kChunkK - 1) / kChunkK;

  // The gather: warps w and w + 4 stage channel group w % 4 of the chunk. Lane r = 32 (w / 4) + lane (< kRuns) takes
  // a run of 4 image pixels in halo row r / kRunsX from halo column 4 (r % kRunsX) - 3 on, loaded as stored in x,
  // and stores those in the halo as 16-byte cells. Where the width is a multiple of 4 (every StyleGAN2 layer) a run
  // is aligned (the rectangle's first column is a multiple of 16) and inside or outside the image as a whole: one
  // 8-byte load per channel, where a load per pixel took four. Channels and styles are warp-uniform.
  const int group = warp % kGroups;
  const int run = 32 * (warp / kGroups) + lane;
  // The run's halo row and the halo column of its first pixel, derived where used (kept, they cost spills).
  auto run_row = [&] { return run / kRunsX; };
  auto run_col = [&] { return 4 * (run % kRunsX) - kHaloLeft; };
  const bool aligned_runs = p.width % 4 == 0;
  const SampleChannels<T> x_group(p, b, 8 * group);
  const float* const styles_group = p.styles + (long long)b * p.in_channels + 8 * group;
  auto group_channels = [&](int chunk) { return p.in_channels - chunk * kChunkK - 8 * group; };
  // The run's first pixel: its offset in a plane, and in bit e whether pixel e is in the image (pixels outside it,
  // and runs past kRuns, load as zeros). From the rectangle's origin read afresh (block_x_again): kept across the
  // K loop for the next chunk's gather, these values cost the 32-channel kernels spills.
  auto load_run = [&](int chunk, uint2 (&v)[8]) {
    const int iy = block_x_again() / tiles_x * kTileY - 1 + run_row();
    const int ix = block_x_again() % tiles_x * kTileX - 1 + run_col();
    unsigned inside = 0;
    if (run < kRuns && iy >= 0 && iy < p.height) {
#pragma unroll
      for (int e = 0; e < 4; ++e) inside |= unsigned(ix + e >= 0 && ix + e < p.width) << e;
    }
    x_group.load_run(chunk * kChunkK, iy * p.width + ix, group_channels(chunk), inside, aligned_runs, v);
  };
  // Into rectangle buffer buf: the run's 4 cells. Zeros load as zeros, so a pixel outside the image is stored as
  // zeros (times the styles: finite, as every output depends on them).
  auto store_run = [&](int chunk, int buf, const uint2 (&v)[8]) {
    if (run >= kRuns) return;
    float s[8];
    if constexpr (!kSampleWeights<N>) {
      const int n = group_channels(chunk);
#pragma unroll
      for (int k = 0; k < 8; ++k) s[k] = k < n ? styles_group[chunk * kChunkK + k] : 0.0f;
    }
    // This lane's cells, from its index read afresh (kept across the K loop, they cost the 32-channel kernels a spill).
    const int r = thread_x_again() / 128 * 32 + thread_x_again() % 32;
    uint4* const cells = smem + halo_cell<N>(buf) + group * kGroupCells + r / kRunsX * kRowCells + 4 * (r % kRunsX);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      auto word = [&](int k) { return e < 2 ? v[k].x : v[k].y; };  // channel k's word holding pixel e
      uint4 u;
      if constexpr (kSampleWeights<N>) {
        u = make_uint4(pair_halves(word(0), word(1), e % 2), pair_halves(word(2), word(3), e % 2),
                       pair_halves(word(4), word(5), e % 2), pair_halves(word(6), word(7), e % 2));
      } else {
        T c[8];  // pixel e's 8 channels
#pragma unroll
        for (int k = 0; k < 8; ++k) c[k] = T(word(k) >> (16 * (e % 2)));
        u.x = Mode::word(X::load(&c[0]) * s[0], X::load(&c[1]) * s[1]);
        u.y = Mode::word(X::load(&c[2]) * s[2], X::load(&c[3]) * s[3]);
        u.z = Mode::word(X::load(&c[4]) * s[4], X::load(&c[5]) * s[5]);
        u.w = Mode::word(X::load(&c[6]) * s[6], X::load(&c[7]) * s[7]);
      }
      cells[e] = u;
    }
  };

  __shared__ ChannelTable<N, RGB> channels;
  const BStages<N> b_stages(p, n0);
  auto copy_b = [&](int stage, int tile) { b_stages.copy(smem + b_tile_cell<N>(tile), stage); };

  // Descriptors, moved by adding offsets in 16-byte cells: A of warpgroup g starts at its 8 columns of the
  // rectangle (tap (0, 0) reads the halo's first row and column there); a K step of 16 channels is two channel
  // groups.
  const int wg = warpgroup_index();
  const unsigned long long a_base =
      wgmma_descriptor(smem, 16 * (8 * wg + kHaloLeft), 16 * kGroupCells, 16 * kRowCells);
  const unsigned long long b_base = wgmma_descriptor(smem, 0, 16 * N, 16 * 8);
  auto a_desc = [&](int buf, int tap, int ks) {
    return wgmma_descriptor_moved(a_base, halo_cell<N>(buf) + 2 * ks * kGroupCells + (tap / 3) * kRowCells + tap % 3);
  };
  auto b_desc = [&](int tile, int ks) { return wgmma_descriptor_moved(b_base, b_tile_cell<N>(tile) + 2 * ks * N); };

  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.0f;

  auto copy_chunk_b = [&](int chunk, int buf) {  // the chunk's 9 stages into chunk buffer buf
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) copy_b(chunk * 9 + tap, 9 * buf + tap);
  };
  // The first B stages first, so that the weights stream in while the first gather waits for its loads.
  copy_chunk_b(0, 0);
  const typename ChannelTable<N, RGB>::Entry channel = ChannelTable<N, RGB>::load(p, b, n0);
  {
    uint2 first[8];
    load_run(0, first);
    store_run(0, 0, first);
  }
  channels.put(channel);  // published by the barrier below
  copy_async_wait();
  wgmma_fence_shared_writes();
  __syncthreads();
  // Chunk `chunk` from rectangle buffer `buf` (chunk % 2) and B buffer b_buf. With two B buffers, buf is a
  // Constant<0 or 1>, so that the descriptors are constants; with one (N = 32 has no registers to spare for twice
  // the code) it is an int.
  auto run_chunk = [&](int chunk, auto buf_index) {
    const int buf = buf_index, other = 1 - buf;
    const int b_buf = kChunkBBuffers<N> == 2 ? buf : 0;
    const bool next_chunk = chunk + 1 < chunks;
    // The next chunk's B (where it has a buffer of its own) and rectangle go into the other buffers, which the
    // previous chunk's products (ended before the last barrier) read.
    if (kChunkBBuffers<N> == 2 && next_chunk) copy_chunk_b(chunk + 1, other);
    wgmma_fence();
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      wgmma_m64k16<N, Mode::kBf16>(acc, a_desc(buf, tap, 0), b_desc(9 * b_buf + tap, 0));
      wgmma_m64k16<N, Mode::kBf16>(acc, a_desc(buf, tap, 1), b_desc(9 * b_buf + tap, 1));
    }
    wgmma_commit();
    if (next_chunk) {
      uint2 part[8];
      load_run(chunk + 1, part);
      store_run(chunk + 1, other, part);
    }
    wgmma_wait<0>(acc);
    if (next_chunk) {
      if constexpr (kChunkBBuffers<N> == 1) {
        __syncthreads();  // every warpgroup's products have read B
        copy_chunk_b(chunk + 1, 0);
      }
      copy_async_wait();
      wgmma_fence_shared_writes();
      __syncthreads();
    }
  };
  if constexpr (kChunkBBuffers<N> == 2) {
#pragma unroll 1
    for (int chunk = 0; chunk < chunks; chunk += 2) {
      run_chunk(chunk, Constant<0>{});
      if (chunk + 1 < chunks) run_chunk(chunk + 1, Constant<1>{});
    }
  } else {
#pragma unroll 1
    for (int chunk = 0; chunk < chunks; ++chunk) run_chunk(chunk, chunk & 1);
  }

  // Epilogue in modconv.cu's order. Warp w of warpgroup wg holds rectangle rows 2 (w % 4) + h, column 8 wg +
  // groupID, and channels n0 + 8 j + 2 tig + e in acc[4 j + 2 h + e] (wgmma.cuh). Channel by channel, each
  // channel's values read once from the table; lanes with one tig store 8 consecutive pixels of a channel.
  const int quad = lane / 4, tig = lane % 4;
  // The rectangle's origin and the sample once more (block_x_again, block_z_again): kept from the start, they cost
  // the 128- and 32-channel kernels spills.
  const int rect_y = block_x_again() / tiles_x * kTileY, rect_x = block_x_again() % tiles_x * kTileX;
  const int sample = block_z_again();
  int pix[2];
  float noise[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int y = rect_y + 2 * (warp % 4) + h, x = rect_x + 8 * wg + quad;
    pix[h] = y < p.height && x < p.width ? y * p.width + x : -1;
    noise[h] = p.noise && pix[h] >= 0 ? p.noise[(long long)sample * p.noise_sample_stride + pix[h]] : 0.0f;
  }
  // This thread's first channel in y; its others are a multiple of hw further (in 32 bits: within a sample).
  const long long y_thread = ((long long)sample * p.out_channels + n0 + 2 * tig) * hw;
  float rgb[2][kMaxFusedRgb] = {};  // RGB: this thread's ToRGB partial sums per row and rgb channel
  // Values of rows outside the image are finished too (from zeros: harmless, and no branch per value); only their
  // stores are skipped, and their ToRGB sums are never written.
  auto finish = [&](auto store) {
    void* row[2];  // row h's element of this thread's first channel
#pragma unroll
    for (int h = 0; h < 2; ++h) row[h] = store.at(p.y, y_thread + (pix[h] < 0 ? 0 : pix[h]));
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        // Channels past the layer are finished too (from the table's zeros, adding nothing to the ToRGB sums), so
        // that a channel costs a test of its stores rather than a branch.
        const int c = 8 * j + 2 * tig + e;
        const bool channel_inside = n0 + c < p.out_channels;
        const float2 dcoef_bias = channels.dcoef_bias[c];
        const int channel_offset = (8 * j + e) * hw;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float v = modconv_finish_fused(p, acc[4 * j + 2 * h + e], dcoef_bias.x, noise[h], dcoef_bias.y);
          if constexpr (RGB) channels.add_rgb(c, store.rounded(v), rgb[h]);
          if (channel_inside && pix[h] >= 0) store(row[h], channel_offset, v);
        }
      }
  };
  // With RGB, y may be null: the layer's output is then read by nothing but the fused ToRGB (the last block).
  if constexpr (RGB)
    with_output_store(p.y, p.y_dtype, finish);
  else
    with_output_type(p.y_dtype, finish);
  if constexpr (RGB) {
    // A row's channels are spread over the 4 lanes that share its groupID (one tig each), all in this warp; their
    // sums leave lanes tig and tig + 2 with row h = tig % 2, and lanes 0 and 1 finish the two rows side by side.
    const int row_pix = tig == 0 ? pix[0] : tig == 1 ? pix[1] : -1;
    const SkipTaps taps = skip_taps_at(p, rect_y + 2 * (warp % 4) + tig, rect_x + 8 * wg + quad);
    const SkipPixel skip(p, taps, sample, p.rgb_channels, row_pix >= 0);
    float sum[kMaxFusedRgb];
    quad_row_sums(rgb, tig, sum);
    if (row_pix < 0) return;
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c)
      if (c < p.rgb_channels) {
        const float v = clamp_keep_nan(sum[c] + p.rgb_bias[c], p.rgb_clamp);
        p.rgb[((long long)sample * p.rgb_channels + c) * hw + row_pix] = skip.add(p, v, c);
      }
  }
}

}  // namespace modconv_wgmma

// The fused up-sampling 3x3 conv on wgmma: modconv_tc.cu's modconv_up2_3x3_f16 / _bf16 (same block, tile, blur
// and epilogue; see there) with its GEMM as two warpgroup products. A block takes one sample, 16 output channels
// and an 8 x 16 patch of input positions; GEMM z[position][column] with M = 128 positions (warpgroup g: patch rows
// 4 g ..), N = 144 columns (16 channels x 9 taps, in pack_up2_words' order: half, tap, channel), K = input channels
// in stages of 32. The A tile holds a stage's patch as [channel group][position] cells: the 8 positions of a core
// matrix are every other column of a patch row (SBO 8 cells, LBO 128), so A needs no halo and no shifted reads; B
// is [channel group][column] cells (LBO 144). Warp w of warpgroup g then holds patch row 4 g + w (= the block's
// warp index) with all 144 columns: acc[4 j + 2 h + e] is tap j % 9 of position (row, 2 groupID + h) for channel
// 8 (j / 9) + 2 tig + e, so that a lane's two positions are neighbours for the scatter.
//
// Weight packing (conv.rs, pack_up2_wgmma): pack_up2_words' stages and columns, each stage's 16 words per column
// regrouped [4 channel groups][columns][4 words]. K is aligned to its end as there.
namespace up2_wgmma {

using namespace up2_tile;
using modconv_wgmma::kGroups, modconv_wgmma::kThreads;
constexpr int kBlockM = PY * PX, kTaps = 9, kBlockN = kChannels * kTaps;
constexpr int kStageK = 8 * kGroups;                  // channels per stage
constexpr int kCells = kBlockM * kGroups / kThreads;  // gather cells per thread and stage
constexpr int kMaxInChannels = 1024;  // the sample's styles are staged in shared memory (conv.rs checks)
static_assert(kThreads / 32 == PY && kBlockM == 2 * 64, "a warp per patch row; two m64 warpgroups");

// A stage's wgmma run on while the block passes its barrier and issues the next stage's (wgmma_wait<1>). A is
// double-buffered: a warp's slice of its warpgroup's product reads only the 16 patch positions that the warp
// itself stores, so the warp rewrites them once its own wait says the previous stage's slice is done. B, which
// every slice reads, has a third buffer: the copy for stage s + 1 goes into the buffer of stage s - 2, whose
// products ended before the last barrier.
constexpr int kBBuffers = 3;
struct Gemm {
  uint4 a[2][kGroups][kBlockM];
  uint4 b[kBBuffers][kGroups][kBlockN];
};
union Smem {
  Gemm gemm;
  float t[kChannels * kPlaneT];  // T, after the K loop
};

// SampleWeights: the layer's weight is per sample, times its styles (ModconvParams::weight_sample_stride), and x is
// staged as stored.
template <class Mode, bool SampleWeights>
__device__ void up2(const ModconvParams& p) {
  __align__(128) __shared__ Smem smem;
  __align__(16) __shared__ float style_k[SampleWeights ? 1 : kMaxInChannels + kStageK];
  using X = typename Mode::Act;
  using Elem = typename X::T;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int b = blockIdx.z, o0 = blockIdx.y * kChannels;
  const int oy0 = (blockIdx.x / p.tiles_x) * OY, ox0 = (blockIdx.x % p.tiles_x) * OX;
  const int py0 = oy0 / 2 - 1, px0 = ox0 / 2 - 1;  // patch origin (input position of T rows/cols 0..2)
  const int hw = p.height * p.width;
  const int stages = (p.in_channels + kStageK - 1) / kStageK;

  // K aligned to its end: stage s holds channels kStageK s - pad .., so only stage 0 can be partial (its channels
  // below 0 are zeros); the sample's styles wait in shared memory in that order, zero below channel 0, for the
  // stages after the first.
  const int pad = stages * kStageK - p.in_channels;

  // The gather: warp w stages the 16 positions whose rows its own slice of the warpgroup's product reads (A rows
  // 16 (w % 4) ..: wgmma.cuh), so that it may rewrite them once its own wait says that slice is done. Lane l takes
  // A row pos = 64 (w / 4) + 16 (w % 4) + l % 16 and channel groups l / 16 + 2 j (cell j), one 16-byte store each.
  // Values load as stored in x (positions outside the image and channels below 0 are zeros), then are scaled by
  // the styles and rounded when stored (stored as loaded with SampleWeights). Row pos holds patch row w and, for
  // the scatter, a permuted column: rows m and m + 8 of the warp's 16 (one lane's accumulator rows) hold the
  // adjacent columns 2 m and 2 m + 1.
  const int pos = 64 * (warp / 4) + 16 * (warp % 4) + lane % 16;
  const int patch_col = 2 * (lane % 8) + lane % 16 / 8;
  auto cell_group = [&](int j) { return lane / 16 + 2 * j; };
  auto group_channel = [&](int j) { return 8 * cell_group(j) - pad; };  // cell j's first channel in stage 0
  const SampleChannels<Elem> x_sample(p, b, 0);
  int pix;  // the position's offset in a channel plane, -1 outside the image
  {
    const int gy = py0 + warp, gx = px0 + patch_col;
    pix = gy >= 0 && gy < p.height && gx >= 0 && gx < p.width ? gy * p.width + gx : -1;
  }
  // First: stage 0, whose channels below 0 (where the layer's channels do not fill the stages) are not read.
  auto load_cell = [&](bool first, int stage, int j, Elem (&v)[8]) {
    const int c0 = group_channel(j);
    if (first && c0 < 0) {
      const int at = pix < 0 ? 0 : pix;
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = c0 + k >= 0 ? x_sample.x[(c0 + k) * hw + at] : Elem(0);
    } else {
      x_sample.load(stage * kStageK + c0, pix, 8, v);
    }
  };
  // Cell j scaled by the styles s of its channels (unless SampleWeights); a cell outside the image is stored as
  // zeros.
  auto store_cell = [&](int j, const Elem (&v)[8], const float* s, int buf) {
    uint4 u;
    if constexpr (SampleWeights) {
      u = modconv_wgmma::pack_cell(v);
    } else {
      u.x = Mode::word(X::load(&v[0]) * s[0], X::load(&v[1]) * s[1]);
      u.y = Mode::word(X::load(&v[2]) * s[2], X::load(&v[3]) * s[3]);
      u.z = Mode::word(X::load(&v[4]) * s[4], X::load(&v[5]) * s[5]);
      u.w = Mode::word(X::load(&v[6]) * s[6], X::load(&v[7]) * s[7]);
    }
    smem.gemm.a[buf][cell_group(j)][pos] = pix >= 0 ? u : make_uint4(0, 0, 0, 0);
  };

  const modconv_wgmma::BStages<kBlockN> b_stages(p, blockIdx.y * kBlockN);
  auto copy_b = [&](int stage, int buf) { b_stages.copy(&smem.gemm.b[buf][0][0], stage); };

  // Descriptors in 16-byte cells: warpgroup g's A starts at position 64 g; a K step is two channel groups.
  const int wg = warpgroup_index();
  const unsigned long long a_base = wgmma_descriptor(&smem, 16 * 64 * wg, 16 * kBlockM, 16 * 8);
  const unsigned long long b_base = wgmma_descriptor(&smem, sizeof(smem.gemm.a), 16 * kBlockN, 16 * 8);
  auto a_desc = [&](int buf, int ks) { return wgmma_descriptor_moved(a_base, (buf * kGroups + 2 * ks) * kBlockM); };
  auto b_desc = [&](int buf, int ks) { return wgmma_descriptor_moved(b_base, (buf * kGroups + 2 * ks) * kBlockN); };

  float acc[kBlockN / 2];
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) acc[i] = 0.0f;

  {
    // Stage 0's weights, activations and styles all go out before the block waits for any of them: with two
    // stages (64 input channels, the 1024 px layer) these waits were a quarter of the kernel's time. Stage 0 reads
    // its styles from device memory, so only the later stages wait for style_k, at the barrier after stage 0.
    copy_b(0, 0);
    Elem first[kCells][8];
#pragma unroll
    for (int j = 0; j < kCells; ++j) load_cell(true, 0, j, first[j]);
    float s0[kCells][8] = {};
    if constexpr (!SampleWeights) {
#pragma unroll
      for (int j = 0; j < kCells; ++j)
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const int c = group_channel(j) + k;
          s0[j][k] = c >= 0 ? p.styles[(long long)b * p.in_channels + c] : 0.0f;
        }
      for (int c = tid; c < stages * kStageK; c += kThreads)
        style_k[c] = c >= pad ? p.styles[(long long)b * p.in_channels + c - pad] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kCells; ++j) store_cell(j, first[j], s0[j], 0);
  }
  copy_async_wait();
  wgmma_fence_shared_writes();
  __syncthreads();
  int b_cur = 0, b_next = 1;
#pragma unroll 1
  for (int stage = 0; stage < stages; ++stage) {
    const int cur = stage & 1;
    const bool next = stage + 1 < stages;
    Elem part[kCells][8];
    if (next) {
      copy_b(stage + 1, b_next);
#pragma unroll
      for (int j = 0; j < kCells; ++j) load_cell(false, stage + 1, j, part[j]);
    }
    wgmma_fence();
    wgmma_m64k16<kBlockN, Mode::kBf16>(acc, a_desc(cur, 0), b_desc(b_cur, 0));
    wgmma_m64k16<kBlockN, Mode::kBf16>(acc, a_desc(cur, 1), b_desc(b_cur, 1));
    wgmma_commit();
    // This warp's slice of the previous stage's products, which read the rows of the A buffer it stores next.
    wgmma_wait<1>(acc);
    __syncwarp();
    if (next) {
#pragma unroll
      for (int j = 0; j < kCells; ++j) {
        const float* const s = SampleWeights ? nullptr : style_k + (stage + 1) * kStageK + 8 * cell_group(j);
        store_cell(j, part[j], s, cur ^ 1);
      }
    }
    copy_async_wait();
    wgmma_fence_shared_writes();
    __syncthreads();
    b_cur = b_next;
    b_next = modconv_wgmma::next_buffer<kBBuffers>(b_next);
  }
  // T overlays the GEMM's buffers: every product ends before the scatter.
  wgmma_wait<0>(acc);
  __syncthreads();

  // Scatter into T (over the GEMM tiles). Tap (ky, kx) of patch position (y, x) lands on T[2 y + ky][2 x + kx].
  // This lane holds columns 2 quad (h = 0) and 2 quad + 1 (h = 1) of patch row `warp`, so for each ky, channel and
  // T row 2 warp + ky it holds T columns 4 quad .. 4 quad + 3 but for the kx = 2 tap of column 2 quad - 1, which
  // comes from the previous quad (a shuffle; T column 0, which the blur does not read, goes without it): one
  // 128-bit store per row. Rows ky = 0, 1 store; after a barrier row ky = 2 adds into the next warp's first row
  // (row 16, past T, is dropped, as is the kx = 2 tap of the last column, T column 32).
  const int quad = lane / 4, tig = lane % 4;
  auto tap_row = [&](int ky, int half, int e) {
    auto tap = [&](int kx, int h) { return acc[4 * (9 * half + 3 * ky + kx) + 2 * h + e]; };
    const float carry = __shfl_up_sync(0xffffffffu, tap(2, 1), 4);
    return make_float4(tap(0, 0) + (quad > 0 ? carry : 0.0f), tap(1, 0), tap(0, 1) + tap(2, 0), tap(1, 1));
  };
  auto t_row = [&](int ky, int half, int e) {
    return reinterpret_cast<float4*>(&smem.t[(8 * half + 2 * tig + e) * kPlaneT + (2 * warp + ky) * kRowT + 4 * quad]);
  };
#pragma unroll
  for (int ky = 0; ky < 2; ++ky)
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int e = 0; e < 2; ++e) *t_row(ky, half, e) = tap_row(ky, half, e);
  __syncthreads();
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float4 add = tap_row(2, half, e);
      if (2 * warp + 2 < TY) {
        float4* const d = t_row(2, half, e);
        const float4 o = *d;
        *d = make_float4(o.x + add.x, o.y + add.y, o.z + add.z, o.w + add.w);
      }
    }
  __syncthreads();
  static_assert(kBlurItems <= kThreads, "one blur item per thread");
  blur_epilogue(p, smem.t, tid, b, o0, oy0, ox0);
}

}  // namespace up2_wgmma

// Grid: (rectangles per sample, ceil(out_channels / N), batch); 256 threads, dynamic shared memory of
// wgmma_conv_shared_bytes (conv.rs); two blocks per SM (four for N = 32, whose 16 accumulators leave room). The
// plain names take N = 128, _n64 and _n32 the narrower blocks (with per-sample weights); the _torgb kernels also
// compute the ToRGB after the layer (one block column).
namespace wg = modconv_wgmma;
KERNEL_BOUNDED(modconv_3x3_wgmma_f16, ModconvParams, 256, 2) { wg::conv3x3<wg::F16, 128>(p); }
KERNEL_BOUNDED(modconv_3x3_wgmma_bf16, ModconvParams, 256, 2) { wg::conv3x3<wg::Bf16, 128>(p); }
KERNEL_BOUNDED(modconv_3x3_n64_wgmma_f16, ModconvParams, 256, 2) { wg::conv3x3<wg::F16, 64>(p); }
KERNEL_BOUNDED(modconv_3x3_n64_wgmma_bf16, ModconvParams, 256, 2) { wg::conv3x3<wg::Bf16, 64>(p); }
KERNEL_BOUNDED(modconv_3x3_n32_wgmma_f16, ModconvParams, 256, 4) { wg::conv3x3<wg::F16, 32>(p); }
KERNEL_BOUNDED(modconv_3x3_n32_wgmma_bf16, ModconvParams, 256, 4) { wg::conv3x3<wg::Bf16, 32>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_wgmma_f16, ModconvParams, 256, 2) { wg::conv3x3<wg::F16, 128, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_wgmma_bf16, ModconvParams, 256, 2) { wg::conv3x3<wg::Bf16, 128, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n32_wgmma_f16, ModconvParams, 256, 4) { wg::conv3x3<wg::F16, 32, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n32_wgmma_bf16, ModconvParams, 256, 4) { wg::conv3x3<wg::Bf16, 32, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n64_wgmma_f16, ModconvParams, 256, 2) { wg::conv3x3<wg::F16, 64, true>(p); }
KERNEL_BOUNDED(modconv_3x3_torgb_n64_wgmma_bf16, ModconvParams, 256, 2) { wg::conv3x3<wg::Bf16, 64, true>(p); }
KERNEL_BOUNDED(modconv_up2_3x3_wgmma_f16, ModconvParams, 256, 2) { up2_wgmma::up2<wg::F16, false>(p); }
KERNEL_BOUNDED(modconv_up2_3x3_wgmma_bf16, ModconvParams, 256, 2) { up2_wgmma::up2<wg::Bf16, false>(p); }
// With per-sample weights (conv.rs: layers with few input channels, whose per-sample weights stay small).
KERNEL_BOUNDED(modconv_up2_3x3_sample_weights_wgmma_f16, ModconvParams, 256, 2) {
  up2_wgmma::up2<wg::F16, true>(p);
}
KERNEL_BOUNDED(modconv_up2_3x3_sample_weights_wgmma_bf16, ModconvParams, 256, 2) {
  up2_wgmma::up2<wg::Bf16, true>(p);
}

// The per-sample weights of the kernels that take them (ModconvSampleWeightsParams).
KERNEL_BOUNDED(modconv_sample_weights, ModconvSampleWeightsParams, 256) {
  GRID_STRIDE_LOOP(e, (long long)p.batch * p.words) {
    const int b = int(e / p.words), w = int(e % p.words);
    const float4 q = reinterpret_cast<const float4*>(p.weight)[w];
    const float* const s = p.styles + (long long)b * p.in_channels;
    const float lo = q.x * s[__float_as_uint(q.z)], hi = q.y * s[__float_as_uint(q.w)];
    p.y[e] = p.bf16 ? pack_bfloat162(lo, hi) : pack_half2(lo, hi);
  }
}

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
  wgmma_m64k16<128, false>(d, wgmma_descriptor(operands, p.a_offset, p.a_lbo, p.a_sbo),
                           wgmma_descriptor(operands, p.b_offset, p.b_lbo, p.b_sbo));
  wgmma_commit();
  wgmma_wait<0>(d);
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 4; ++i) p.d[(16 * warp + quad + 8 * (i >> 1)) * 128 + 8 * j + 2 * tig + (i & 1)] = d[4 * j + i];
}
