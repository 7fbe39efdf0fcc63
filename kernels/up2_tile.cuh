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
constexpr int kQuadsX = OX / 4, kRowsY = OY / 2;
constexpr int kBlurItems = kChannels * 2 * kQuadsX;  // threads that take part in blur_epilogue
static_assert(OX % 4 == 0 && OY % 2 == 0, "blur items of 6 rows x 4 columns");
// T's row and channel strides, in floats. With blur_epilogue's order of items (row half, then quad, then
// channel), rows 40 apart and channels 12 mod 32 apart put the 8 threads of every quarter warp on 8 different
// 16-byte bank groups, so its 128-bit loads are free of bank conflicts (with 32 and 8 they were 2-way). The
// mma.sync scatter's stores stay 2-way: their lanes, 2 columns apart, only reach the even banks.
constexpr int kRowT = TX + 8;
constexpr int kPlaneT = TY * kRowT + 12;
static_assert(kRowT % 4 == 0 && kPlaneT % 4 == 0, "T's rows start 16-byte aligned");

// A lane's part of the scatter into T at dst: tap (ky, 2)'s value v0 alone, or (`pair`) the values v0 and v1 of taps
// (ky, 0) and (ky, 1), which land on adjacent columns, as one 64-bit access (half the instructions, and a
// half warp's 16 lanes then cover all 32 banks once). The first phase stores, the later ones add.
__device__ __forceinline__ void scatter_taps(float* dst, bool pair, float v0, float v1, bool first) {
  if (pair) {
    float2* const d = reinterpret_cast<float2*>(dst);
    if (first) {
      *d = make_float2(v0, v1);
    } else {
      const float2 o = *d;
      *d = make_float2(o.x + v0, o.y + v1);
    }
  } else {
    *dst = first ? v0 : *dst + v0;
  }
}

// The blur along one axis, times 4 (blur_epilogue scales by 1/16 at the end).
__device__ __forceinline__ float blur4(float t0, float t1, float t2, float t3) {
  return (t0 + t3) + 3.0f * (t1 + t2);
}

// Blurs the complete part of T (channel c at T + c * kPlaneT, rows 1..15 and cols 1..31, row r at r * kRowT)
// into the 12 x 28 output tile at (oy0, ox0) of output channels o0.., then the epilogue in modconv_up2_3x3's order
// of steps (its blur sums the taps in another order: blur4). Thread `item` (< kBlurItems; others return) takes 6
// rows x 4 columns of one channel's tile: it blurs its 9 T rows horizontally once, reading each row's 8 aligned
// values with two 128-bit loads, then vertically. The channel's demodulation coefficient and bias are loaded once.
__device__ __forceinline__ void blur_epilogue(const ModconvParams& p, const float* T, int item, int b, int o0,
                                              int oy0, int ox0) {
  const int oh = 2 * p.height, ow = 2 * p.width;
  const int row_half = item % 2, q = item / 2 % kQuadsX, c = item / (2 * kQuadsX);
  const int o = o0 + c, x0 = ox0 + 4 * q, y0 = oy0 + kRowsY * row_half;
  if (item >= kBlurItems || o >= p.out_channels || x0 >= ow || y0 >= oh) return;
  // The blur's taps are [1, 3, 3, 1] / 4 along each axis (up2_blur_tap; gain 4 over both). Summed as (t0 + t3) +
  // 3 (t1 + t2), they take 3 instructions per value and axis where 4 multiply-adds did; the two factors of 1/4 go
  // into the demodulation coefficient, exactly (a power of two).
  const float dcoef = (p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f) * 0.0625f;
  const float bias = p.bias ? p.bias[o] : 0.0f;
  const float* const noise = p.noise ? p.noise + (long long)b * p.noise_sample_stride : nullptr;
  // A row's 4 outputs go out in one store, their noise comes in one load, where rows are a multiple of 4 values
  // (x0 is) and the quad is inside the image: consecutive threads then write consecutive 8 or 16 bytes, where
  // single-value stores spread each warp's store over 2-4 times the sectors.
  const unsigned long long addresses = reinterpret_cast<unsigned long long>(p.y) |
                                      reinterpret_cast<unsigned long long>(noise);
  const bool quads = ow % 4 == 0 && x0 + 4 <= ow && (addresses & 15) == 0;
  const float* const tq = T + c * kPlaneT + (kRowsY * row_half + 1) * kRowT + 4 * q;
  const int first = y0 * ow + x0;  // the item's first value in a plane (32-bit: a plane is below 2^31 values)
  // Rows of Full items (quads, all their rows in the image: every item but those of the image's last tile row and
  // column) need no tests. Noise and output rows are 32-bit offsets from the item's first value (opaque_pointer),
  // where 64-bit indices cost about four instructions a row more.
  auto rows = [&](auto full_tag) {
    constexpr bool Full = decltype(full_tag)::value;
    // The noise of all the rows, loaded before the blur: used as each row is finished, its loads stalled the warp
    // for about a quarter of the 1024 px layer's time.
    float nz[kRowsY][4] = {};
    if (noise) {
      const float* const nq = opaque_pointer(noise + first);
#pragma unroll
      for (int i = 0; i < kRowsY; ++i) {
        if (!Full && y0 + i >= oh) break;
        if (Full || quads) {
          const float4 n4 = __ldg(reinterpret_cast<const float4*>(nq + i * ow));
          nz[i][0] = n4.x, nz[i][1] = n4.y, nz[i][2] = n4.z, nz[i][3] = n4.w;
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (x0 + k < ow) nz[i][k] = __ldg(nq + i * ow + k);
        }
      }
    }
    // hr[i][k]: T row kRowsY half + 1 + i blurred horizontally (times 4) at output column 4 q + k (T columns
    // 4 q + k + 1 ..).
    float hr[kRowsY + 3][4];
#pragma unroll
    for (int i = 0; i < kRowsY + 3; ++i) {
      const float4 lo = *reinterpret_cast<const float4*>(tq + i * kRowT);
      const float4 hi = *reinterpret_cast<const float4*>(tq + i * kRowT + 4);
      const float t[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) hr[i][k] = blur4(t[k + 1], t[k + 2], t[k + 3], t[k + 4]);
    }
    const long long yc = ((long long)b * p.out_channels + o) * oh * ow;
    with_output_type(p.y_dtype, [&](auto store) {
      void* const yq = opaque_pointer(store.at(p.y, yc + first));
#pragma unroll
      for (int i = 0; i < kRowsY; ++i) {
        if (!Full && y0 + i >= oh) break;
        float v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = blur4(hr[i][k], hr[i + 1][k], hr[i + 2][k], hr[i + 3][k]);
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = modconv_finish_fused(p, v[k], dcoef, nz[i][k], bias);
        if (Full || quads) {
          store.quad(yq, i * ow, v);
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (x0 + k >= ow) break;
            store(yq, i * ow + k, v[k]);
          }
        }
      }
    });
  };
  if (quads && y0 + kRowsY <= oh)
    rows(Constant<true>{});
  else
    rows(Constant<false>{});
}

}  // namespace up2_tile
