// Pieces every kernel file shares. Each kernel file includes this first.
//
// Kernel ABI: every kernel takes one parameter struct by value (params.h, mirrored by src/cuda/params.rs). Under
// nvcc `KERNEL` declares an `extern "C" __global__` function; in the host emulation it declares the body plus an
// `extern "C"` entry point `mmengine_emu_<name>(const void* params)` that the emulated launch calls on every
// thread. `KERNEL_BOUNDED(name, Params, max_threads[, min_blocks])` adds __launch_bounds__. build.rs finds kernels
// by scanning for `KERNEL(` and `KERNEL_BOUNDED(` at the start of a line, so keep those spellings.
#pragma once

#include "params.h"

#ifdef MMENGINE_EMU
#define KERNEL(name, Params)                                                                     \
  static void name##_body(const Params& p);                                                      \
  extern "C" void mmengine_emu_##name(const void* params) {                                      \
    name##_body(*static_cast<const Params*>(params));                                            \
  }                                                                                              \
  static void name##_body(const Params& p)
#define KERNEL_BOUNDED(name, Params, ...) KERNEL(name, Params)
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::current().dynamic_shared)
#else
#define KERNEL(name, Params) extern "C" __global__ void name(const Params p)
#define KERNEL_BOUNDED(name, Params, ...) \
  extern "C" __global__ void __launch_bounds__(__VA_ARGS__) name(const Params p)
#define DYNAMIC_SHARED(T, name)                                          \
  extern __shared__ __align__(16) unsigned char mmengine_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(mmengine_dynamic_smem)
#endif

// Grid-stride loop over [0, n): correct for any grid size, so launch sizes are a tuning choice only.
#define GRID_STRIDE_LOOP(i, n)                                                                  \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n);     \
       i += (long long)blockDim.x * gridDim.x)

// x clamped to [-c, c], a NaN kept (as the CPU reference's f32::clamp keeps it): c = +inf is no clamp, so the
// epilogues clamp every value without a test.
__device__ __forceinline__ float clamp_keep_nan(float x, float c) {
#ifdef MMENGINE_EMU
  return x != x ? x : fminf(fmaxf(x, -c), c);
#else
  float r;
  asm("max.NaN.f32 %0, %1, %2;\n\tmin.NaN.f32 %0, %0, %3;" : "=f"(r) : "f"(x), "f"(-c), "f"(c));
  return r;
#endif
}

// The activation, gain and clamp in the reference order (golden ops README): x below zero times `slope` (leaky
// ReLU's alpha; 1 is linear, exactly), then the gain, then the clamp to [-clamp, clamp] (+inf: none). With no
// test of the activation's kind or the clamp's presence, each value costs 5 instructions.
__device__ __forceinline__ float activate(float x, float slope, float gain, float clamp) {
  if (x < 0.0f) x *= slope;
  x *= gain;
  return clamp_keep_nan(x, clamp);
}

// activate's slope and clamp from the params of the kernels outside the modulated convs (an Activation and
// alpha; a clamp below 0 for none).
__device__ __forceinline__ float activation_slope(int act, float alpha) { return act == ACT_LRELU ? alpha : 1.0f; }
__device__ __forceinline__ float clamp_bound(float clamp) {
  return clamp >= 0.0f ? clamp : __int_as_float(0x7f800000);
}

// The modulated convolutions' fused epilogue (modconv.cu, modconv_tc.cu) on one conv result `v`, given its output
// channel's demodulation coefficient (1 where the layer has none: v * 1 is v exactly, so no test per value) and
// bias and its pixel's noise value (already times the layer's strength), the last two used only where the layer has
// them: demodulation, noise, bias, then activate's slope, gain and clamp. Kernels that keep a channel's values in
// registers across many outputs call this; the others modconv_epilogue.
__device__ __forceinline__ float modconv_finish(const ModconvParams& p, float v, float dcoef, float noise, float bias) {
  v *= dcoef;
  if (p.noise) v += noise;
  if (p.bias) v += bias;
  return activate(v, p.slope, p.gain, p.clamp);
}

// modconv_finish for the kernels that always have a demodulation coefficient, noise value and bias at hand (1, 0
// and 0 where the layer has none): the demodulation and the noise as one fused multiply-add, with no test of the
// layer's buffers. One rounding and one instruction fewer per value than modconv_finish, which the tensor-core
// modes' tolerances leave room for. The wgmma same-resolution epilogue and the up-sampling kernels' blur epilogue
// use it; the f32 kernels and modconv_tc.cu's same-resolution epilogue keep modconv_finish's order.
__device__ __forceinline__ float modconv_finish_fused(const ModconvParams& p, float v, float dcoef, float noise,
                                                      float bias) {
  return activate(fmaf(v, dcoef, noise) + bias, p.slope, p.gain, p.clamp);
}

// The fused ToRGB's cap on its output channels (conv.rs rejects more): its partial sums live in registers.
constexpr int kMaxFusedRgb = 4;

// What the tensor-core convs' epilogues load once per output channel o of sample b and keep in registers over
// their pixels: its demodulation coefficient and bias, and with RGB (a fused ToRGB) its ToRGB style and weights.
template <bool RGB>
struct ChannelValues {
  float dcoef, bias, rgb_style = 0.0f, rgb_weight[kMaxFusedRgb] = {};

  __device__ ChannelValues(const ModconvParams& p, int b, int o)
      : dcoef(p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f), bias(p.bias ? p.bias[o] : 0.0f) {
    if constexpr (RGB) {
      rgb_style = p.rgb_styles[b * p.out_channels + o];
#pragma unroll
      for (int c = 0; c < kMaxFusedRgb; ++c)
        if (c < p.rgb_channels) rgb_weight[c] = p.rgb_weight[c * p.out_channels + o];
    }
  }
  // Adds this channel's output at a pixel, as stored, to the pixel's ToRGB partial sums. Sums past rgb_channels
  // (zero weights) are never read, so they take no select per value.
  __device__ void add_rgb(float stored, float (&rgb)[kMaxFusedRgb]) const {
    const float a = stored * rgb_style;
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c) rgb[c] += a * rgb_weight[c];
  }
};

// The fused ToRGB's row sums: the 4 lanes of a quad (one groupID, tig 0..3) hold partial sums of the same Rows
// rows (2 or 4) over different channels. Sums them over the quad, leaving lane tig the sums of row tig % Rows:
// a butterfly that halves the rows each lane carries at each step, so fewer shuffles and live values than summing
// every row in every lane. Each sum comes out as the xor reduction's (own + lane ^ 1's) + (lane ^ 2's pair), bit
// for bit.
template <int Rows>
__device__ __forceinline__ void quad_row_sums(const float (&rows)[Rows][kMaxFusedRgb], int tig,
                                              float (&sum)[kMaxFusedRgb]) {
  static_assert(Rows == 2 || Rows == 4, "one or two butterfly steps over rows");
  const bool odd = tig & 1, upper = tig & 2;
  float pair[Rows / 2][kMaxFusedRgb];  // rows 2 r + (tig & 1), summed over lanes tig and tig ^ 1
#pragma unroll
  for (int r = 0; r < Rows / 2; ++r)
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c) {
      const float keep = odd ? rows[2 * r + 1][c] : rows[2 * r][c], give = odd ? rows[2 * r][c] : rows[2 * r + 1][c];
      pair[r][c] = keep + __shfl_xor_sync(0xffffffffu, give, 1);
    }
#pragma unroll
  for (int c = 0; c < kMaxFusedRgb; ++c) {
    if constexpr (Rows == 4) {
      const float keep = upper ? pair[1][c] : pair[0][c], give = upper ? pair[0][c] : pair[1][c];
      sum[c] = keep + __shfl_xor_sync(0xffffffffu, give, 2);
    } else {
      sum[c] = pair[0][c] + __shfl_xor_sync(0xffffffffu, pair[0][c], 2);
    }
  }
}

// modconv_finish for sample b, output channel o, flat output pixel `pix`, loading each value it needs.
__device__ __forceinline__ float modconv_epilogue(const ModconvParams& p, float v, int b, int o, int pix) {
  return modconv_finish(p, v, p.dcoefs ? p.dcoefs[b * p.out_channels + o] : 1.0f,
                        p.noise ? p.noise[(long long)b * p.noise_sample_stride + pix] : 0.0f,
                        p.bias ? p.bias[o] : 0.0f);
}

// A value as a type, for lambdas that take it as a compile-time constant (value), or converted as a run-time one.
template <auto V>
struct Constant {
  static constexpr auto value = V;
  __device__ constexpr operator decltype(V)() const { return V; }
};

// The global-memory pointer p, as a value the compiler cannot see into: offsets added to it then stay 32-bit adds
// from one 64-bit base (one address instruction an access), where the compiler otherwise folds them into a 64-bit
// index (four). The assumption keeps the accesses global ones (LDG, STG) rather than generic.
template <class P>
__device__ __forceinline__ P* opaque_pointer(P* p) {
#ifndef MMENGINE_EMU
  asm("" : "+l"(p));
  __builtin_assume(__isGlobal(p));
#endif
  return p;
}

// The skip image's up-sampling, upfirdn2d(up=2, [1,3,3,1], pad [2,1,2,1], gain 4), has four non-zero taps per
// axis: output Y even: 0.25 x[Y/2 - 1] + 0.75 x[Y/2]; Y odd: 0.75 x[(Y-1)/2] + 0.25 x[(Y+1)/2] (zero outside).
__device__ __forceinline__ void skip_taps(int out, int n, int (&idx)[2], float (&w)[2]) {
  const int base = out / 2;
  if (out % 2 == 0) {
    idx[0] = base - 1, w[0] = 0.25f, idx[1] = base, w[1] = 0.75f;
  } else {
    idx[0] = base, w[0] = 0.75f, idx[1] = base + 1, w[1] = 0.25f;
  }
  for (int t = 0; t < 2; ++t) {
    if (idx[t] < 0 || idx[t] >= n) idx[t] = 0, w[t] = 0.0f;
  }
}

// The up-sampled skip image's taps at output pixel (y, x), for a plane [h, w]: found once per pixel and applied
// to each channel's plane, where a kernel writes several channels of a pixel. The taps are 32-bit offsets within a
// plane, so a load costs one address instruction from the plane's pointer.
struct SkipTaps {
  int at[2][2];  // plane offset of tap (row a, column c)
  float wy[2], wx[2];

  __device__ SkipTaps(int h, int w, int y, int x) {
    int iy[2], ix[2];
    skip_taps(y, h, iy, wy);
    skip_taps(x, w, ix, wx);
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int c = 0; c < 2; ++c) at[a][c] = iy[a] * w + ix[c];
  }
  // The up-sampled value of `plane` at the pixel. A tap outside the image is skipped, not multiplied by 0 (an inf
  // stays local); its offset is 0, so all four loads are made unconditionally and issue together.
  __device__ float operator()(const float* plane) const {
    float s[2][2];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int c = 0; c < 2; ++c) s[a][c] = plane[at[a][c]];
    return sum(s);
  }
  // The taps' values s summed with their weights.
  __device__ float sum(const float (&s)[2][2]) const {
    float v = 0.0f;
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      float row = 0.0f;
#pragma unroll
      for (int c = 0; c < 2; ++c)
        if (wx[c] != 0.0f) row += wx[c] * s[a][c];
      if (wy[a] != 0.0f) v += wy[a] * row;
    }
    return v;
  }
};

// Output pixel (y, x) of the up-sampled `plane` [h, w].
__device__ __forceinline__ float skip_upsampled(const float* plane, int h, int w, int y, int x) {
  return SkipTaps(h, w, y, x)(plane);
}

// Channel c of sample b in ModconvParams::skip, an image of `channels` channels at half the output's size.
__device__ __forceinline__ const float* skip_plane(const ModconvParams& p, int b, int channels, int c) {
  return p.skip + ((long long)b * channels + c) * (p.height / 2) * (p.width / 2);
}

// ModconvParams::skip added to the value v a kernel writes at (sample b, channel c of `channels`) of the height x
// width output, at the pixel of `taps` (skip_taps_at); the sum in skip_upsample's order, so both give the same bits.
__device__ __forceinline__ float add_skip(const ModconvParams& p, const SkipTaps& taps, float v, int b, int channels,
                                          int c) {
  if (!p.skip) return v;
  return taps(skip_plane(p, b, channels, c)) + v;
}

// The skip image's taps at output pixel (y, x) of ModconvParams' height x width output.
__device__ __forceinline__ SkipTaps skip_taps_at(const ModconvParams& p, int y, int x) {
  return SkipTaps(p.height / 2, p.width / 2, y, x);
}

// The skip image at one pixel in every channel, for the kernels that finish all of a pixel's RGB channels (the
// fused ToRGBs): loaded together, well before add() needs them, where a load just before each use stalled the
// warp. Threads that finish no pixel pass `needed` false and load nothing. The planes are addressed from the
// sample's first one with 32-bit offsets (64-bit plane addresses cost four instructions a load), and the loads of a
// channel past `channels` are skipped with one uniform test.
struct SkipPixel {
  float v[kMaxFusedRgb];

  __device__ SkipPixel(const ModconvParams& p, const SkipTaps& taps, int b, int channels, bool needed) {
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c) v[c] = 0.0f;
    // One test around all the loads: a test per channel made each channel's loads wait for the previous ones.
    if (!p.skip || !needed) return;
    // __ldg: the skip image (the previous block's) is read-only here.
    const float* const first = opaque_pointer(skip_plane(p, b, channels, 0));
    const unsigned plane = (p.height / 2) * (p.width / 2);
    float s[kMaxFusedRgb][2][2];
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c)
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int e = 0; e < 2; ++e) s[c][a][e] = c < channels ? __ldg(first + (c * plane + taps.at[a][e])) : 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxFusedRgb; ++c) v[c] = taps.sum(s[c]);
  }
  // add_skip's sum for channel c.
  __device__ float add(const ModconvParams& p, float x, int c) const { return p.skip ? v[c] + x : x; }
};

// add_skip at flat output pixel pix, for a single channel.
__device__ __forceinline__ float add_skip(const ModconvParams& p, float v, int b, int channels, int c, int pix) {
  if (!p.skip) return v;
  return add_skip(p, skip_taps_at(p, pix / p.width, pix % p.width), v, b, channels, c);
}

// Tap t (0..3) of the up-sampling convs' blur: [1,3,3,1]/8 per axis with gain 2 per axis (gain 4 overall).
__device__ __forceinline__ float up2_blur_tap(int t) { return (t == 0 || t == 3) ? 0.25f : 0.75f; }

// blockIdx.x, blockIdx.z and threadIdx.x read afresh (volatile reads the compiler cannot merge with earlier ones):
// for values an epilogue or a later chunk's gather derives from them, which would otherwise hold registers across a
// main loop that needs them all.
#ifdef MMENGINE_EMU
#define READ_AGAIN(name, value, reg) \
  __device__ __forceinline__ int name() { return value; }
#else
#define READ_AGAIN(name, value, reg)                    \
  __device__ __forceinline__ int name() {               \
    unsigned v;                                         \
    asm volatile("mov.u32 %0, %%" reg ";" : "=r"(v)); \
    return v;                                           \
  }
#endif
READ_AGAIN(block_x_again, blockIdx.x, "ctaid.x")
READ_AGAIN(block_z_again, blockIdx.z, "ctaid.z")
READ_AGAIN(thread_x_again, threadIdx.x, "tid.x")
#undef READ_AGAIN

// 16-byte copy global -> shared that bypasses the registers (cp.async, sm_80+): weight tiles need no prologue, so
// they stream in while the block computes. Both addresses 16-byte aligned. The emulation lands the data only at
// copy_async_wait, with NaN in the destination until then.
__device__ __forceinline__ void copy16_async(void* smem_dst, const void* gmem_src) {
#ifdef MMENGINE_EMU
  emu::async_copy16_issue(smem_dst, gmem_src);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
#endif
}

// Waits for this thread's copies; a __syncthreads after it publishes them to the block.
__device__ __forceinline__ void copy_async_wait() {
#ifdef MMENGINE_EMU
  emu::async_copy_wait();
#else
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::);
#endif
}

// For copies kept in flight across a wait: closes the group of this thread's copies issued since the last commit
// (an empty group where none were).
__device__ __forceinline__ void copy_async_commit() {
#ifdef MMENGINE_EMU
  emu::async_copy_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most Pending of this thread's committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void copy_async_wait_groups() {
#ifdef MMENGINE_EMU
  emu::async_copy_wait_groups(Pending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// The K loop of the double-buffered GEMM kernels (modconv.cu): while stage s is multiplied out of
// buffer s & 1, stage s + 1's B tile streams into the other buffer (cp.async) and its A values wait in registers,
// stored once the multiply is done; one barrier per stage. copy_b(stage, buffer), load_a(stage),
// store_a(buffer), multiply(buffer); stages >= 1.
template <class CopyB, class LoadA, class StoreA, class Multiply>
__device__ __forceinline__ void double_buffered_k_loop(int stages, CopyB copy_b, LoadA load_a, StoreA store_a,
                                                       Multiply multiply) {
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
    multiply(cur);
    if (more) store_a(cur ^ 1);
    copy_async_wait();
    __syncthreads();
  }
}
