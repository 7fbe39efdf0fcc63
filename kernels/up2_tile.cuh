// The tile geometry of the tensor-core up-sampling convs (modconv_tc.cu's mma.sync kernel, modconv_wgmma.cu's
// wgmma one) and the step they share after their GEMM and scatter: a block's transposed-conv output T in shared
// memory, blurred and finished into its output tile.
#pragma once

#include "act.cuh"
#include "common.cuh"

namespace up2_tile {

constexpr int PY = 8, PX = 16;                   // the patch of input positions
constexpr int kChannels = 16;                    // output channels per block
constexpr int OY = 2 * PY - 4, OX = 2 * PX - 4;  // output tile
constexpr int TY = 2 * PY, TX = 2 * PX;          // T rows and cols kept
// T's channel stride: 8 mod 32 keeps the scatters' stores (lanes 2 px + 16 tig apart) at 2-way bank conflicts.
constexpr int kPlaneT = TY * TX + 8;
constexpr int kQuadsX = OX / 4, kRowsY = OY / 2;
constexpr int kBlurItems = kChannels * 2 * kQuadsX;  // threads that take part in blur_epilogue
static_assert(OX % 4 == 0 && OY % 2 == 0, "blur items of 6 rows x 4 columns");

// Blurs the complete part of T (channel c at T + c * kPlaneT, rows 1..15 and cols 1..31) into the 12 x 28 output
// tile at (oy0, ox0) of output channels o0.., then the epilogue, in modconv_up2_3x3's order of blur taps and
// epilogue steps. Thread `item` (< kBlurItems; others return) takes 6 rows x 4 columns of one channel's tile: it
// blurs its 9 T rows horizontally once, reading each row's 8 aligned values with two 128-bit loads, then
// vertically. The channel's demodulation coefficient and bias are loaded once.
__device__ __forceinline__ void blur_epilogue(const ModconvParams& p, const float* T, int item, int b, int o0,
                                              int oy0, int ox0) {
  const int oh = 2 * p.height, ow = 2 * p.width;
  const int q = item % kQuadsX, row_half = item / kQuadsX % 2, c = item / (2 * kQuadsX);
  const int o = o0 + c, x0 = ox0 + 4 * q, y0 = oy0 + kRowsY * row_half;
  if (item >= kBlurItems || o >= p.out_channels || x0 >= ow || y0 >= oh) return;
  const float dcoef = p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f;
  const float bias = p.bias ? p.bias[o] : 0.0f;
  const float* const noise = p.noise ? p.noise + (long long)b * p.noise_sample_stride : nullptr;
  // A row's 4 outputs go out in one store, their noise comes in one load, where rows are a multiple of 4 values
  // (x0 is) and the quad is inside the image: consecutive threads then write consecutive 8 or 16 bytes, where
  // single-value stores spread each warp's store over 2-4 times the sectors.
  const unsigned long long addresses = reinterpret_cast<unsigned long long>(p.y) |
                                      reinterpret_cast<unsigned long long>(noise);
  const bool quads = ow % 4 == 0 && x0 + 4 <= ow && (addresses & 15) == 0;
  // The noise of all the rows, loaded before the blur: used as each row is finished, its loads stalled the warp
  // for about a quarter of the 1024 px layer's time.
  float nz[kRowsY][4] = {};
  if (noise) {
#pragma unroll
    for (int i = 0; i < kRowsY; ++i) {
      const int y = y0 + i;
      if (y >= oh) break;
      if (quads) {
        const float4 n4 = *reinterpret_cast<const float4*>(noise + y * ow + x0);
        nz[i][0] = n4.x, nz[i][1] = n4.y, nz[i][2] = n4.z, nz[i][3] = n4.w;
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (x0 + k < ow) nz[i][k] = noise[y * ow + x0 + k];
      }
    }
  }
  // hr[i][k]: T row kRowsY half + 1 + i blurred horizontally at output column 4 q + k (T columns 4 q + k + 1 ..).
  float hr[kRowsY + 3][4];
  const float* const tq = T + c * kPlaneT + (kRowsY * row_half + 1) * TX + 4 * q;
#pragma unroll
  for (int i = 0; i < kRowsY + 3; ++i) {
    const float4 lo = *reinterpret_cast<const float4*>(tq + i * TX);
    const float4 hi = *reinterpret_cast<const float4*>(tq + i * TX + 4);
    const float t[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float h = 0.0f;
#pragma unroll
      for (int bx = 0; bx < 4; ++bx) h += up2_blur_tap(bx) * t[k + 1 + bx];
      hr[i][k] = h;
    }
  }
  const long long yc = ((long long)b * p.out_channels + o) * oh * ow;
  with_output_type(p.y_dtype, [&](auto store) {
#pragma unroll
    for (int i = 0; i < kRowsY; ++i) {
      const int y = y0 + i;
      if (y >= oh) break;
      float v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        v[k] = 0.0f;
#pragma unroll
        for (int a = 0; a < 4; ++a) v[k] += up2_blur_tap(a) * hr[i + a][k];
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = modconv_finish(p, v[k], dcoef, nz[i][k], bias);
      if (quads) {
        store.quad(p.y, yc + y * ow + x0, v);
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (x0 + k >= ow) break;
          store(p.y, yc + y * ow + x0 + k, v[k]);
        }
      }
    }
  });
}

}  // namespace up2_tile
