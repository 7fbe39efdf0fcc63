// upfirdn2d: up-sample by zero insertion, pad (or crop), FIR filter, down-sample, per plane. Twin:
// cpu::ops::upfirdn2d (NVlabs torch_utils/ops/upfirdn2d).
//
// Polyphase: the zero-inserted image is never formed. An output pixel (oy, ox) reads the up-sampled position
// u = o * down - pad0 + k for filter tap k, which holds an input pixel only when u is a multiple of up, so each
// output visits just the taps of its phase (every up-th, starting at (-u0) mod up) and reads input (u0 + k) / up.
// A block stages its input tile plus halo (zero outside the image, so the tap loops need no bounds checks) and
// the scaled, flipped taps in shared memory, then computes its output tile; blockIdx.z strides over the planes.
// A separable (1-D) filter runs along x into a shared row buffer, then along y: the reference's order of passes.
#include "common.cuh"

// Floor of a / b for b > 0 and any sign of a (C++ division truncates toward zero).
__device__ __forceinline__ int floor_div(int a, int b) { return (a >= 0 ? a : a - b + 1) / b; }

// The first tap whose up-sampled position u0 + k is a multiple of up: (-u0) mod up, in [0, up).
__device__ __forceinline__ int first_phase_tap(int u0, int up) { return ((-u0) % up + up) % up; }

template <bool SEPARABLE>
__device__ void upfirdn2d_impl(const UpfirdnParams& p) {
  DYNAMIC_SHARED(float, smem);
  const int tap_count = SEPARABLE ? p.filter_w : p.filter_h * p.filter_w;
  float* taps = smem;
  float* tile = taps + tap_count;                      // [tile_in_h, tile_in_w]
  float* rows = tile + p.tile_in_h * p.tile_in_w;      // separable only: [tile_in_h, tile_out_w]
  const int tid = threadIdx.x, threads = blockDim.x;

  // Scale first, then flip unless flip_filter (a true convolution), as the reference does. Reversing the flat
  // [fh, fw] taps flips both axes.
  for (int i = tid; i < tap_count; i += threads) {
    taps[i] = p.f[p.flip_filter ? i : tap_count - 1 - i] * p.filter_gain;
  }

  const int oy0 = blockIdx.y * p.tile_out_h, ox0 = blockIdx.x * p.tile_out_w;
  const int iy0 = floor_div(oy0 * p.down - p.pad_y0, p.up);
  const int ix0 = floor_div(ox0 * p.down - p.pad_x0, p.up);
  const int tile_in = p.tile_in_h * p.tile_in_w, tile_out = p.tile_out_h * p.tile_out_w;

  for (long long plane = blockIdx.z; plane < p.planes; plane += gridDim.z) {
    const float* x = p.x + plane * p.in_h * p.in_w;
    __syncthreads();  // the previous plane's tile and rows are consumed
    for (int i = tid; i < tile_in; i += threads) {
      const int iy = iy0 + i / p.tile_in_w, ix = ix0 + i % p.tile_in_w;
      const bool inside = iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w;
      tile[i] = inside ? x[(long long)iy * p.in_w + ix] : 0.0f;
    }
    __syncthreads();

    if (SEPARABLE) {
      // Along x, for every staged row and every output column of the tile.
      for (int i = tid; i < p.tile_in_h * p.tile_out_w; i += threads) {
        const int r = i / p.tile_out_w, c = i % p.tile_out_w;
        const int ux = (ox0 + c) * p.down - p.pad_x0;
        const int k0 = first_phase_tap(ux, p.up);
        const float* src = tile + r * p.tile_in_w + ((ux + k0) / p.up - ix0);
        float acc = 0.0f;
        for (int k = k0; k < p.filter_w; k += p.up) acc = fmaf(*src++, taps[k], acc);
        rows[i] = acc;
      }
      __syncthreads();
    }

    for (int i = tid; i < tile_out; i += threads) {
      const int r = i / p.tile_out_w, c = i % p.tile_out_w;
      const int oy = oy0 + r, ox = ox0 + c;
      if (oy >= p.out_h || ox >= p.out_w) continue;
      const int uy = oy * p.down - p.pad_y0;
      const int ky0 = first_phase_tap(uy, p.up);
      const int row0 = (uy + ky0) / p.up - iy0;
      float acc = 0.0f;
      if (SEPARABLE) {
        const float* src = rows + row0 * p.tile_out_w + c;
        for (int ky = ky0; ky < p.filter_h; ky += p.up, src += p.tile_out_w) acc = fmaf(*src, taps[ky], acc);
      } else {
        const int ux = ox * p.down - p.pad_x0;
        const int kx0 = first_phase_tap(ux, p.up);
        const int col0 = (ux + kx0) / p.up - ix0;
        for (int ky = ky0, ry = row0; ky < p.filter_h; ky += p.up, ++ry) {
          const float* src = tile + ry * p.tile_in_w + col0;
          const float* tap_row = taps + ky * p.filter_w;
          for (int kx = kx0; kx < p.filter_w; kx += p.up) acc = fmaf(*src++, tap_row[kx], acc);
        }
      }
      p.y[(plane * p.out_h + oy) * p.out_w + ox] = acc;
    }
  }
}

KERNEL_BOUNDED(upfirdn2d, UpfirdnParams, 256) { upfirdn2d_impl<false>(p); }
KERNEL_BOUNDED(upfirdn2d_separable, UpfirdnParams, 256) { upfirdn2d_impl<true>(p); }
