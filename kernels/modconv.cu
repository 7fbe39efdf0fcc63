// The modulated convolution of a StyleGAN2 synthesis layer, float32 (the exact mode). Twin: cpu::conv (fast) and
// cpu::ops::modulated_conv2d (reference). modconv_tc.cu runs the same convolutions on the tensor cores.
//
// conv(x_b, W * s_b) = conv(x_b * s_b, W): the whole batch shares one weight. Each conv is an implicit GEMM with
// M = batch * pixels, N = output channels, K = input channels * taps; the prologue scales input channel i of
// sample b by styles[b, i] while the tile goes to shared memory, and the epilogue applies demodulation, noise,
// bias, activation, gain and clamp (golden ops README order) before the one store. Styles and demodulation
// coefficients come from two small kernels per layer.
//
// The up-sampling conv (stride-2 transposed 3x3 conv, then the [1,3,3,1] blur with gain 4) runs at input
// resolution: a GEMM with N = 8 channels x 9 taps, whose results are scattered into the transposed-conv output
// tile in shared memory and blurred there, so the (2H+1)x(2W+1) intermediate never reaches device memory. The
// reference pair (modconv_transpose_ref + modconv_blur_ref) computes the same thing through that intermediate
// and is the test twin of the fused kernel.
#include "act.cuh"
#include "common.cuh"

// ---------------------------------------------------------------------------------------------------------------
// Styles and demodulation coefficients.

KERNEL_BOUNDED(modconv_affine, ModconvAffineParams, 256) {
  GRID_STRIDE_LOOP(e, (long long)p.batch * p.in_channels) {
    int b = int(e / p.in_channels), i = int(e % p.in_channels);
    const float* w = p.ws + b * p.ws_sample_stride + (long long)p.ws_index * p.w_dim;
    const float* a = p.affine + (long long)i * p.w_dim;
    float dot = 0.0f;
    for (int d = 0; d < p.w_dim; ++d) dot += w[d] * a[d];
    p.styles[e] = dot + p.affine_bias[i];
  }
}

KERNEL_BOUNDED(modconv_demod, ModconvDemodParams, 256) {
  GRID_STRIDE_LOOP(e, p.n) {
    int b = int(e / p.out_channels), o = int(e % p.out_channels);
    const float* s = p.styles + (long long)b * p.in_channels;
    float sum = 0.0f;
    for (int i = 0; i < p.in_channels; ++i) sum += s[i] * s[i] * p.wsq_t[(long long)i * p.out_channels + o];
    p.dcoefs[e] = rsqrtf(sum + 1e-8f);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Same-resolution conv (3x3 padding 1, or 1x1). 64 threads with 8x8 register tiles, K in slices through
// double-buffered shared memory (one barrier per slice). Two tile shapes: 64 pixels x 64 channels (the convs), and
// 256 pixels x 16 channels for layers with few output channels (ToRGB's 3), which would waste most of a 64-wide
// channel tile. Weight packing: [K rounded up to 16][out_channels rounded up to BN], row k = i * k * k + tap (zeros
// past the ends), so a slice of B is BK rows of 128-bit copies with no bounds checks.

template <int BM_, int BN_, int BK_>
struct SameTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, THREADS = 64, TM = 8, TN = 8;
  static constexpr int TX = BM / 8;                     // threads along the pixels; BN / 8 along the channels
  static constexpr int PIXELS_PER_THREAD = BM / THREADS;  // A-tile pixels each thread gathers
  static_assert(TX * (BN / 8) == THREADS, "one 8x8 register tile per thread");
};
using WideTile = SameTile<64, 64, 16>;
using NarrowTile = SameTile<256, 16, 8>;

// One K-slice of the block's product: acc[i][j] += sum_k As[k][pixel i] * Bs[k][channel j] for this thread's
// pixels (tx * 4 + {0..3}, BM / 2 + tx * 4 + {0..3}) and channels (ty * 4 + {0..3}, BN / 2 + ty * 4 + {0..3}).
template <class Tile>
__device__ __forceinline__ void same_slice_product_fp32(const float* As, const float* Bs, int tx, int ty,
                                                         float (&acc)[Tile::TM][Tile::TN]) {
  constexpr int BM = Tile::BM, BN = Tile::BN;
#pragma unroll
  for (int k = 0; k < Tile::BK; ++k) {
    const float4 a0 = *reinterpret_cast<const float4*>(&As[k * BM + tx * 4]);
    const float4 a1 = *reinterpret_cast<const float4*>(&As[k * BM + BM / 2 + tx * 4]);
    const float4 b0 = *reinterpret_cast<const float4*>(&Bs[k * BN + ty * 4]);
    const float4 b1 = *reinterpret_cast<const float4*>(&Bs[k * BN + BN / 2 + ty * 4]);
    const float a[Tile::TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float b[Tile::TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i) {
#pragma unroll
      for (int j = 0; j < Tile::TN; ++j) acc[i][j] += a[i] * b[j];
    }
  }
}

template <int KS, class Tile>
__device__ void modconv_same_impl(const ModconvParams& p) {
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, THREADS = Tile::THREADS, PPT = Tile::PIXELS_PER_THREAD;
  constexpr int TAPS = KS * KS, PAD = KS / 2;
  __align__(16) __shared__ float As[2][BK * BM];
  __align__(16) __shared__ float Bs[2][BK * BN];
  const int tid = threadIdx.x, tx = tid % Tile::TX, ty = tid / Tile::TX;
  const int hw = p.height * p.width;
  const long long m_total = (long long)p.batch * hw;
  const long long m0 = (long long)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;
  const int k_total = p.in_channels * TAPS;
  const int slices = (k_total + BK - 1) / BK;

  // The pixels this thread gathers for the A tile (columns tid + j * THREADS of it).
  int gy[PPT], gx[PPT];
  const float* xb[PPT];
  const float* sb[PPT];
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const long long gm = m0 + tid + j * THREADS;
    const int b = gm < m_total ? int(gm / hw) : 0;
    const int pix = int(gm - (long long)b * hw);
    // A pixel past the end gets a row no tap reaches, so the bounds check below zeroes it.
    gy[j] = gm < m_total ? pix / p.width : -2 * KS;
    gx[j] = pix % p.width;
    xb[j] = static_cast<const float*>(p.x) + (long long)b * p.in_channels * hw;
    sb[j] = p.styles + (long long)b * p.in_channels;
  }

  // A (gathered, scaled by the style) goes through registers; B streams straight into shared memory.
  float a_next[PPT][BK];
  auto load_a = [&](int k0) {
#pragma unroll
    for (int r = 0; r < BK; ++r) {
      const int k = k0 + r, i = k / TAPS, t = k % TAPS;
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        const int iy = gy[j] + t / KS - PAD, ix = gx[j] + t % KS - PAD;
        float v = 0.0f;
        if (k < k_total && iy >= 0 && iy < p.height && ix >= 0 && ix < p.width)
          v = xb[j][(long long)i * hw + iy * p.width + ix] * sb[j][i];
        a_next[j][r] = v;
      }
    }
  };
  auto store_a = [&](int buf) {
#pragma unroll
    for (int r = 0; r < BK; ++r) {
#pragma unroll
      for (int j = 0; j < PPT; ++j) As[buf][r * BM + tid + j * THREADS] = a_next[j][r];
    }
  };
  auto copy_b = [&](int k0, int buf) {
    constexpr int COPIES = BK * BN / 4;
#pragma unroll
    for (int j = 0; j < (COPIES + THREADS - 1) / THREADS; ++j) {
      const int q = tid + j * THREADS, r = q / (BN / 4), c4 = q % (BN / 4);
      if (COPIES % THREADS == 0 || q < COPIES)
        copy16_async(&Bs[buf][r * BN + c4 * 4], p.weight + (long long)(k0 + r) * p.weight_stride + n0 + c4 * 4);
    }
  };

  float acc[Tile::TM][Tile::TN];
#pragma unroll
  for (int i = 0; i < Tile::TM; ++i) {
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) acc[i][j] = 0.0f;
  }
  double_buffered_k_loop(
      slices, [&](int s, int buf) { copy_b(s * BK, buf); }, [&](int s) { load_a(s * BK); }, store_a,
      [&](int cur) { same_slice_product_fp32<Tile>(As[cur], Bs[cur], tx, ty, acc); });

  float* y = static_cast<float*>(p.y);  // the f32 kernels store f32 (y_dtype is DTYPE_F32, conv.rs checks)
  // Epilogue: each run of 4 pixels starts at a multiple of 4, so with hw % 4 == 0 it lies in one sample and the
  // noise load and the store are aligned float4s. Per channel: demodulation coefficient and bias; per pixel: noise.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const long long m = m0 + half * (BM / 2) + tx * 4;
    if (m >= m_total) continue;
    if (hw % 4 == 0 && m + 3 < m_total) {
      const int b = int(m / hw), pix = int(m - (long long)b * hw);
      float4 nz = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (p.noise) nz = *reinterpret_cast<const float4*>(p.noise + (long long)b * p.noise_sample_stride + pix);
#pragma unroll
      for (int j = 0; j < Tile::TN; ++j) {
        const int o = n0 + (j < 4 ? ty * 4 + j : BN / 2 + ty * 4 + j - 4);
        if (o >= p.out_channels) continue;
        const float d = p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f;
        const float bias = p.bias ? p.bias[o] : 0.0f;
        float4 v;
        v.x = activate(acc[half * 4 + 0][j] * d + nz.x + bias, p.slope, p.gain, p.clamp);
        v.y = activate(acc[half * 4 + 1][j] * d + nz.y + bias, p.slope, p.gain, p.clamp);
        v.z = activate(acc[half * 4 + 2][j] * d + nz.z + bias, p.slope, p.gain, p.clamp);
        v.w = activate(acc[half * 4 + 3][j] * d + nz.w + bias, p.slope, p.gain, p.clamp);
        if (KS == 1 && p.skip) {  // ToRGB: the skip image joins here (one test for the four pixels)
          v.x = add_skip(p, v.x, b, p.out_channels, o, pix);
          v.y = add_skip(p, v.y, b, p.out_channels, o, pix + 1);
          v.z = add_skip(p, v.z, b, p.out_channels, o, pix + 2);
          v.w = add_skip(p, v.w, b, p.out_channels, o, pix + 3);
        }
        *reinterpret_cast<float4*>(y + ((long long)b * p.out_channels + o) * hw + pix) = v;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const long long mi = m + i;
        if (mi >= m_total) break;
        const int b = int(mi / hw), pix = int(mi - (long long)b * hw);
#pragma unroll
        for (int j = 0; j < Tile::TN; ++j) {
          const int o = n0 + (j < 4 ? ty * 4 + j : BN / 2 + ty * 4 + j - 4);
          if (o >= p.out_channels) continue;
          float v = modconv_epilogue(p, acc[half * 4 + i][j], b, o, pix);
          if constexpr (KS == 1) v = add_skip(p, v, b, p.out_channels, o, pix);
          y[((long long)b * p.out_channels + o) * hw + pix] = v;
        }
      }
    }
  }
}

// Grid: (ceil(batch * pixels / BM), ceil(out_channels / BN)); 64 threads.
KERNEL_BOUNDED(modconv_3x3, ModconvParams, 64) { modconv_same_impl<3, WideTile>(p); }
KERNEL_BOUNDED(modconv_1x1, ModconvParams, 64) { modconv_same_impl<1, WideTile>(p); }
KERNEL_BOUNDED(modconv_1x1_narrow, ModconvParams, 64) { modconv_same_impl<1, NarrowTile>(p); }

// ---------------------------------------------------------------------------------------------------------------
// 1x1 modulated conv with at most kFewOutputs outputs (ToRGB), in every mode: a dot product per pixel over the
// input channels, on the CUDA cores. Reading x is the whole cost (under one FLOP per byte), so the kernel is shaped
// for that stream: a thread per pixel of one sample (a warp reads consecutive pixels of each channel plane), its
// outputs' sums in registers, accumulated in f32 from x as stored (f32, or the 16-bit activations of fp16 / bf16:
// exact products, no rounding of x * style); a GEMM tile would leave most of its channels idle. Weight packing
// (conv.rs, pack_same with 4 columns): row i holds W[o, i] for o < 4, one 128-bit load. Styles and weights are the
// same for every lane of a block.
constexpr int kFewOutputs = 4;

template <class X>
__device__ void modconv_1x1_few_impl(const ModconvParams& p) {
  const int hw = p.height * p.width, b = blockIdx.z, pix = blockIdx.x * blockDim.x + threadIdx.x;
  if (pix >= hw) return;
  const typename X::T* xc = static_cast<const typename X::T*>(p.x) + (long long)b * p.in_channels * hw + pix;
  const float* const styles = p.styles + (long long)b * p.in_channels;
  float acc[kFewOutputs] = {};
  auto accumulate = [&](float v, float4 w) {
    acc[0] += v * w.x, acc[1] += v * w.y, acc[2] += v * w.z, acc[3] += v * w.w;
  };
  // kBatch channels' loads at a time: one load in flight per thread left this stream waiting on memory.
  constexpr int kBatch = 4;
  const float4* const weights = reinterpret_cast<const float4*>(p.weight);
  int i = 0;
  for (; i + kBatch <= p.in_channels; i += kBatch, xc += kBatch * hw) {
    float v[kBatch];
    float4 w[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) v[k] = X::load(xc + k * hw) * styles[i + k], w[k] = weights[i + k];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) accumulate(v[k], w[k]);
  }
  for (; i < p.in_channels; ++i, xc += hw) accumulate(X::load(xc) * styles[i], weights[i]);
  const SkipTaps taps = skip_taps_at(p, pix / p.width, pix % p.width);
  with_output_type(p.y_dtype, [&](auto store) {
#pragma unroll
    for (int o = 0; o < kFewOutputs; ++o) {
      if (o >= p.out_channels) break;
      const float v = add_skip(p, taps, modconv_epilogue(p, acc[o], b, o, pix), b, p.out_channels, o);
      store(p.y, ((long long)b * p.out_channels + o) * hw + pix, v);
    }
  });
}

// Grid: (ceil(pixels / 256), 1, batch); 256 threads. Named by x's element type: f32 (fp32 and tf32), f16, bf16.
KERNEL_BOUNDED(modconv_1x1_few, ModconvParams, 256) { modconv_1x1_few_impl<ActF32>(p); }
KERNEL_BOUNDED(modconv_1x1_few_half, ModconvParams, 256) { modconv_1x1_few_impl<ActF16>(p); }
KERNEL_BOUNDED(modconv_1x1_few_bfloat, ModconvParams, 256) { modconv_1x1_few_impl<ActBf16>(p); }

// ---------------------------------------------------------------------------------------------------------------
// Up-sampling 3x3 conv, fused. A block takes one sample, 8 output channels and a patch of 8 x 16 input positions
// (rows py0.., cols px0.., zero outside the image). The GEMM z[position][channel, tap] = sum_i xs[i, position] *
// W[channel, i, tap] (M = 128 positions, N = 8 x 9, K = in_channels: every multiply-add is one of the transposed
// conv's, no zero taps) is scattered into the transposed-conv output T (tap (ky, kx) of position (y, x) lands on
// T[2y + ky, 2x + kx]) in shared memory; T rows/cols 1..15 / 1..31 of the patch are complete, which makes a
// 12 x 28 output tile after the 4x4 blur. Weight packing: [in_channels rounded up to 16][out_channels rounded up
// to 8][12] (9 taps, ky * 3 + kx, then 3 zeros so a channel's taps are three 128-bit loads).

namespace up2 {
constexpr int PY = 8, PX = 16, BM = PY * PX, CH = 8, TAPS = 12, BN = CH * TAPS, BK = 16, THREADS = 128;
constexpr int OY = 2 * PY - 4, OX = 2 * PX - 4;  // output tile
constexpr int TY = 2 * PY + 1, TX = 2 * PX + 1;  // transposed-conv tile held in shared memory
constexpr int A_FLOATS = 2 * BK * BM, B_FLOATS = 2 * BK * BN;
static_assert(CH * TY * TX <= A_FLOATS + B_FLOATS, "the T tile reuses the GEMM tiles' shared memory");
}  // namespace up2

// One K-slice of the up-sampling GEMM: acc[i][t] += sum_k As[k][position i] * Bs[k][channel c, tap t] for this
// thread's positions (s * 4 + {0..3}, 64 + s * 4 + {0..3}) and its channel c.
__device__ __forceinline__ void up2_slice_product_fp32(const float* As, const float* Bs, int s, int c,
                                                        float (&acc)[8][9]) {
  using namespace up2;
#pragma unroll
  for (int k = 0; k < BK; ++k) {
    const float4 a0 = *reinterpret_cast<const float4*>(&As[k * BM + s * 4]);
    const float4 a1 = *reinterpret_cast<const float4*>(&As[k * BM + 64 + s * 4]);
    const float4 w0 = *reinterpret_cast<const float4*>(&Bs[k * BN + c * TAPS]);
    const float4 w1 = *reinterpret_cast<const float4*>(&Bs[k * BN + c * TAPS + 4]);
    const float4 w2 = *reinterpret_cast<const float4*>(&Bs[k * BN + c * TAPS + 8]);
    const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float w[9] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w, w2.x};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int t = 0; t < 9; ++t) acc[i][t] += a[i] * w[t];
    }
  }
}

// Grid: (tiles_y * tiles_x output tiles of 12 x 28, ceil(out_channels / 8), batch); 128 threads.
KERNEL_BOUNDED(modconv_up2_3x3, ModconvParams, 128) {
  using namespace up2;
  __align__(16) __shared__ float smem[A_FLOATS + B_FLOATS];
  float* As = smem;
  float* Bs = smem + A_FLOATS;
  const int tid = threadIdx.x, s = tid % 16, c = tid / 16;
  const int b = blockIdx.z, o0 = blockIdx.y * CH;
  const int oy0 = (blockIdx.x / p.tiles_x) * OY, ox0 = (blockIdx.x % p.tiles_x) * OX;
  const int py0 = oy0 / 2 - 1, px0 = ox0 / 2 - 1;  // patch origin (input position of T rows/cols 0..2)
  const int hw = p.height * p.width;
  const int slices = (p.in_channels + BK - 1) / BK;

  // The position this thread gathers for the A tile.
  const int gy = py0 + tid / PX, gx = px0 + tid % PX;
  const bool ginside = gy >= 0 && gy < p.height && gx >= 0 && gx < p.width;
  const float* xb = static_cast<const float*>(p.x) + (long long)b * p.in_channels * hw + (ginside ? gy * p.width + gx : 0);
  const float* sb = p.styles + (long long)b * p.in_channels;
  const float* wg = p.weight + o0 * TAPS;

  float a_next[BK];
  auto load_a = [&](int k0) {
#pragma unroll
    for (int r = 0; r < BK; ++r) {
      const int i = k0 + r;
      a_next[r] = (ginside && i < p.in_channels) ? xb[(long long)i * hw] * sb[i] : 0.0f;
    }
  };
  auto store_a = [&](int buf) {
#pragma unroll
    for (int r = 0; r < BK; ++r) As[buf * BK * BM + r * BM + tid] = a_next[r];
  };
  auto copy_b = [&](int k0, int buf) {
#pragma unroll
    for (int j = 0; j < BK * BN / 4 / THREADS; ++j) {
      const int q = tid + j * THREADS, r = q / (BN / 4), c4 = q % (BN / 4);
      copy16_async(&Bs[buf * BK * BN + r * BN + c4 * 4], wg + (long long)(k0 + r) * p.weight_stride + c4 * 4);
    }
  };

  float acc[8][9];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int t = 0; t < 9; ++t) acc[i][t] = 0.0f;
  }
  double_buffered_k_loop(
      slices, [&](int k, int buf) { copy_b(k * BK, buf); }, [&](int k) { load_a(k * BK); }, store_a,
      [&](int cur) { up2_slice_product_fp32(As + cur * BK * BM, Bs + cur * BK * BN, s, c, acc); });

  // Scatter into T (reusing the tiles' memory). Neighbouring positions share T rows and columns, so the threads
  // take turns: in each of 4 rounds only segments whose row parity and column-segment parity match write, and
  // those touch disjoint T elements (a fixed order, so the result is deterministic).
  float* T = smem;
  for (int e = tid; e < CH * TY * TX; e += THREADS) T[e] = 0.0f;
  __syncthreads();
  const int row = s / 4, col0 = (s % 4) * 4;
  float* Tc = T + c * TY * TX;
  for (int round = 0; round < 4; ++round) {
    if (round == (row % 2) * 2 + s % 2) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = row + (i / 4) * 4, x = col0 + i % 4;
#pragma unroll
        for (int t = 0; t < 9; ++t) Tc[(2 * r + t / 3) * TX + 2 * x + t % 3] += acc[i][t];
      }
    }
    __syncthreads();
  }

  // Blur the complete part of T into the 12 x 28 output tile, then the epilogue.
  const int o = o0 + c;
  const int oh = 2 * p.height, ow = 2 * p.width;
  if (o < p.out_channels) {
    for (int e = s; e < OY * OX; e += 16) {
      const int ty = e / OX, tx = e % OX;
      const int y = oy0 + ty, x = ox0 + tx;
      if (y >= oh || x >= ow) continue;
      float v = 0.0f;
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        float h = 0.0f;
#pragma unroll
        for (int bx = 0; bx < 4; ++bx) h += up2_blur_tap(bx) * Tc[(ty + 1 + a) * TX + tx + 1 + bx];
        v += up2_blur_tap(a) * h;
      }
      static_cast<float*>(p.y)[((long long)b * p.out_channels + o) * oh * ow + y * ow + x] =
          modconv_epilogue(p, v, b, o, y * ow + x);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The unfused reference pair for the up-sampling conv (test twin of modconv_up2_3x3): the transposed conv into the
// (2H+1)x(2W+1) intermediate, then blur and epilogue. Plain one-thread-per-output loops. The weight is the natural
// [out_channels, in_channels, 3, 3] layout.

// y = T [batch, out_channels, 2H+1, 2W+1]: T[Y, X] = sum over i and taps with 2y + ky = Y, 2x + kx = X of
// x[i, y, x] * styles[i] * W[o, i, ky, kx].
KERNEL_BOUNDED(modconv_transpose_ref, ModconvParams, 256) {
  const int th = 2 * p.height + 1, tw = 2 * p.width + 1;
  GRID_STRIDE_LOOP(e, (long long)p.batch * p.out_channels * th * tw) {
    const int X = int(e % tw), Y = int(e / tw % th);
    const int o = int(e / ((long long)th * tw) % p.out_channels), b = int(e / ((long long)th * tw * p.out_channels));
    float sum = 0.0f;
    for (int i = 0; i < p.in_channels; ++i) {
      const float* plane = static_cast<const float*>(p.x) + ((long long)b * p.in_channels + i) * p.height * p.width;
      const float* w = p.weight + ((long long)o * p.in_channels + i) * 9;
      for (int ky = Y % 2; ky < 3; ky += 2) {
        const int y = (Y - ky) / 2;
        if (y < 0 || y >= p.height) continue;
        for (int kx = X % 2; kx < 3; kx += 2) {
          const int x = (X - kx) / 2;
          if (x < 0 || x >= p.width) continue;
          sum += plane[y * p.width + x] * p.styles[b * p.in_channels + i] * w[ky * 3 + kx];
        }
      }
    }
    static_cast<float*>(p.y)[e] = sum;
  }
}

// x = T from modconv_transpose_ref (height, width: the conv's input size); y [batch, out_channels, 2H, 2W] =
// epilogue(blur of T with padding 1).
KERNEL_BOUNDED(modconv_blur_ref, ModconvParams, 256) {
  const int th = 2 * p.height + 1, tw = 2 * p.width + 1, oh = 2 * p.height, ow = 2 * p.width;
  GRID_STRIDE_LOOP(e, (long long)p.batch * p.out_channels * oh * ow) {
    const int x = int(e % ow), y = int(e / ow % oh);
    const long long plane = e / ((long long)oh * ow);
    const int o = int(plane % p.out_channels), b = int(plane / p.out_channels);
    const float* t = static_cast<const float*>(p.x) + plane * th * tw;
    float v = 0.0f;
    for (int a = 0; a < 4; ++a) {
      const int ty = y + a - 1;
      if (ty < 0 || ty >= th) continue;
      float h = 0.0f;
      for (int c = 0; c < 4; ++c) {
        const int tx = x + c - 1;
        if (tx >= 0 && tx < tw) h += up2_blur_tap(c) * t[ty * tw + tx];
      }
      v += up2_blur_tap(a) * h;
    }
    static_cast<float*>(p.y)[e] = modconv_epilogue(p, v, b, o, y * ow + x);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The skip image's up-sampling (common.cuh) plus the ToRGB output (or any broadcast addend): the unfused twin of
// ModconvParams::skip, and the up-sampling after a 1x1 conv.
KERNEL_BOUNDED(skip_upsample, SkipUpsampleParams, 256) {
  const int oh = 2 * p.height, ow = 2 * p.width;
  GRID_STRIDE_LOOP(e, (long long)p.batch * p.channels * oh * ow) {
    const int x = int(e % ow), y = int(e / ow % oh);
    const long long plane = e / ((long long)oh * ow);
    const int ch = int(plane % p.channels), b = int(plane / p.channels);
    float v = skip_upsampled(p.x + plane * p.height * p.width, p.height, p.width, y, x);
    if (p.addend) v += p.addend[b * p.addend_sample_stride + ch * p.addend_channel_stride + y * ow + x];
    p.y[e] = v;
  }
}
